"""What a strategy gets (`Context`) and what it returns (`Outcome`).

The context is frozen: a strategy never hands results back by changing it. Files found unreadable
while training leave the split in the `Outcome` (`Outcome.split`), and `auto` returns the options
of the strategy it chose (`Outcome.cfg`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..cache import Cache
from ..config import TrainConfig
from ..console import Console
from ..data.discover import DatasetSplit
from ..distributed import Group
from ..engines import Choice
from ..evaluation.metrics import EpochStats
from ..features.dataset import CachedFeatures, Features, labels_of  # noqa: F401 - strategies read them here
from ..models.preprocess import Preprocess
from .result import FitResult
from .strategies.base import STRATEGIES, Strategy

if TYPE_CHECKING:
    from ..ood import Ood
    from .parent import Parent
    from ..models.lazy import LazyClassifier
    from ..runtime import Runtime


@dataclass(frozen=True)
class Context:
    """Everything a strategy needs: resolved options, the data, the model and where it runs."""

    cfg: TrainConfig
    split: DatasetSplit
    models: LazyClassifier  # the classifier, built on first use
    pre: Preprocess
    device: str  # where networks run: auto | cpu | cuda | cuda:N (see `runtime`)
    cache: Cache
    workers: int
    console: Console
    features: CachedFeatures | None  # for strategies that start from cached features
    run_dir: Path
    engine: "Choice | None" = None  # what extracts the cached features (engines.choose), if any
    features_ident: dict | None = None  # the features network's identity (its engine conversion's key)
    resume: dict | None = None  # a checkpoint to continue from (--resume)
    group: Group = field(default_factory=Group)  # the processes training together (torchrun), or one
    started: float = 0.0  # the command's start (time.perf_counter()): auto's --budget counts from it
    deadline: float | None = None  # no training epoch starts that would end after it (auto's --budget)
    observe: Callable[[EpochStats], None] | None = None  # told of each training epoch as it ends (--track)
    parent: "Parent | None" = None  # the finished run this one starts from (--from)

    @functools.cached_property
    def runtime(self) -> Runtime:
        """Where and in which precision networks train (torch is imported on first use only: a
        head on cached features never asks)."""
        from ..runtime import Runtime

        return Runtime.create(self.device, self.cfg.precision)

    @property
    def checkpoint(self) -> Path:
        """Where the epoch loop writes its checkpoint after every epoch."""
        return self.run_dir / "checkpoint.pt"

    @property
    def strategy(self) -> Strategy:
        return STRATEGIES.get(self.cfg.strategy)

    def cached_features(self) -> Features:
        """The train and val features (computed once per run, whichever strategy asks)."""
        if self.features is None:
            raise RuntimeError(f"strategy {self.cfg.strategy} declares no cached features (uses_features)")
        return self.features.get(self.console)


@dataclass
class Outcome:
    """What a strategy returns: the fit, the kept model and what it was measured on."""

    fit: FitResult
    val_logits: np.ndarray | None  # of the kept model, in split.val order (a torch tensor from network strategies; None on
    # the other ranks of a group whose features are sharded: the primary evaluates)
    state: dict  # the kept model: a Classifier state dict (torch tensors or NumPy arrays)
    split: DatasetSplit  # the split trained on (less unreadable files)
    cfg: TrainConfig  # the options trained with (auto: those of the strategy it chose)
    info: dict = field(default_factory=dict)  # strategy-specific facts for results.json
    features: str = "last"  # the head's input: "last" or "multi" (models.multilayer), as the bundle records it
    pre: Preprocess | None = None  # the kept model's preprocessing where it is not the context's (auto)
    thresholds: np.ndarray | None = None  # multi-label: each class's decision threshold (None: task's default)
    temperature: float | None = None  # single-label: the calibrating temperature (None: not calibrated, 1)
    ood: "Ood | None" = None  # the out-of-distribution score (`ood.fitted`; None: not made, e.g. sharded features)
    val_ood: np.ndarray | None = None  # the val images' scores, in split.val order
