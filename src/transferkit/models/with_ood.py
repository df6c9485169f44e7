"""A classifier whose forward gives its logits and each image's out-of-distribution score (`ood`:
1 - the cosine similarity to the k-th nearest training image, on the last layer's features), so a
converted or exported graph computes both, and ONNX Runtime alone gives the same scores as the
run (`ood.Ood.scores`)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..ood import SCORE_RANGE, Ood


class WithOod(nn.Module):
    """`model` (a `Classifier`) -> (logits (B, C), OOD scores (B,)); the reference rows a buffer."""

    def __init__(self, model: nn.Module, ood: Ood):
        super().__init__()
        self.model, self.k, self.width = model, ood.k, ood.width
        self.sortless = False  # (`without_sort`: for runtimes without a sort)
        self.register_buffer("reference", torch.from_numpy(ood.reference.copy()))
        self.last_features = getattr(model.backbone, "last_features", None)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.backbone(x)
        logits = self.model.head(features)
        z = features[:, :self.width].float()
        z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sims = z @ self.reference.T
        kth = kth_largest(sims, self.k) if self.sortless else torch.topk(sims, self.k, dim=1).values[:, -1]
        return logits, (1.0 - kth).clamp(*SCORE_RANGE)

    def without_sort(self) -> "WithOod":
        """This model, its k-th neighbour found by `kth_largest` (the same values): for LiteRT."""
        clone = copy.copy(self)
        clone.sortless = True
        return clone


def kth_largest(sims: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest value of each row, without a sort: the largest, k times, each time the
    first occurrence of the one found taken out (ties count once each, as top-k's). For graphs whose
    runtime has no sort (the LiteRT interpreter: top-k lowers to STABLEHLO_SORT, which it lacks);
    cosine similarities are in [-1, 1], so 4 below one is out of the way."""
    columns = torch.arange(sims.shape[1], device=sims.device)
    for _ in range(k - 1):
        first = sims.argmax(dim=1, keepdim=True)
        sims = sims - 4.0 * (columns == first).to(sims.dtype)
    return sims.max(dim=1).values


def with_ood(model: nn.Module, ood: Ood | None) -> nn.Module:
    """`WithOod(model, ood)`, or `model` itself for a run without a score."""
    return model if ood is None else WithOod(model, ood).eval()
