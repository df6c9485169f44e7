"""Partial, gradual and LP-FT: which parameters train, with which learning rates; imbalance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import transferkit
from helpers import make_dataset, make_image
from transferkit.models import backbones
from transferkit.models.classifier import Classifier
from transferkit.training.network import gradual_schedule, param_groups, unfreeze_top


def _model(name="resnet18"):
    spec = backbones.get(name)
    backbone = spec.build()
    return Classifier(backbone, backbone.num_features, 3), spec.stages(backbone)


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_partial_trains_last_k_stages_and_freezes_the_rest_with_bn_in_eval():
    model, stages = _model()
    groups = param_groups(model, stages, "partial", 1e-3, 0.1, unfreeze=2)
    expected = {f"backbone.{n}" for st in stages[-2:] for n in st} | {"head.weight", "head.bias"}
    assert _trainable(model) == expected
    assert [(g["name"], g["lr"]) for g in groups] == [("backbone", pytest.approx(1e-4)), ("head", 1e-3)]
    optimizer_params = {id(p) for g in groups for p in g["params"]}
    assert optimizer_params == {id(p) for p in model.parameters() if p.requires_grad}
    model.train()
    assert model.backbone.bn1.training is False and model.backbone.layer1[0].bn1.training is False
    assert model.backbone.layer4[0].bn1.training is True
    # Frozen BatchNorm statistics do not drift during a training step.
    before = model.backbone.bn1.running_mean.clone()
    model(torch.rand(2, 3, 64, 64)).sum().backward()
    assert torch.equal(model.backbone.bn1.running_mean, before)


def test_strategies_differ_in_what_trains():
    sets = {}
    for strategy in ("linear", "finetune", "partial", "gradual", "lp-ft"):
        model, stages = _model()
        param_groups(model, stages, strategy, 1e-3, 0.1, unfreeze=1)
        sets[strategy] = frozenset(_trainable(model))
    assert sets["linear"] == {"head.weight", "head.bias"}
    assert sets["gradual"] == sets["linear"]  # at first; stages unfreeze epoch by epoch
    assert sets["finetune"] == sets["lp-ft"] and len(sets["finetune"]) == len(list(_model()[0].parameters()))
    assert sets["linear"] < sets["partial"] < sets["finetune"]


def test_gradual_groups_have_discriminative_lrs_and_unfreeze_from_the_top():
    model, stages = _model()
    groups = param_groups(model, stages, "gradual", 1e-3, 0.1, lr_decay=0.5)
    assert [g["name"] for g in groups] == [f"stage{i}" for i in range(len(stages))] + ["head"]
    lrs = [g["lr"] for g in groups[:-1]]
    assert lrs[-1] == pytest.approx(1e-4) and lrs[-2] == pytest.approx(5e-5) and lrs[0] < lrs[1]
    unfreeze_top(model, stages, 1)
    assert _trainable(model) == {f"backbone.{n}" for n in stages[-1]} | {"head.weight", "head.bias"}
    assert [gradual_schedule(e, 5, len(stages)) for e in range(1, 6)] == [0, 2, 3, 4, 5]


def test_partial_gradual_lpft_run_end_to_end(tmp_path):
    data = make_dataset(tmp_path / "d", n_train=3, n_val=2)
    for strategy in ("partial", "gradual", "lp-ft"):
        run = transferkit.train(data, model="squeezenet1_1", weights="none", strategy=strategy, epochs=2,
                                batch_size=3, out=str(tmp_path / strategy), quiet=True)
        assert run.results["strategy"] == strategy and run.results["epochs_run"] == 2
        info = run.results["strategy_info"]
        if strategy == "gradual":
            assert info["trainable_stages_at_end"] == info["stages"]
        if strategy == "partial":
            assert info["trainable_stages_at_end"] == 2
        if strategy == "lp-ft":
            assert "probe_val_acc" in info


def test_class_weights_and_balanced_sampler(tmp_path):
    root = tmp_path / "d"
    for i in range(8):
        make_image(root / "train" / "blue" / f"b{i}.png", (30, 60, 200), seed=i)
    for i in range(2):
        make_image(root / "train" / "red" / f"r{i}.png", (200, 40, 30), seed=50 + i)
    for c, col in (("blue", (30, 60, 200)), ("red", (200, 40, 30))):
        make_image(root / "val" / c / "v.png", col, seed=99)
    from transferkit.config import TrainConfig
    from transferkit.training.options import resolve
    from transferkit.data.datasets import train_loader
    from transferkit.training.losses import classification_loss

    cfg = resolve(TrainConfig(data=str(root), class_weights="auto", balanced_sampler=True, strategy="finetune"))
    labels = torch.tensor([0] * 8 + [1] * 2)
    loss = classification_loss(cfg, labels, 2)
    assert torch.allclose(loss.weight, torch.tensor([10 / 16, 10 / 4]))
    dataset = torch.utils.data.TensorDataset(torch.zeros(10, 1), labels)
    draws = torch.cat([y for _, y in train_loader(dataset, labels, 1000, seed=0, balanced=True)])
    assert len(draws) == 10 and 2 <= int(draws.sum()) <= 8  # not the 1-in-5 of the data
    many = torch.cat([torch.cat([y for _, y in train_loader(dataset, labels, 1000, seed=s, balanced=True)])
                      for s in range(40)])
    assert abs(many.float().mean().item() - 0.5) < 0.08
    run = transferkit.train(root, class_weights="auto", balanced_sampler=True, out=str(tmp_path / "r"), quiet=True)
    assert "balanced_accuracy" in run.results


@pytest.mark.parametrize("bad, message", [({"unfreeze": 0, "strategy": "partial"}, "--unfreeze must be > 0"),
                                          ({"lr_decay": 1.5, "strategy": "gradual"}, "--lr-decay must be in"),
                                          ({"class_weights": "yes"}, "--class-weights must be one of"),
                                          ({"strategy": "finetune", "optimizer": "lbfgs"}, "lbfgs fits only the linear")])
def test_option_errors(tmp_path, bad, message):
    data = make_dataset(tmp_path / "d", n_train=2, n_val=1)
    with pytest.raises(transferkit.UserError, match=message):
        transferkit.train(data, **bad)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_logistic_head_folds_into_one_linear_layer(num_classes):
    """The L-BFGS head (standardized features) becomes one linear layer (a NumPy `LinearHead`) on
    raw features whose softmax equals scikit-learn's probabilities, binary case included; it
    converges and records losses."""
    from sklearn.linear_model import LogisticRegression

    from transferkit.config import TrainConfig

    from transferkit.training.options import resolve
    from transferkit.training.heads import fit_logistic

    gen = torch.Generator().manual_seed(0)
    y = torch.arange(60) % num_classes
    x = torch.randn(60, 16, generator=gen) * 3 + 5 + y[:, None] * torch.linspace(0, 2, 16)
    cfg = resolve(TrainConfig.from_mapping({"data": "unused", "weight_decay": 0.1}))
    result, linear = fit_logistic(cfg, num_classes, x[:40].numpy(), y[:40].numpy(), x[40:].numpy(), y[40:].numpy())
    assert result.unit == "iteration" and result.history and result.best_epoch == result.history[-1].epoch
    assert result.history[-1].train_acc > 0.8 and result.best_epoch < 1000  # converged, learned
    z = x[:40].double()
    std = z.std(0, unbiased=False)
    mean, std = z.mean(0), torch.maximum(std, torch.quantile(std, 0.1)) + 1e-6
    ref = LogisticRegression(C=1 / (cfg.weight_decay * 40), tol=1e-6, max_iter=1000).fit(
        ((z - mean) / std).numpy(), y[:40].numpy())
    expected = torch.from_numpy(ref.predict_proba(((x[40:].double() - mean) / std).numpy()))
    got = torch.softmax(torch.from_numpy(linear(x[40:].numpy())).double(), 1)
    assert torch.allclose(got, expected, atol=2e-3)


def test_logistic_head_does_not_lean_on_near_constant_features():
    """A feature that barely varies (std 1e-3) must not get a huge raw weight: standardization
    floors each feature's scale at the 10th percentile of all scales."""
    from transferkit.config import TrainConfig
    from transferkit.training.options import resolve
    from transferkit.training.heads import fit_logistic

    gen = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 2
    x = torch.randn(60, 32, generator=gen) + y[:, None] * 0.8
    x[:, 0] = 1e-3 * (y * 2 - 1) + 1e-3 * torch.randn(60, generator=gen)  # tiny, label-correlated
    cfg = resolve(TrainConfig.from_mapping({"data": "unused", "weight_decay": 0.1}))
    _, linear = fit_logistic(cfg, 2, x[:40].numpy(), y[:40].numpy(), x[40:].numpy(), y[40:].numpy())
    assert abs(linear.weight).max() < 5  # without the floor: the weight on feature 0 is in the hundreds
    noisy = x[40:] + 0.01 * torch.randn(20, 32, generator=gen)  # an input change far below the features' spread
    assert (linear(noisy.numpy()).argmax(1) == linear(x[40:].numpy()).argmax(1)).all()


def test_distill_loss_is_hinton_kd_plus_label_ce():
    from transferkit.training.losses import DistillLoss

    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    ce = nn.CrossEntropyLoss()
    loss = DistillLoss(ce, temperature=3.0, alpha=0.7)
    p_t = torch.softmax(teacher / 3, 1)
    kd = (p_t * (torch.log(p_t) - torch.log_softmax(student / 3, 1))).sum(1).mean()
    assert torch.allclose(loss(student, labels, teacher), 0.7 * 9 * kd + 0.3 * ce(student, labels))
    assert torch.allclose(loss(student, labels), ce(student, labels))  # validation: labels only
    assert torch.allclose(DistillLoss(ce, 3.0, 1.0)(teacher, labels, teacher), torch.tensor(0.0), atol=1e-6)


def test_distill_learns_from_a_teacher_run_whose_logits_are_cached(tmp_path):
    data = make_dataset(tmp_path / "d", n_train=4, n_val=2)
    teacher = transferkit.train(data, out=str(tmp_path / "t"), quiet=True)
    kw = dict(strategy="distill", teacher=str(teacher.path), batch_size=4, quiet=True)
    first = transferkit.train(data, out=str(tmp_path / "s1"), epochs=1, **kw)
    info = first.results["strategy_info"]
    assert info["teacher"] == str(teacher.path) and info["teacher_views_computed"] == 8  # 8 images x 1 epoch
    assert (info["temperature"], info["alpha"]) == (1.0, 0.5)
    second = transferkit.train(data, out=str(tmp_path / "s2"), epochs=2, **kw)
    info = second.results["strategy_info"]  # epoch 0's views are cached, epoch 1's are new
    assert (info["teacher_views_cached"], info["teacher_views_computed"]) == (8, 8)
    other = make_dataset(tmp_path / "o", classes=("blue", "green"), n_train=2, n_val=1)
    with pytest.raises(transferkit.UserError, match="teacher .* was trained on classes blue, red"):
        transferkit.train(other, out=str(tmp_path / "s3"), **kw)
    assert not (tmp_path / "s3").exists()  # refused before any output
    with pytest.raises(transferkit.UserError, match="needs --teacher"):
        transferkit.train(data, strategy="distill")


def test_distill_teacher_sees_the_students_view_of_each_epoch(tmp_path):
    """Consistent teaching: the soft target for image i in epoch e is the teacher's output on the
    very crop the student gets in that epoch (resized to the teacher's input size)."""
    from transferkit.models import bundle
    from transferkit.console import Console
    from transferkit.training.setup import make_context
    from transferkit.config import TrainConfig
    from transferkit.training.options import resolve
    from transferkit.cache import Cache
    from transferkit.training.network import network_setup
    from transferkit.training.teacher import teacher_logits

    data = make_dataset(tmp_path / "d", n_train=3, n_val=1)
    teacher = transferkit.train(data, out=str(tmp_path / "t"), image_size=64, precision="fp32", quiet=True)
    cfg = resolve(TrainConfig.from_mapping(dict(data=str(data), out=str(tmp_path / "s"), strategy="distill", epochs=2,
                                        teacher=str(teacher.path), image_size=48, precision="fp32",
                                        cache_dir=str(tmp_path / "cache"), quiet=True)))
    ctx = make_context(cfg, Console(True), Cache(cfg.cache_dir))
    views = network_setup(ctx).loader.dataset
    logits, facts = teacher_logits(ctx, views)
    assert logits.shape == (2, 6, 2) and facts["teacher_views_computed"] == 12
    assert not torch.allclose(logits[0], logits[1])  # a different view each epoch
    model, meta, _ = bundle.load(str(teacher.path))
    model.eval()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (meta.preprocess.mean, meta.preprocess.std))
    for e in range(2):
        u8 = torch.stack([views.view(i, e + 1) for i in range(len(views))]).float()  # epochs count from 1
        u8 = nn.functional.interpolate(u8, size=(64, 64), mode="bilinear", antialias=True).round().clamp(0, 255)
        with torch.no_grad():
            expected = model((u8 / 255 - mean) / std)
        torch.testing.assert_close(logits[e], expected, atol=1e-3, rtol=1e-3)
    again, facts = teacher_logits(ctx, views)  # cached: nothing recomputed, same logits
    assert facts["teacher_views_cached"] == 12 and torch.equal(again, logits)



def test_auto_rules_and_reasons():
    from transferkit.training.strategies.auto import MIN_EPOCHS, choose_strategy

    chosen, reason, _ = choose_strategy(500, 0.98, None)
    assert chosen == "linear" and "cross-validates at 98.0%" in reason  # the head leaves little to win
    chosen, reason, _ = choose_strategy(20, 0.7, None)
    assert chosen == "linear" and "20 training images per class" in reason and "70.0%" in reason
    assert choose_strategy(500, None, None)[0] == "linear"  # nothing to cross-validate
    calls = []

    def within(epochs):
        def measure():
            calls.append(1)
            return epochs, 900.0
        return measure

    chosen, reason, epochs = choose_strategy(500, 0.7, within(MIN_EPOCHS - 1))
    assert chosen == "linear" and "900 s for 2 epochs, more than is left of the budget" in reason and calls == [1]
    chosen, reason, epochs = choose_strategy(500, 0.7, within(4))
    assert (chosen, epochs) == ("lp-ft", 4) and "4 epochs fit in the budget" in reason
    assert choose_strategy(500, 0.7, None)[::2] == ("lp-ft", None)  # no budget: its default epochs
    assert "budget was spent" in choose_strategy(500, 0.7, lambda: (0, 0.0))[1]  # nothing left to time
    assert choose_strategy(500, 0.98, within(4))[0] == "linear" and len(calls) == 2  # measured only when needed


def test_fit_starts_no_epoch_that_would_end_past_the_deadline():
    import time

    from torch.utils.data import DataLoader, Dataset

    from transferkit.runtime import Runtime
    from transferkit.training import loop, subscribers

    class Slow(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            time.sleep(0.05)
            return torch.randn(3), i % 2

    net = nn.Linear(3, 2)
    loader = DataLoader(Slow(), batch_size=2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    start = time.perf_counter()
    deadline = start + 1.0  # an epoch (train + validate) takes about 0.4 s
    step = loop.Step(net, optimizer, loop.make_scheduler("constant", optimizer, 40), nn.CrossEntropyLoss(),
                     Runtime(torch.device("cpu"), torch.float32))
    result, _ = loop.fit(step, loader, loader, 10, [subscribers.Budget(deadline)])
    assert result.stopped_by == "budget" and result.stopped_early and 1 <= len(result.history) < 10
    assert time.perf_counter() <= deadline + 0.15


def test_auto_writes_its_choice_and_reason(tmp_path, capsys):
    data = make_dataset(tmp_path / "d", n_train=6, n_val=2)
    run = transferkit.train(data, strategy="auto", out=str(tmp_path / "r"))
    assert run.results["strategy"] == "linear" and run.results["strategy_reason"]
    assert run.results["strategy_info"]["head_cv_accuracy"] is not None
    assert f"auto: linear, because {run.results['strategy_reason']}" in capsys.readouterr().out
    assert transferkit.evaluate(run.path)["accuracy"] == pytest.approx(run.val_acc)
    # --optimizer lbfgs (linear's head) is accepted with auto, whatever it would cost to fine-tune
    lbfgs = transferkit.train(data, strategy="auto", optimizer="lbfgs", out=str(tmp_path / "r2"), quiet=True)
    assert lbfgs.results["strategy"] == "linear"


def test_auto_estimates_finetune_time_by_measuring_steps(tmp_path):
    from transferkit.console import Console
    from transferkit.training.setup import make_context
    from transferkit.config import TrainConfig
    from transferkit.training.options import resolve
    from transferkit.cache import Cache
    from transferkit.training.network import estimate_finetune_cost

    data = make_dataset(tmp_path / "d", n_train=3, n_val=1)
    cfg = resolve(TrainConfig.from_mapping({"data": str(data), "model": "squeezenet1_1", "weights": "none",
                                            "image_size": 64, "strategy": "finetune", "out": str(tmp_path / "r")}))
    ctx = make_context(cfg, Console(True), Cache())
    cost = estimate_finetune_cost(ctx)
    assert 0 < cost.per_epoch < 30 and 0 < cost.decode
    assert cost.seconds(3) == pytest.approx(3 * cost.per_epoch + cost.decode)
    assert not any(p.grad is not None for p in ctx.models.get().parameters())  # left clean


def test_auto_reports_every_candidate_with_its_cost_and_keeps_to_its_budget(tmp_path, monkeypatch):
    from transferkit.training.strategies import auto

    monkeypatch.setattr(auto, "AUTO_HEAD_GOOD", 1.01)  # tiny data: let it fine-tune
    monkeypatch.setattr(auto, "AUTO_MIN_PER_CLASS", 1)
    data = make_dataset(tmp_path / "d", n_train=6, n_val=2)
    run = transferkit.train(data, strategy="auto", image_size=64, out=str(tmp_path / "r"), quiet=True)
    candidates = run.results["strategy_info"]["candidates"]
    assert [c["candidate"] for c in candidates] == ["features", "linear", "lp-ft"]
    assert all(c["seconds"] >= 0 for c in candidates) and candidates[2]["val_acc"] is not None
    assert sum(bool(c.get("kept")) for c in candidates) == 1
    assert candidates[2]["what"].startswith("6 of 6 epochs at") and candidates[2]["estimated_seconds"] is None
    assert "Candidates (auto)" in (run.path / "report.html").read_text()
    # a budget spent before fine-tuning could start: the head, and why
    tight = transferkit.train(data, strategy="auto", image_size=64, budget=0.5, out=str(tmp_path / "t"), quiet=True)
    assert tight.results["strategy"] == "linear"
    assert "the budget was spent before fine-tuning could start" in tight.results["strategy_reason"]
    assert tight.results["strategy_info"]["candidates"][2]["what"].startswith("not run:")
