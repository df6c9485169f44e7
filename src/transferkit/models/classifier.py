"""The classifier: a backbone (images -> pooled features) plus a new linear head for N classes,
and building it with its weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import files
from ..errors import UserError
from . import backbones, weights as weight_files


class Classifier(nn.Module):
    """backbone -> dropout -> linear head. `backbone(x)` gives (B, num_features)."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_features, num_classes)
        self.frozen_norms: list[nn.Module] = []  # BatchNorm layers of frozen stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x)))

    def refresh_frozen_norms(self, all_norms: bool = False) -> None:
        """Note the BatchNorm layers whose parameters are all frozen (`all_norms`: every one):
        `train()` keeps them in eval mode, so their running statistics do not drift while the
        rest trains."""
        self.frozen_norms = [
            m for m in self.backbone.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and any(True for _ in m.parameters(recurse=False))
            and (all_norms or not any(p.requires_grad for p in m.parameters(recurse=False)))
        ]

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if mode:
            for m in self.frozen_norms:
                m.eval()
        return self


@dataclass(frozen=True)
class WeightsInfo:
    source: str  # "imagenet", "none" or a file path
    sha256: str | None  # of the weights file; None for random init


def identify_weights(spec: backbones.BackboneSpec, weights: str) -> WeightsInfo:
    """Source and sha256 of the weights, without building the network (fails early when the
    file or package is missing, or the published checksum does not match)."""
    if weights == "none":
        return WeightsInfo("none", None)
    if weights == "imagenet":
        return WeightsInfo("imagenet", spec.imagenet_file()[1])
    if not Path(weights).is_file():
        raise UserError(f"weights file not found: {weights}")
    return WeightsInfo(str(weights), files.file_sha256(weights))


class LazyClassifier:
    """The classifier, built (timm, weights mapping) on first use only.

    The backbone's prepared weights are kept in a checksummed cache file keyed by the weights'
    sha256: a linear run whose features are all cached then never builds the network, which
    saves the 2.2 s of importing timm (and with it torchvision and torch._dynamo). The cache file is only written after the weights were
    validated against the architecture, and is only used while its checksum holds."""

    def __init__(self, spec: backbones.BackboneSpec, num_classes: int, weights: str,
                 dropout: float = 0.0, cache_file: Path | None = None, stem: str = "standard",
                 features: str = "last"):
        self.spec, self.num_classes, self.weights, self.dropout = spec, num_classes, weights, dropout
        self.stem, self.features = stem, features
        self.info = identify_weights(spec, weights)
        self.cache_file = cache_file if self.info.sha256 else None  # random init is not cached
        self._model: Classifier | None = None
        self._state: dict[str, torch.Tensor] | None = None  # the verified cache file, read once

    @property
    def built(self) -> bool:
        return self._model is not None

    def prepare(self) -> None:
        """Validate the weights now (building the model) unless a verified cache file exists."""
        if self._cached_state() is None:
            self.get()

    def get(self) -> Classifier:
        if self._model is None:
            self._model, _ = build_classifier(self.spec, self.num_classes, self.weights, self.dropout, self.stem,
                                              self.features)
            if self.cache_file is not None and self._cached_state() is None:
                _write_checked(self.cache_file, self._model.backbone.state_dict())
        return self._model

    def backbone_state(self) -> dict[str, torch.Tensor]:
        if self._model is None:
            cached = self._cached_state()
            if cached is not None:
                return cached
        return self.get().backbone.state_dict()

    def _cached_state(self) -> dict[str, torch.Tensor] | None:
        if self._state is None and self.cache_file is not None:
            self._state = _read_checked(self.cache_file)
        return self._state


_WEIGHTS = b"TKW1"  # magic of the cached backbone weights


def _write_checked(path: Path, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    files.write_checked(path, _WEIGHTS, save({k: v.detach().contiguous() for k, v in state.items()}))


def _read_checked(path: Path) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load

    try:
        data = files.read_checked(path, _WEIGHTS)
    except files.CorruptBlob:
        return None
    return None if data is None else load(data)


def build_classifier(
    spec: backbones.BackboneSpec, num_classes: int, weights: str = "imagenet", dropout: float = 0.0,
    stem: str = "standard", features: str = "last",
) -> tuple[Classifier, WeightsInfo]:
    """Build `spec` for `num_classes` with the given weights ("imagenet", "none" or a file);
    features="multi": the multi-layer backbone (`multilayer`), its weights loaded the same way."""
    backbone = spec.build(stem)
    info = load_backbone_weights(spec, backbone, weights)
    if features == "multi":
        from .multilayer import multi_layer

        backbone = multi_layer(backbone, spec.name)
    return Classifier(backbone, backbone.num_features, num_classes, dropout), info


def load_backbone_weights(spec: backbones.BackboneSpec, backbone: nn.Module, weights: str) -> WeightsInfo:
    if weights == "none":
        return WeightsInfo("none", None)
    if weights == "imagenet":
        full, digest = spec.imagenet_state_dict()
        _load_exact(backbone, _without_head(full, backbone), f"ImageNet weights of {spec.name}")
        return WeightsInfo("imagenet", digest)
    sd = weight_files.load_state_dict_file(weights)
    sd = weight_files.strip_prefixes(sd, ("module.", "model.", "backbone."))
    expected = backbone.state_dict()
    body = _without_head(sd, backbone)
    if set(body) != set(expected):
        # Same architecture under another naming (e.g. efficientnet_pytorch): map by order.
        reference = spec.build_imagenet_classifier().state_dict()
        if len(sd) == len(reference):
            body = _without_head(weight_files.map_by_order(sd, reference, weights), backbone)
    _load_exact(backbone, body, f"weights file {weights}")
    return WeightsInfo(str(weights), files.file_sha256(weights))


def _without_head(sd: dict[str, torch.Tensor], backbone: nn.Module) -> dict[str, torch.Tensor]:
    """Drop tensors of the original classifier (not part of the feature extractor)."""
    keep = backbone.state_dict().keys()
    head_names = ("classifier.", "fc.", "head.fc.", "last_linear.")
    return {k: v for k, v in sd.items() if k in keep or not k.startswith(head_names)}


def _load_exact(module: nn.Module, sd: dict[str, torch.Tensor], origin: str) -> None:
    diff = weight_files.state_dict_diff(module.state_dict(), sd)
    if diff:
        raise UserError(f"{origin} do not fit the architecture: " + "; ".join(diff))
    module.load_state_dict(sd, strict=True)
