"""A classifier whose forward gives its logits and each image's out-of-distribution score (`ood`:
1 - the cosine similarity to the k-th nearest training image, on the last layer's features), so a
converted or exported graph computes both, and ONNX Runtime alone gives the same scores as the
run (`ood.Ood.scores`)."""

from __future__ import annotations

import torch
from torch import nn

from ..ood import SCORE_RANGE, Ood


class WithOod(nn.Module):
    """`model` (a `Classifier`) -> (logits (B, C), OOD scores (B,)); the reference rows a buffer."""

    def __init__(self, model: nn.Module, ood: Ood):
        super().__init__()
        self.model, self.k, self.width = model, ood.k, ood.width
        self.register_buffer("reference", torch.from_numpy(ood.reference.copy()))
        self.last_features = getattr(model.backbone, "last_features", None)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.backbone(x)
        logits = self.model.head(features)
        z = features[:, :self.width].float()
        z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
        kth = torch.topk(z @ self.reference.T, self.k, dim=1).values[:, -1]
        return logits, (1.0 - kth).clamp(*SCORE_RANGE)


def with_ood(model: nn.Module, ood: Ood | None) -> nn.Module:
    """`WithOod(model, ood)`, or `model` itself for a run without a score."""
    return model if ood is None else WithOod(model, ood).eval()
