"""The model: real ImageNet weights mapped correctly, weights files checked, bundle round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import shared_dataset
from transferkit.models import backbones, bundle
from transferkit.data.discover import list_files
from transferkit.errors import UserError
from transferkit.data.decode import load_rgb
from transferkit.models.classifier import build_classifier
from transferkit.data.datasets import to_tensor
from transferkit.data.decode import eval_view

BEE, ANT = 309, 310


def test_lite0_imagenet_weights_recognise_ants_and_bees():
    """With the original 1000-class head, hymenoptera photos are mostly ImageNet 'ant' / 'bee'."""
    root = shared_dataset("hymenoptera_data") / "val"
    spec = backbones.get("efficientnet_lite0")
    net = spec.build_imagenet_classifier().eval()
    state, digest = spec.imagenet_state_dict()
    net.load_state_dict(state)
    assert digest.startswith("57934424")
    pre = spec.preprocess
    mean, std = torch.tensor(pre.mean).view(3, 1, 1), torch.tensor(pre.std).view(3, 1, 1)
    hits = {}
    for cls, target in (("ants", ANT), ("bees", BEE)):
        files = list_files(root / cls)[:24]
        x = torch.stack([(to_tensor(eval_view(load_rgb(f), pre.resize_size, pre.input_size, pre.interpolation)).float() / 255 - mean) / std for f in files])
        with torch.inference_mode():
            pred = net(x).argmax(1).numpy()
        hits[cls] = float(np.mean(pred == target))
    assert hits["ants"] >= 0.5 and hits["bees"] >= 0.5, hits


def test_mapping_checks_count_and_shapes():
    ref = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}
    with pytest.raises(UserError, match="have 1 tensors, the architecture expects 2"):
        backbones.map_by_order({"x": torch.zeros(2, 3)}, ref, "f")
    with pytest.raises(UserError, match="shape"):
        backbones.map_by_order({"x": torch.zeros(3, 3), "y": torch.zeros(2)}, ref, "f")
    out = backbones.map_by_order({"x": torch.ones(2, 3), "y": torch.ones(2)}, ref, "f")
    assert list(out) == ["a.weight", "a.bias"]


def test_new_head_has_n_outputs():
    model, info = build_classifier(backbones.get("efficientnet_lite0"), 7)
    assert info.source == "imagenet"
    assert model(torch.rand(2, 3, 224, 224)).shape == (2, 7)


def test_weights_file_round_trip_and_readable_diff(tmp_path):
    spec = backbones.get("efficientnet_lite0")
    model, _ = build_classifier(spec, 3)
    path = tmp_path / "w.pth"
    torch.save(model.backbone.state_dict(), path)
    loaded, info = build_classifier(spec, 3, weights=str(path))
    x = torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(loaded.backbone.eval()(x), model.backbone.eval()(x))
    assert info.sha256 and info.source == str(path)
    sd = model.backbone.state_dict()
    sd.pop("conv_stem.weight")
    sd["bogus.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=r"missing \(1\): conv_stem.weight.*unexpected \(1\): bogus.weight"):
        build_classifier(spec, 3, weights=str(tmp_path / "bad.pth"))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "f": print}, path)
    with pytest.raises(UserError, match="cannot load weights file"):
        backbones.load_state_dict_file(path)


def test_bundle_round_trip_identical_logits(tmp_path):
    spec = backbones.get("efficientnet_lite0")
    model, info = build_classifier(spec, 4, weights="none")
    torch.nn.init.normal_(model.head.weight)
    meta = bundle.BundleMeta(spec.name, spec.arch, ["a", "b", "c", "d"], spec.preprocess, "linear", 0.0,
                             info.source, info.sha256)
    bundle.save(tmp_path, model.state_dict(), meta)
    loaded, meta2, _ = bundle.load(tmp_path)
    x = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model.eval()(x))
    assert meta2.classes == ["a", "b", "c", "d"] and meta2.preprocess == spec.preprocess
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_unknown_model_suggests_close_match():
    with pytest.raises(UserError, match="did you mean 'efficientnet_lite0'"):
        backbones.get("efficientnet-lite0")
