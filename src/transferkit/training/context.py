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

from ..cache import Cache, ShardedCache
from ..config import TrainConfig
from ..console import Console
from ..data.discover import DatasetSplit
from ..distributed import Group
from ..engines import Choice
from ..features import FeaturePass
from ..models.preprocess import Preprocess
from .result import FitResult
from .strategies.base import STRATEGIES, Strategy

if TYPE_CHECKING:
    from ..models.lazy import LazyClassifier
    from ..runtime import Runtime


@dataclass
class Features:
    """The cached features of a split: train (eval view, then the augmented views) and val, as
    NumPy arrays (float32 features, int64 labels): a head on them needs no torch."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    split: DatasetSplit  # the split less the images that could not be read
    facts: dict  # cache statistics for results.json
    widths: dict[str, int] = field(default_factory=dict)  # "last" (the first columns) and, if extracted, "multi"
    memo: dict = field(default_factory=dict)  # results computed from these features once per run (the head's CV)
    store: ShardedCache | None = None  # where results computed from these features persist across runs

    def last_layer(self) -> tuple[np.ndarray, np.ndarray]:
        """The last layer's features of the training images (eval view) and of the val images."""
        last = self.widths.get("last", self.x_train.shape[1])
        return self.x_train[:self.num_images, :last], self.x_val[:, :last]

    @property
    def num_images(self) -> int:
        """Training images (rows beyond these are augmented views)."""
        return len(self.split.train)


class CachedFeatures:
    """The features of one split, computed at most once: the cache is read (and missing images
    start decoding) when this is made, before the network is built; `get` finishes the pass.
    `extractor`: makes the engine's extractor (`engines`), called only when features are missing."""

    def __init__(self, split: DatasetSplit, pre: Preprocess, cache: ShardedCache, aug_views: int, seed: int,
                 workers: int, extractor: Callable, multi: bool = False, group: Group | None = None):
        self.split, self.cache, self.aug_views, self.extractor = split, cache, aug_views, extractor
        self._pass: FeaturePass | None = FeaturePass(
            [([s.path for s in split.train], aug_views), ([s.path for s in split.val], 0)],
            pre, cache, seed, batch_size=32, workers=workers, multi=multi, group=group)
        self._features: Features | None = None

    def computed(self) -> Features | None:
        """The features if a strategy asked for them, else None (nothing is extracted here)."""
        return self._features

    def get(self, ctx: "Context") -> Features:
        if self._features is None:
            self._features = self._compute(ctx)
        return self._features

    def _compute(self, ctx: "Context") -> Features:
        feature_pass, self._pass = self._pass, None
        train_paths, val_paths = [s.path for s in self.split.train], [s.path for s in self.split.val]
        bar = ctx.console.progress(len(train_paths) + len(val_paths), "features")
        train_fs, val_fs = feature_pass.run(self.extractor, bar)  # the extractor is built only if needed
        bar.close()
        errors = {**train_fs.errors, **val_fs.errors}
        keep_train = [i for i, p in enumerate(train_paths) if p not in errors]
        keep_val = [i for i, p in enumerate(val_paths) if p not in errors]
        split = self.split.without(errors)
        split.check_not_empty()
        x_train, y_train = train_fs.features[keep_train], labels_of(split.train)
        if train_fs.augmented is not None:
            aug = train_fs.augmented[keep_train]
            x_train = np.concatenate([x_train, aug.reshape(-1, aug.shape[-1])])
            y_train = np.concatenate([y_train, np.repeat(y_train, aug.shape[1])])
        facts = {
            "features_cached": train_fs.cached + val_fs.cached,
            "features_computed": train_fs.computed + val_fs.computed,
            "aug_views": self.aug_views,
            "cache_entries_recomputed": self.cache.recomputed,
        }
        widths = {"last": train_fs.last_width}
        if x_train.shape[1] > train_fs.last_width:
            widths["multi"] = x_train.shape[1]
        return Features(x_train, y_train, val_fs.features[keep_val], labels_of(split.val), split, facts, widths,
                        store=self.cache)


def labels_of(samples) -> np.ndarray:
    return np.array([s.label for s in samples], dtype=np.int64)


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
        return self.features.get(self)


@dataclass
class Outcome:
    """What a strategy returns: the fit, the kept model and what it was measured on."""

    fit: FitResult
    val_logits: np.ndarray  # of the kept model, in split.val order (a torch tensor from network strategies)
    state: dict  # the kept model: a Classifier state dict (torch tensors or NumPy arrays)
    split: DatasetSplit  # the split trained on (less unreadable files)
    cfg: TrainConfig  # the options trained with (auto: those of the strategy it chose)
    info: dict = field(default_factory=dict)  # strategy-specific facts for results.json
    features: str = "last"  # the head's input: "last" or "multi" (models.multilayer), as the bundle records it
    pre: Preprocess | None = None  # the kept model's preprocessing where it is not the context's (auto)
