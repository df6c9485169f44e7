"""The classifier: a backbone (images -> pooled features) plus a new linear head for N classes,
and building it with its weights (`models.lazy` builds it on first use)."""

from __future__ import annotations


import torch
from torch import nn

from .. import files
from ..errors import UserError
from . import backbones, weights as weight_files
from .weights import WeightsInfo


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


def build_classifier(
    spec: backbones.BackboneSpec, num_classes: int, weights: str = "imagenet", dropout: float = 0.0,
    stem: str = "standard", features: str = "last", drop_path: float = 0.0,
) -> tuple[Classifier, WeightsInfo]:
    """Build `spec` for `num_classes` with the given weights ("imagenet", "none" or a file);
    features="multi": the multi-layer backbone (`multilayer`), its weights loaded the same way;
    `drop_path`: the backbone's stochastic depth rate while training (timm)."""
    backbone = spec.build(stem, drop_path=drop_path)
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
