"""What a training run and a fit end with: the run (`Run`), a fit's history (`FitResult`) and a
head fitted on features (`LinearHead`). No torch here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..evaluation.metrics import EpochStats


@dataclass
class Run:
    """A finished training run: its folder and its results (results.json)."""

    path: Path
    results: dict

    @property
    def val_acc(self) -> float:
        return self.results["val_acc"]


@dataclass
class FitResult:
    """How a fit went: its history, the kept epoch (or L-BFGS iteration) and how it ended."""

    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0
    best_val_acc: float = -1.0
    interrupted: bool = False
    stopped_early: bool = False
    unit: str = "epoch"  # what `EpochStats.epoch` counts: "epoch", or "iteration" for L-BFGS
    stopped_by: str | None = None  # "SIGINT" (Ctrl-C) or "SIGTERM" when interrupted; "budget": auto's deadline


@dataclass
class LinearHead:
    """A fitted linear head in NumPy: logits = x @ weight.T + bias (what `nn.Linear` computes),
    so a head on cached features is fitted, applied and saved without torch."""

    weight: np.ndarray  # (classes, features) float32
    bias: np.ndarray  # (classes,) float32

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float32) @ self.weight.T + self.bias).astype(np.float32)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @classmethod
    def of(cls, linear) -> "LinearHead":
        """The head of a trained `nn.Linear`."""
        return cls(linear.weight.detach().float().cpu().numpy().copy(), linear.bias.detach().float().cpu().numpy().copy())

    def widened(self, width: int) -> "LinearHead":
        """The same head reading `width` columns, the extra ones weighted zero."""
        weight = np.zeros((self.out_features, width), dtype=np.float32)
        weight[:, :self.in_features] = self.weight
        return LinearHead(weight, self.bias.copy())

    def state(self) -> dict[str, np.ndarray]:
        """As a `Classifier`'s head in its state dict."""
        return {"head.weight": self.weight, "head.bias": self.bias}
