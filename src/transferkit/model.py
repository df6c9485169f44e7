"""The classifier: a backbone (images -> pooled features) plus a new linear head for N classes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import backbones
from .errors import UserError


class Classifier(nn.Module):
    """backbone -> dropout -> linear head. `backbone(x)` gives (B, num_features)."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x)))


@dataclass(frozen=True)
class WeightsInfo:
    source: str  # "imagenet", "none" or a file path
    sha256: str | None  # of the weights file; None for random init


def build_classifier(
    spec: backbones.BackboneSpec, num_classes: int, weights: str = "imagenet", dropout: float = 0.0
) -> tuple[Classifier, WeightsInfo]:
    """Build `spec` for `num_classes` with the given weights ("imagenet", "none" or a file)."""
    backbone = spec.build()
    info = load_backbone_weights(spec, backbone, weights)
    return Classifier(backbone, backbone.num_features, num_classes, dropout), info


def load_backbone_weights(spec: backbones.BackboneSpec, backbone: nn.Module, weights: str) -> WeightsInfo:
    if weights == "none":
        return WeightsInfo("none", None)
    if weights == "imagenet":
        full, digest = spec.imagenet_state_dict()
        _load_exact(backbone, _without_head(full, backbone), f"ImageNet weights of {spec.name}")
        return WeightsInfo("imagenet", digest)
    sd = backbones.load_state_dict_file(weights)
    sd = backbones.strip_prefixes(sd, ("module.", "model.", "backbone."))
    expected = backbone.state_dict()
    body = _without_head(sd, backbone)
    if set(body) != set(expected):
        # Same architecture under another naming (e.g. efficientnet_pytorch): map by order.
        reference = spec.build_imagenet_classifier().state_dict()
        if len(sd) == len(reference):
            body = _without_head(backbones.map_by_order(sd, reference, weights), backbone)
    _load_exact(backbone, body, f"weights file {weights}")
    return WeightsInfo(str(weights), backbones.file_sha256(weights))


def _without_head(sd: dict[str, torch.Tensor], backbone: nn.Module) -> dict[str, torch.Tensor]:
    """Drop tensors of the original classifier (not part of the feature extractor)."""
    keep = backbone.state_dict().keys()
    head_names = ("classifier.", "fc.", "head.fc.", "last_linear.")
    return {k: v for k, v in sd.items() if k in keep or not k.startswith(head_names)}


def _load_exact(module: nn.Module, sd: dict[str, torch.Tensor], origin: str) -> None:
    diff = backbones.state_dict_diff(module.state_dict(), sd)
    if diff:
        raise UserError(f"{origin} do not fit the architecture: " + "; ".join(diff))
    module.load_state_dict(sd, strict=True)
