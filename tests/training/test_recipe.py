"""The fine-tuning recipe's options: --augment policies, MixUp/CutMix with soft targets, the
EMA of the weights, layer-wise LR decay and stochastic depth: what each does, that views stay
seeded, that the averaged weights are the kept ones, and that they are validated and recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import transferkit
from helpers import make_dataset, make_image
from transferkit.cache import ArrayCache
from transferkit.config import TrainConfig
from transferkit.training.options import resolve
from transferkit.data.augment import AUGMENTS
from transferkit.data.datasets import DecodedImages
from transferkit.errors import UserError
from transferkit.models import backbones
from transferkit.models.classifier import Classifier
from transferkit.runtime import Runtime
from transferkit.training import loop, recipe, subscribers
from transferkit.training.network import param_groups


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("aug")
    paths = [str(make_image(root / f"{i}.png", (40 * i, 90, 200 - 30 * i), size=(80, 64), seed=i)) for i in range(3)]
    return paths, ArrayCache(root / "cache")


def _dataset(images, augment, train=True):
    paths, cache = images
    pre = backbones.get("efficientnet_lite0").with_input_size(48)
    return DecodedImages(paths, [0, 1, 0], pre, cache, train, seed=5, augment=augment)


@pytest.mark.parametrize("augment", ["none", "basic", "randaugment", "trivial"])
def test_augment_views_are_uint8_seeded_per_image_and_epoch(images, augment):
    a, b = _dataset(images, augment), _dataset(images, augment)
    state = torch.get_rng_state()
    view = a.view(0, 1)
    assert view.dtype == torch.uint8 and view.shape == (3, 48, 48)
    assert torch.equal(view, b.view(0, 1))  # the same (seed, image, epoch): the same view
    assert torch.equal(torch.get_rng_state(), state)  # the process's random state is left alone
    others = [a.view(0, e) for e in range(2, 7)]
    if augment == "none":  # the evaluation view, every epoch
        evaluation = _dataset(images, augment, train=False).view(0, 1)
        assert all(torch.equal(v, evaluation) for v in [view, *others])
    else:
        assert not all(torch.equal(v, view) for v in others)


def test_augment_ops_change_the_basic_view_and_run_in_loader_workers(images):
    basic, trivial = _dataset(images, "basic"), _dataset(images, "trivial")
    changed = sum(not torch.equal(basic.view(i, e), trivial.view(i, e)) for i in range(3) for e in range(1, 5))
    assert changed >= 6  # TrivialAugment picks the identity op now and then, not most of the time
    in_workers = [x for x, _ in DataLoader(trivial, batch_size=3, num_workers=1)]
    assert torch.equal(in_workers[0], torch.stack([trivial.view(i, 0) for i in range(3)]))


def test_the_last_epochs_are_calm_no_ops_and_no_mixing(images):
    assert [recipe.strong_epochs(e) for e in (1, 2, 4, 8, 30)] == [1, 1, 3, 6, 22]
    paths, cache = images
    pre = backbones.get("efficientnet_lite0").with_input_size(48)
    calm = DecodedImages(paths, [0, 1, 0], pre, cache, True, seed=5, augment="trivial", ops_until=2)
    basic, trivial = _dataset(images, "basic"), _dataset(images, "trivial")
    assert all(torch.equal(calm.view(i, e), trivial.view(i, e)) for i in range(3) for e in (1, 2))
    assert all(torch.equal(calm.view(i, e), basic.view(i, e)) for i in range(3) for e in (3, 4))  # crop + flip only

    mixed_in = []

    def mixer(x, y):
        mixed_in.append(x.shape[0])
        return x, nn.functional.one_hot(y, 2).float()

    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    net = nn.Linear(4, 2)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    step = loop.Step(net, optimizer, loop.make_scheduler("constant", optimizer, 8), nn.CrossEntropyLoss(),
                     Runtime(torch.device("cpu"), torch.float32), mixer=mixer, mix_epochs=2)
    loop.fit(step, loader, loader, 3)
    assert mixed_in == [4, 4, 4, 4]  # two batches in each of the first two epochs, none in the third


def test_mixup_and_cutmix_give_soft_targets_the_loss_and_accuracy_use():
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    assert recipe.batch_mixer(0.0, 0.0, 3) is None
    for mixup, cutmix in ((0.4, 0.0), (0.0, 1.0), (0.2, 1.0)):
        mixed, soft = recipe.batch_mixer(mixup, cutmix, 3)(x.clone(), y)
        assert mixed.shape == x.shape and soft.shape == (8, 3)
        assert torch.allclose(soft.sum(1), torch.ones(8))
        assert set(recipe.hard_labels(soft).tolist()) <= {0, 1, 2}
    mixed, soft = recipe.batch_mixer(0.4, 0.0, 3)(x.clone(), y)
    lam = soft[0, 0].item()  # image 0 (class 0) mixed with image 7 (class 1, rolled by one)
    assert torch.allclose(mixed[0], lam * x[0] + (1 - lam) * x[7], atol=1e-5)
    loss = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 1.0]), label_smoothing=0.1)
    assert torch.isfinite(loss(torch.randn(8, 3), soft))


def test_weight_average_follows_timm_warmup_and_is_what_fit_keeps():
    model = nn.Linear(2, 2)
    average = recipe.WeightAverage(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    average.update(model, step=1)  # the first step copies
    assert torch.allclose(average.module.weight, torch.ones(2, 2))
    with torch.no_grad():
        model.weight.fill_(3.0)
    average.update(model, step=3)  # decay 1 - (1 + 2)^(-2/3), below 0.999: warming up
    decay = 1 - 3 ** (-2 / 3)
    assert torch.allclose(average.module.weight, torch.full((2, 2), decay * 1 + (1 - decay) * 3))
    assert not average.module.weight.requires_grad
    assert recipe.WeightAverage(model, 0.999, steps=56).decay == pytest.approx(1 - 1 / 5.6)  # a short run
    assert recipe.WeightAverage(model, 0.999, steps=100_000).decay == 0.999

    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    net = nn.Linear(4, 2)
    average = recipe.WeightAverage(net, decay=0.9)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    scheduler = loop.make_scheduler("constant", optimizer, 8)
    step = loop.Step(net, optimizer, scheduler, nn.CrossEntropyLoss(), Runtime(torch.device("cpu"), torch.float32))
    _, best = loop.fit(step, loader, loader, 2, [subscribers.Averaging(average)])
    assert torch.equal(best["weight"], average.module.weight)  # the averaged weights are kept ...
    assert not torch.equal(best["weight"], net.weight)  # ... not the last step's


def test_layer_decay_groups_follow_timm_convention():
    spec = backbones.get("efficientnet_lite0")
    backbone = spec.build()
    model = Classifier(backbone, backbone.num_features, 3)
    layers = spec.stages(backbone, fine=True)
    assert len(layers) > len(spec.stages(backbone))  # finer than the stages: stem, blocks, head conv
    groups = param_groups(model, spec.stages(backbone), "finetune", 1e-3, 0.5, layer_decay=0.8, layers=layers)
    n = len(layers)
    assert [g["name"] for g in groups] == [f"layer{i}" for i in range(n)] + ["head"]
    assert [g["lr"] for g in groups] == pytest.approx([5e-4 * 0.8 ** (n - i) for i in range(n)] + [1e-3])
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    # partial: only the trainable stages' layers get groups
    groups = param_groups(model, spec.stages(backbone), "partial", 1e-3, 1.0, unfreeze=1, layer_decay=0.8,
                          layers=layers)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g["params"]} == trainable and len(groups) < n


def test_drop_path_builds_timm_stochastic_depth():
    from timm.layers import DropPath

    rates = [m.drop_prob for m in backbones.get("efficientnet_lite0").build(drop_path=0.2).modules()
             if isinstance(m, DropPath)]
    assert rates and max(rates) == pytest.approx(0.2, abs=0.02) and min(rates) < max(rates)  # deeper drops more


def test_recipe_options_are_validated_per_strategy():
    cfg = resolve(TrainConfig(data="d", strategy="finetune"))
    assert (cfg.augment, cfg.mixup, cfg.cutmix, cfg.ema, cfg.layer_decay, cfg.drop_path) == ("basic", 0, 0, 0, 1, 0)
    assert resolve(TrainConfig(data="d", strategy="linear")).augment is None
    with pytest.raises(UserError, match="--mixup applies only to --strategy"):
        resolve(TrainConfig(data="d", strategy="linear", mixup=0.2))
    with pytest.raises(UserError, match="--layer-decay applies only"):
        resolve(TrainConfig(data="d", strategy="gradual", layer_decay=0.7))
    with pytest.raises(UserError, match="--cutmix applies only"):
        resolve(TrainConfig(data="d", strategy="distill", teacher="t", cutmix=1.0))
    with pytest.raises(UserError, match="--augment must be one of none, basic, randaugment, trivial"):
        resolve(TrainConfig(data="d", strategy="finetune", augment="auto"))
    for bad in ({"ema": 1.0}, {"layer_decay": 0.0}, {"mixup": -1.0}, {"drop_path": 1.0}):
        with pytest.raises(UserError, match="must be"):
            resolve(TrainConfig(data="d", strategy="finetune", **bad))
    assert set(AUGMENTS.names()) == {"none", "basic", "randaugment", "trivial"}


def test_drop_path_on_a_torchvision_backbone_is_one_line(tmp_path, capsys):
    from transferkit.cli import main

    data = make_dataset(tmp_path / "d", n_train=3, n_val=2)
    code = main(["train", str(data), "--model", "squeezenet1_1", "--weights", "none", "--strategy", "finetune",
                 "--drop-path", "0.1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "--drop-path needs a timm backbone" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_a_run_with_every_recipe_option_records_them(tmp_path):
    data = make_dataset(tmp_path / "d", n_train=4, n_val=2)
    options = dict(augment="trivial", mixup=0.2, cutmix=1.0, ema=0.99, layer_decay=0.75, drop_path=0.1)
    run = transferkit.train(data, model="efficientnet_lite0", weights="none", strategy="finetune", epochs=2,
                            batch_size=4, image_size=32, out=str(tmp_path / "r"), quiet=True, **options)
    assert run.results["recipe"] == options
    assert json.loads((run.path / "results.json").read_text())["recipe"] == options
    names = [g["name"] for g in run.results["strategy_info"]["param_groups"]]
    assert names[0] == "layer0" and names[-1] == "head"
    report = (run.path / "report.html").read_text()
    assert "trivial" in report and "layer_decay" in report
    metrics = transferkit.evaluate(run.path)  # the saved (averaged) weights score what training measured
    assert metrics["accuracy"] == pytest.approx(run.val_acc)
    np.testing.assert_equal(np.isfinite([h["train_loss"] for h in _history(run.path)]), True)


def _history(run_dir):
    import csv

    with open(run_dir / "metrics.csv") as fh:
        return [{k: float(v) for k, v in row.items() if k == "train_loss"} for row in csv.DictReader(fh)]
