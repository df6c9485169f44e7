"""Accuracy machinery: the cross-validated head, multi-layer features, LP-FT's guarantee, the
input size for small images (#16). Accuracy itself is measured by bench/accuracy.py."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import transferkit
from transferkit.console import Console
from helpers import make_dataset


def _blobs(seed: int, classes: int, per_class: int, dim: int = 64, spread: float = 2.5):
    """Gaussian classes in `dim` dimensions, with a few dominant noise directions: a weak penalty
    and raw geometry pay here, as on many-class data."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (classes, dim))
    y = np.repeat(np.arange(classes), per_class)
    x = centers[y] + spread * rng.normal(0, 1, (len(y), dim)) * rng.uniform(0.2, 1.5, dim)
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)


@pytest.mark.parametrize("seed,classes,per_class", [(0, 20, 12), (1, 4, 40), (2, 30, 8)])
def test_cross_validated_head_is_not_worse_than_scikit_learns_default(seed, classes, per_class):
    """The head's regularization comes from the data: on held-out images it is at least as
    accurate as a plain LogisticRegression() on the same features (within one image)."""
    from sklearn.linear_model import LogisticRegression

    from transferkit.config import TrainConfig

    from transferkit.training.options import resolve
    from transferkit.training.heads import fit_logistic, select_head

    x, y = _blobs(seed, classes, per_class * 2)
    train = (torch.arange(len(y)) % 2) == 0
    choice = select_head(x[train], y[train], classes, {"last": x.shape[1]}, seed=0)
    assert choice.cv_accuracy is not None and choice.folds >= 2 and choice.table
    assert {r["scaling"] for r in choice.table} == {"feature", "global"}
    cfg = resolve(TrainConfig.from_mapping({"data": "unused", "weight_decay": choice.weight_decay}))
    _, head = fit_logistic(cfg, classes, x[train], y[train], x[~train], y[~train], scaling=choice.scaling)
    with torch.no_grad():
        ours = float((head(x[~train]).argmax(1) == y[~train]).float().mean())
    plain = LogisticRegression(max_iter=2000).fit(x[train].numpy(), y[train].numpy()).score(
        x[~train].numpy(), y[~train].numpy())
    assert ours >= plain - 1 / int((~train).sum()) - 1e-9, (ours, plain, choice.to_dict())


def test_the_head_is_chosen_by_log_loss_over_repeated_folds_on_small_sets():
    """Few images: the folds are drawn CV_REPEATS times for the candidates the first draw leaves
    in contention, and among the rows every draw measured the lowest mean log loss wins (not the
    most accurate one: their accuracies tie or differ by an image)."""
    from transferkit.training import heads

    x, y = _blobs(5, 3, 30)
    choice = heads.select_head(x, y, 3, {"last": 16, "multi": x.shape[1]}, seed=0)
    assert choice.repeats == heads.CV_REPEATS and choice.to_dict()["cv_repeats"] == heads.CV_REPEATS
    widest = max(r["cv_splits"] for r in choice.table)
    assert widest == heads.CV_REPEATS * choice.folds
    assert {r["cv_splits"] for r in choice.table} <= {choice.folds, widest}
    best = min((r for r in choice.table if r["cv_splits"] == widest),
               key=lambda r: (r["cv_log_loss"], -r["cv_accuracy"]))
    assert (choice.features, choice.scaling, choice.weight_decay) == (best["features"], best["scaling"],
                                                                      best["weight_decay"])
    assert choice.cv_accuracy == best["cv_accuracy"]
    big_x, big_y = _blobs(5, 3, heads.CV_FEWER_FOLDS_FROM // 3 + 1, dim=8)
    assert heads.select_head(big_x, big_y, 3, {"last": 8}, seed=0).repeats == 1  # enough images: one draw


def test_only_candidates_the_first_draw_leaves_in_contention_get_more_draws():
    """A candidate whose log loss is worse on every fold of the first draw (paired, beyond
    CLEARLY_WORSE standard errors) is not drawn again; one within the folds' noise is."""
    from transferkit.training.heads.select import _contenders

    good = np.array([[0.30, 0.9], [0.35, 0.9], [0.28, 0.9], [0.33, 0.9], [0.31, 0.9]])
    found = {("last", "feature"): {0.1: good},
             ("last", "global"): {0.1: good + [[0.2, 0]] + np.array([[0.01], [-0.01], [0.0], [0.02], [-0.02]])},
             ("multi", "feature"): {0.1: good + np.array([[0.02, 0], [-0.03, 0], [0.01, 0], [-0.01, 0], [0.02, 0]])}}
    assert _contenders(found) == [("last", "feature"), ("multi", "feature")]


def test_the_folds_problem_is_each_folds_own_problem_summed():
    """`logistic.Folds`: every fold's loss and gradient, in one product, are its own problem's,
    multinomial, two-class and multi-label alike."""
    from transferkit.logistic import Folds, Logistic, MultiLogistic

    rng = np.random.default_rng(0)
    z = rng.normal(size=(40, 6)).astype(np.float64)
    masks = [np.arange(40) % 4 != f for f in range(4)]
    for y, k, kind in ((rng.integers(0, 3, 40), 3, Logistic), (rng.integers(0, 2, 40), 2, Logistic),
                       ((rng.random((40, 3)) > 0.5).astype(np.float64), 3, MultiLogistic)):
        folds = Folds(z, y, k, 0.3, True, masks)
        theta = rng.normal(size=folds.start().shape)
        loss, grad = folds.objective(theta)
        own = [kind(z[m], y[m], k, 0.3, True) for m in masks]
        parts = [p.objective(folds.fold_theta(theta, s)) for s, p in enumerate(own)]
        assert loss == pytest.approx(sum(p[0] for p in parts), rel=1e-10)
        for s, p in enumerate(parts):
            np.testing.assert_allclose(folds.fold_theta(grad, s), p[1], rtol=1e-9, atol=1e-12)


def test_cross_validation_in_the_span_of_the_training_rows_is_exact():
    """Fewer rows than features: the fit in the training rows' span predicts exactly as the full one."""
    from transferkit.logistic import Logistic
    from transferkit.training.heads.select import _in_span

    x, y = _blobs(3, 3, 6, dim=40)
    z, ze = x[:12].double().numpy(), x[12:].double().numpy()
    full, small = Logistic(z, y[:12].numpy(), 3, 0.05), None
    zs, zes = _in_span(z, ze)
    assert zs.shape == (12, 12)
    small = Logistic(zs, y[:12].numpy(), 3, 0.05)
    a, _ = full.fit(full.start(), 500, 1e-9)
    b, _ = small.fit(small.start(), 500, 1e-9)
    np.testing.assert_allclose(np.exp(full.log_probs(ze, a)), np.exp(small.log_probs(zes, b)), atol=1e-5)


def test_a_class_with_one_image_falls_back_to_the_default_head():
    from transferkit.training.heads import DEFAULT_WEIGHT_DECAY, select_head

    x, y = _blobs(0, 3, 4)
    y[1:4] = 2  # class 0 keeps a single image
    choice = select_head(x, y, 3, {"last": x.shape[1]}, seed=0)
    assert choice.cv_accuracy is None and choice.weight_decay == DEFAULT_WEIGHT_DECAY and choice.features == "last"


def test_multi_layer_backbone_keeps_the_last_layer_and_the_parameter_names():
    from transferkit.models import backbones

    spec = backbones.get("efficientnet_lite0")
    torch.manual_seed(0)
    plain = spec.build().eval()
    multi = spec.build(features="multi")
    multi.load_state_dict(plain.state_dict())  # the same names: bundles and caches carry over
    multi.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = multi(x)
        assert out.shape == (2, multi.num_features) and multi.num_features > plain.num_features
        torch.testing.assert_close(out[:, :plain.num_features], plain(x))
        traced = torch.jit.trace(copy.deepcopy(multi), x)  # export and the fast extractor trace it
        torch.testing.assert_close(traced(x), out)
    assert len(spec.stages(multi)) == len(spec.stages(plain))  # partial / per-stage LRs see the same stages


def test_multi_layer_features_end_to_end(tmp_path):
    """--features multi: the bundle says so, loads as trained (eval = the run's val accuracy),
    exports to ONNX with the same predictions, and a later run reuses every cached feature."""
    data = make_dataset(tmp_path / "d", n_train=5, n_val=3)
    options = dict(weights="none", image_size=64, features="multi", quiet=True)
    run = transferkit.train(data, out=str(tmp_path / "r"), **options)
    meta = json.loads((run.path / "model.json").read_text())
    assert meta["features"] == "multi" and run.results["features"] == "multi"
    assert transferkit.evaluate(run.path)["accuracy"] == pytest.approx(run.val_acc)
    transferkit.export(run.path, "onnx", runs=2, console=Console(True))
    from transferkit.prediction.onnx_predictor import OnnxPredictor

    image = next((data / "val" / "red").iterdir())
    torch_probs = transferkit.load(run.path).predict([image])[0]
    with OnnxPredictor(run.path / "export" / "model.onnx") as onnx:
        onnx_probs = onnx.predict([image])[0]
    assert torch_probs.label == onnx_probs.label and torch_probs.probability == pytest.approx(onnx_probs.probability,
                                                                                               abs=1e-4)
    # test-time augmentation: the log of the mean probability of the view and its mirror image
    for make in (lambda tta: transferkit.load(run.path, tta=tta),
                 lambda tta: OnnxPredictor(run.path / "export" / "model.onnx", tta=tta)):
        with make("none") as plain, make("flip") as flip:
            view = plain.prepare(str(image))
            mirrored = np.flip(view, 1 if plain.channels_last else 2)
            both = plain.run(np.ascontiguousarray(np.stack([view, mirrored]))).astype(np.float64)
            probs = np.exp(both - both.max(1, keepdims=True))
            expected = np.log((probs / probs.sum(1, keepdims=True)).mean(0))
            np.testing.assert_allclose(flip.logits([image])[0][0], expected, atol=1e-4)
            assert not np.allclose(both[0], both[1])  # the mirror image is another input
    assert transferkit.evaluate(run.path, tta="flip-crops")["num_images"] == 6
    again = transferkit.train(data, out=str(tmp_path / "r2"), **{**options, "features": "auto"})
    info = again.results["strategy_info"]
    assert info["features_computed"] == 0 and info["features_cached"] == 16
    assert again.results["head"]["candidates"]  # auto cross-validated last against multi
    assert not again.results["head"]["cached"]
    # a warm run on the same features reads the cross-validation's result instead of redoing it
    warm = transferkit.train(data, out=str(tmp_path / "r3"), **{**options, "features": "auto"})
    assert warm.results["head"]["cached"] and warm.results["head"]["candidates"] == again.results["head"]["candidates"]
    assert warm.val_acc == again.val_acc
    other_seed = transferkit.train(data, out=str(tmp_path / "r4"), **{**options, "features": "auto", "seed": 1})
    assert not other_seed.results["head"]["cached"]


def test_features_multi_is_refused_for_a_torchvision_backbone(tmp_path):
    data = make_dataset(tmp_path / "d", n_train=2, n_val=1)
    with pytest.raises(transferkit.UserError, match="--features multi needs a timm backbone"):
        transferkit.train(data, model="squeezenet1_1", weights="none", features="multi", out=str(tmp_path / "r"))
    with pytest.raises(transferkit.UserError, match="--features applies only to --strategy"):
        transferkit.train(data, strategy="finetune", features="multi", out=str(tmp_path / "r"))


def test_lp_ft_starts_at_the_probe_and_keeps_it_when_fine_tuning_does_not_beat_it(tmp_path):
    """BatchNorm statistics kept and a learning rate too small to move anything: the fine-tuned
    epoch measures exactly the probe's accuracy, so the probe is kept, and eval reproduces it."""
    data = make_dataset(tmp_path / "d", classes=("blue", "red", "green"), n_train=4, n_val=3)
    run = transferkit.train(data, strategy="lp-ft", weights="none", image_size=64, epochs=1, lr=1e-12,
                            batch_size=4, out=str(tmp_path / "r"), quiet=True)
    info = run.results["strategy_info"]
    assert info["fine_tuned_val_acc"] == pytest.approx(info["probe_val_acc"])
    assert info["kept"] == "probe" and run.results["best_epoch"] == 0
    assert run.val_acc == pytest.approx(info["probe_val_acc"])
    assert transferkit.evaluate(run.path)["accuracy"] == pytest.approx(run.val_acc)


def test_pretrained_networks_train_small_images_upscaled_not_at_full_size(tmp_path):
    from transferkit.data.discover import discover
    from transferkit.training.setup import network_input_size

    small = discover(make_dataset(tmp_path / "s", n_train=2, n_val=1))  # 64 x 48 images
    assert network_input_size(small, 224) == 192
    from helpers import make_image

    for i in range(2):
        for c in ("a", "b"):
            make_image(tmp_path / "big" / "train" / c / f"{i}.png", (90, 90, 90), size=(300, 200), seed=i)
    assert network_input_size(discover(tmp_path / "big"), 224) is None


def test_auto_tries_lp_ft_when_the_head_leaves_room_and_keeps_the_better(tmp_path):
    """Two classes of noise, 30 images each: the head cross-validates near chance, so auto also
    runs LP-FT and keeps whichever is more accurate on the same val images, saying so with numbers."""
    from helpers import make_image

    for c in ("a", "b"):
        for i in range(30):
            make_image(tmp_path / "d" / "train" / c / f"{i}.png", (128, 128, 128), size=(32, 32), seed=ord(c) * 100 + i)
        for i in range(5):
            make_image(tmp_path / "d" / "val" / c / f"{i}.png", (128, 128, 128), size=(32, 32), seed=1000 + i + (c == "b"))
    run = transferkit.train(tmp_path / "d", strategy="auto", model="squeezenet1_1", weights="none", image_size=32,
                            out=str(tmp_path / "r"), quiet=True)
    info, reason = run.results["strategy_info"], run.results["strategy_reason"]
    assert info["head_cv_accuracy"] < 0.97 and "cross-validates at" in reason and "kept " in reason
    assert run.val_acc == pytest.approx(max(info["head_val_acc"], info["lp_ft_val_acc"]))
    assert run.results["strategy"] == ("lp-ft" if info["lp_ft_val_acc"] > info["head_val_acc"] else "linear")
    # evaluated on the path that measured it: a network LP-FT trained runs on PyTorch in the precision it
    # trained in (bf16 where the CPU has it), the head on the engine's features; on noise near chance,
    # ONNX Runtime's fp32 would flip an image or two of these 10 on a bf16 CPU
    kept_network = run.results["strategy"] == "lp-ft"
    same_path = {"engine": "torch", "precision": run.results["precision"]} if kept_network else {}
    assert transferkit.evaluate(run.path, **same_path)["accuracy"] == pytest.approx(run.val_acc)


def test_small_images_upsampled_are_augmented_by_shifts_not_by_zooming():
    """A 32 px image seen at 128 px: the training view is the whole image shifted by at most 1/8
    and maybe mirrored (CIFAR's recipe), never a zoomed-in crop of a part of it."""
    from PIL import Image

    from transferkit.data.views import train_view, view_rng
    from transferkit.models import backbones

    pre = backbones.get("efficientnet_lite0").with_input_size(128)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))
    ref = np.asarray(img)
    for v in range(6):
        out = np.asarray(train_view(img, pre, view_rng(0, "k", v), small=True))
        assert out.shape == (128, 128, 3)
        inner = [out[16:112, 16:112], np.flip(out, 1)[16:112, 16:112]]
        shifts = [(dy, dx) for dy in range(-16, 17) for dx in range(-16, 17)]
        assert any(np.array_equal(x, ref[16 + dy:112 + dy, 16 + dx:112 + dx]) for x in inner for dy, dx in shifts)
