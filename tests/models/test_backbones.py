"""Conformance over the whole registry, and the weight sources of torchvision backbones."""

from __future__ import annotations

import time

import pytest
import torch

import transferkit
from helpers import make_dataset
from transferkit.models import backbones, weights as weight_sources
from transferkit.errors import UserError
from transferkit.models.classifier import Classifier, build_classifier

ALL = backbones.names()


@pytest.mark.parametrize("name", ALL)
def test_builds_and_gives_n_outputs(name):
    spec = backbones.get(name)
    backbone = spec.build()
    model = Classifier(backbone, backbone.num_features, 3).eval()
    with torch.inference_mode():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 3)
        assert backbone(torch.rand(1, 3, 64, 64)).shape == (1, backbone.num_features)
    assert spec.preprocess.input_size >= 224 and len(spec.preprocess.mean) == 3
    assert spec.top1 is not None and 50 < spec.top1 < 90


@pytest.mark.parametrize("name", ALL)
def test_stages_cover_every_parameter_once(name):
    spec = backbones.get(name)
    backbone = spec.build()
    stages = spec.stages(backbone)
    flat = [n for stage in stages for n in stage]
    assert len(stages) >= 4 and all(stages)
    assert sorted(flat) == sorted(n for n, _ in backbone.named_parameters())


@pytest.mark.parametrize("name", ALL)
def test_linear_trains_exactly_the_head(name):
    from transferkit.training.network import param_groups

    spec = backbones.get(name)
    backbone = spec.build()
    model = Classifier(backbone, backbone.num_features, 4)
    stages = spec.stages(backbone)
    groups = param_groups(model, stages, "linear", 1e-3, 0.1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}
    assert [g["name"] for g in groups] == ["head"] and len(groups[0]["params"]) == 2
    groups = param_groups(model, stages, "finetune", 1e-3, 0.1)
    assert all(p.requires_grad for p in model.parameters())
    assert [(g["name"], g["lr"]) for g in groups] == [("backbone", pytest.approx(1e-4)), ("head", 1e-3)]


@pytest.mark.parametrize("name", sorted(backbones.PUBLISHED_PARAMS))
def test_parameter_counts_equal_published(name):
    """With a 1000-class head, the counts equal the published ones (e.g. resnet18 11,689,512)."""
    backbone = backbones.get(name).build()
    model = Classifier(backbone, backbone.num_features, 1000)
    assert sum(p.numel() for p in model.parameters()) == backbones.PUBLISHED_PARAMS[name]


def test_known_published_counts():
    expected = {"resnet18": 11_689_512, "resnet50": 25_557_032, "vgg16": 138_357_544,
                "squeezenet1_1": 1_235_496, "shufflenet_v2_x1_0": 2_278_604,
                "mobilenet_v2": 3_504_872, "efficientnet_b0": 5_288_548}
    assert {k: backbones.PUBLISHED_PARAMS[k] for k in expected} == expected


def test_duplicate_registration_refused():
    with pytest.raises(ValueError, match="registered twice"):
        backbones.register(backbones.get("resnet18"))


def test_torchvision_format_file_loads_with_identical_outputs(tmp_path):
    spec = backbones.get("resnet18")
    reference = spec.build_imagenet_classifier().eval()  # torchvision's own model and key names
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model, info = build_classifier(spec, 1000, weights=str(path))
    model.head.load_state_dict(reference.fc.state_dict())
    x = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        assert torch.allclose(model.eval()(x), reference(x), atol=1e-5)
    assert info.sha256


def test_mismatched_file_gives_readable_diff(tmp_path):
    torch.save(backbones.get("resnet34").build_imagenet_classifier().state_dict(), tmp_path / "r34.pth")
    with pytest.raises(UserError, match=r"do not fit the architecture: unexpected \(\d+\): layer1.2"):
        build_classifier(backbones.get("resnet18"), 2, weights=str(tmp_path / "r34.pth"))


def test_absent_imagenet_weights_offline_give_clear_error_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setattr(weight_sources, "_download", _offline)
    start = time.perf_counter()
    with pytest.raises(UserError) as exc:
        build_classifier(backbones.get("resnet18"), 2)
    msg = str(exc.value)
    assert "resnet18-f37072fd.pth" in msg and str(tmp_path / "hub") in msg and "--weights PATH" in msg
    assert time.perf_counter() - start < 5


def _offline(url, target, timeout=10.0):
    """The real download function, pointed at an address that cannot resolve."""
    return _real_download("http://weights.invalid/" + url.rsplit("/", 1)[1], target, timeout)


_real_download = weight_sources._download


def test_hub_cache_file_is_used_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    spec = backbones.get("squeezenet1_1")
    target = spec.imagenet.expected_path()
    target.parent.mkdir(parents=True)
    torch.save(spec.build_imagenet_classifier().state_dict(), target)  # wrong bytes for its name
    with pytest.raises(UserError, match="expected prefix b8a52dc0"):
        build_classifier(spec, 2)


def test_train_end_to_end_with_torchvision_weights_file(tmp_path):
    data = make_dataset(tmp_path / "d", n_train=3, n_val=2)
    spec = backbones.get("resnet18")
    torch.manual_seed(0)
    path = tmp_path / "resnet18.pth"
    torch.save(spec.build_imagenet_classifier().state_dict(), path)
    run = transferkit.train(data, model="resnet18", weights=str(path), out=str(tmp_path / "r"), quiet=True)
    assert run.results["backbone"] == "resnet18"
    pred = transferkit.load(run.path).predict([str(data / "val" / "red" / "red0.jpg")])[0]
    assert pred.label in ("blue", "red") and not pred.error


def test_finetune_with_a_torchvision_backbone(tmp_path):
    data = make_dataset(tmp_path / "d", n_train=3, n_val=2)
    run = transferkit.train(data, model="squeezenet1_1", weights="none", strategy="finetune", epochs=1,
                            batch_size=3, out=str(tmp_path / "r"), quiet=True)
    assert run.results["backbone"] == "squeezenet1_1" and run.results["epochs_run"] == 1
    assert abs(transferkit.evaluate(run.path)["accuracy"] - run.val_acc) <= 0.005


def test_timm_model_weights_from_hub_cache(tmp_path, monkeypatch):
    """timm:<name>: weights in timm's own key names are found in the torch hub cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    spec = backbones.get("timm:convnext_atto")
    reference = spec.build_imagenet_classifier().eval()
    target = spec.imagenet.expected_path()
    target.parent.mkdir(parents=True)
    from safetensors.torch import save_file

    save_file(reference.state_dict(), str(target))
    if spec.imagenet._hf_cached() is not None:
        pytest.skip("this machine's Hugging Face cache holds the file: the cache path would be used")
    model, info = build_classifier(spec, 1000)
    model.head.load_state_dict(reference.get_classifier().state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(model.eval()(x), reference(x), atol=1e-5)
    assert info.source == "imagenet"


def test_timm_model_absent_weights_fail_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setattr(weight_sources, "_download", _offline)
    spec = backbones.get("timm:convnext_atto")
    if spec.imagenet.available():
        pytest.skip("weights for timm:convnext_atto are cached on this machine")
    start = time.perf_counter()
    with pytest.raises(UserError, match="timm--convnext_atto.*--weights PATH"):
        build_classifier(spec, 2)
    assert time.perf_counter() - start < 5
