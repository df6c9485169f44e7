"""The cached features of a dataset: what `train` (the feature strategies, auto) and `doctor`
both ask for, so neither extracts what the other did. `features_key` names a backbone's features
in the cache, `feature_extractor` makes the engine's extractor only when some are missing, and
`CachedFeatures` computes a split's features at most once (`extract.FeaturePass`). No torch here."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, TypeVar

import numpy as np

from ..cache import Cache, ShardedCache, model_key
from ..console import Console
from ..data.discover import DatasetSplit
from ..distributed import Group
from ..models.preprocess import Preprocess
from .extract import FeaturePass

T = TypeVar("T")

if TYPE_CHECKING:
    from .. import engines
    from ..models.lazy import LazyClassifier


def features_key(spec, stem: str, weights: str, pre, precision: str) -> str:
    """The features' cache key (`weights`: `WeightsInfo.identity`). Features are keyed by
    precision, not engine: ONNX Runtime's and PyTorch's fp32 features agree to 1e-5 of their
    scale (tested), bf16's do not."""
    return model_key(spec.name + ("+small-stem" if stem == "small" else ""), weights, pre.to_dict(), precision)


def int8_key(engine: engines.Choice, key: str, multi: bool, pre, models: LazyClassifier, cache: Cache,
              paths: list[str], console: Console, group: Group | None = None) -> str:
    """`key` (the backbone's fp32 features' key) where `engine` is not INT8; else the key of its
    INT8 features, the network quantized first where the cache lacks it (`engines.int8`)."""
    if engine is None or engine.precision != "int8":
        return key
    from ..engines import int8
    from ..errors import UserError

    if group is not None and group.distributed:
        raise UserError(f"--engine {engine.engine} runs in one process: leave out --nproc (or torchrun)")
    return int8.features_key(key, multi, lambda: models.get().backbone, pre, models.spec.name, cache, paths,
                             console.info)


def feature_extractor(engine: engines.Choice, key: str, multi: bool, pre, models: LazyClassifier | None,
                      cache: Cache, console: Console, network=None):
    """A factory of `engine`'s extractor of the backbone's features (the cache key `key`; `multi`:
    the earlier stages' too), called only when some features are missing: only then is the
    network built (or its conversion read). `network`: the features network (`engines.convert`),
    where it is not `models`' backbone (a run's frozen one)."""
    from ..engines.convert import features_network

    network = network or features_network({"features": key, "multi": multi}, lambda: models.get().backbone, pre,
                                          models.spec.name)

    def say(message: str) -> None:
        if message.startswith("warning: "):
            console.warn(message[len("warning: "):])
        else:
            console.info(message)

    return lambda: engine.implementation.features(network, engine, cache, say)


@dataclass
class Features:
    """The cached features of a split: train (eval view, then the augmented views) and val, as
    NumPy arrays (float32 features; int64 labels, or multi-label (N, C) 0/1 float32 rows: the
    split's `targets`): a head on them needs no torch."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    split: DatasetSplit  # the split less the images that could not be read
    facts: dict  # cache statistics for results.json
    widths: dict[str, int] = field(default_factory=dict)  # "last" (the first columns) and, if extracted, "multi"
    memo: dict = field(default_factory=dict)  # results computed from these features once per run (the head's CV)
    store: ShardedCache | None = None  # where results computed from these features persist across runs
    # Sharded (a torchrun group, #31): the rows above are this rank's share only, and these give
    # each row's image: its position in split.train (eval-view rows) and in split.val.
    group: Group = field(default_factory=Group)
    train_index: np.ndarray | None = None
    val_index: np.ndarray | None = None

    def last_layer(self) -> tuple[np.ndarray, np.ndarray]:
        """The last layer's features of the training images (eval view) and of the val images."""
        last = self.widths.get("last", self.x_train.shape[1])
        return self.x_train[:self.num_images, :last], self.x_val[:, :last]

    @property
    def sharded(self) -> bool:
        """Whether the rows are this rank's share, the rest on the other ranks of `group`."""
        return self.train_index is not None

    @property
    def num_images(self) -> int:
        """Training images held here (rows beyond these are augmented views): all of them unless sharded."""
        return len(self.train_index) if self.sharded else len(self.split.train)

    @property
    def total_images(self) -> int:
        """Training images, on every rank together."""
        return len(self.split.train)

    def decide(self, fn: Callable[[], T]) -> T:
        """`fn()` (a head fitted on these features), its result on every rank: computed by every
        rank together where the features are sharded (`fn` is then data-parallel), else once by
        the primary (`Group.decide`)."""
        return fn() if self.sharded else self.group.decide(fn)

    def all_val(self, rows: np.ndarray) -> np.ndarray | None:
        """Per val image, in the split's order, from what each rank computed for its val rows
        (`rows`: one per row of `x_val`, e.g. its logits), on the primary (None on the other ranks):
        what a group sends for evaluation (logits, not features). Unsharded: `rows` as they are."""
        if not self.sharded:
            return rows
        parts = self.group.gather((self.val_index, rows))
        if parts is None:
            return None
        out = np.zeros((len(self.split.val), *rows.shape[1:]), dtype=rows.dtype)
        for index, part in parts:
            out[index] = part
        return out


class CachedFeatures:
    """The features of one split, computed at most once: the cache is read (and missing images
    start decoding) when this is made, before the network is built; `get` finishes the pass.
    `extractor`: makes the engine's extractor (`engines`), called only when features are missing."""

    def __init__(self, split: DatasetSplit, pre: Preprocess, cache: ShardedCache, aug_views: int, seed: int,
                 workers: int, extractor: Callable, multi: bool = False, group: Group | None = None,
                 about: dict | None = None, sharded: bool = False):
        self.split, self.cache, self.aug_views, self.extractor = split, cache, aug_views, extractor
        self.multi, self.about, self.group = multi, about, group or Group()
        self.sharded = sharded and self.group.distributed
        self._pass: FeaturePass | None = FeaturePass(
            [([s.path for s in split.train], aug_views), ([s.path for s in split.val], 0)],
            pre, cache, seed, batch_size=32, workers=workers, multi=multi, group=group, sharded=self.sharded)
        self._features: Features | None = None

    @classmethod
    def for_key(cls, split: DatasetSplit, key: str, multi: bool, pre: Preprocess, models: LazyClassifier | None,
                engine: engines.Choice, cache: Cache, console: Console, aug_views: int = 0, seed: int = 0,
                workers: int = 1, group: Group | None = None, sharded: bool = False,
                data: str | os.PathLike | None = None, network=None, backbone: str | None = None) -> "CachedFeatures":
        """The split's features under the cache key `key` (`features_key`), extracted by
        `engine` from `models`' backbone (or from `network`, the features network of `backbone`)
        where the cache lacks them: how train, auto's other input size and doctor all ask for
        them. `sharded`: see `FeaturePass`. `data`: the dataset's folder, under which `cache
        info` lists what its features take."""
        about = None if data is None else {"data": os.path.abspath(data), "backbone": backbone or models.spec.name,
                                           "input_size": pre.input_size, "precision": engine.precision}
        return cls(split, pre, cache.features(key), aug_views, seed, workers,
                   feature_extractor(engine, key, multi, pre, models, cache, console, network), multi, group, about,
                   sharded)

    def computed(self) -> Features | None:
        """The features if a strategy asked for them, else None (nothing is extracted here)."""
        return self._features

    def get(self, console: Console) -> Features:
        if self._features is None:
            self._features = self._compute(console)
        return self._features

    def _compute(self, console: Console) -> Features:
        feature_pass, self._pass = self._pass, None
        train_paths, val_paths = [s.path for s in self.split.train], [s.path for s in self.split.val]
        bar = console.progress(sum(map(len, feature_pass.owned)), "features")  # (sharded: this rank's share)
        started = time.perf_counter()
        train_fs, val_fs = feature_pass.run(self.extractor, bar)  # the extractor is built only if needed
        bar.close()
        seconds = time.perf_counter() - started
        self._record(feature_pass, train_fs.computed + val_fs.computed)
        errors = {**train_fs.errors, **val_fs.errors}
        counts = np.array([train_fs.cached + val_fs.cached, train_fs.computed + val_fs.computed, self.cache.recomputed])
        dim = train_fs.features.shape[1] if len(train_fs.features) else val_fs.features.shape[1]
        if self.sharded:  # each rank found the unreadable among its images: every rank needs them all
            parts = self.group.all_gather((errors, dim))
            errors = {path: reason for part, _ in parts for path, reason in part.items()}
            dim = max(d for _, d in parts)
            counts = self.group.sum(counts.astype(np.float64)).astype(np.int64)
        split = self.split.without(errors)
        split.check_not_empty()
        (keep_train, train_index), (keep_val, val_index) = (
            _kept(paths, fs.rows, errors) for paths, fs in ((train_paths, train_fs), (val_paths, val_fs)))
        x_train = _rows(train_fs.features, keep_train, dim)
        y_train = split.targets(split.train)
        y_train = y_train if train_index is None else y_train[train_index]
        if train_fs.augmented is not None:
            aug = train_fs.augmented[keep_train]
            x_train = np.concatenate([x_train, aug.reshape(-1, dim)])
            y_train = np.concatenate([y_train, np.repeat(y_train, aug.shape[1], axis=0)])
        y_val = split.targets(split.val)
        facts = {
            "features_cached": int(counts[0]),
            "features_computed": int(counts[1]),
            "aug_views": self.aug_views,
            "cache_entries_recomputed": int(counts[2]),
            "features_s": round(seconds, 3),  # the pass, cache reads, decoding and the network's build included
        }
        if self.sharded:
            facts["features_sharded"] = {"ranks": self.group.world, "train_rows_here": len(x_train)}
        widths = {"last": train_fs.last_width}
        if dim > train_fs.last_width:
            widths["multi"] = dim
        return Features(x_train, y_train, _rows(val_fs.features, keep_val, dim),
                        y_val if val_index is None else y_val[val_index], split, facts, widths, store=self.cache,
                        group=self.group, train_index=train_index, val_index=val_index)


    def _record(self, feature_pass: FeaturePass, computed: int) -> None:
        """What this dataset's features take in the cache (`cache info`), noted where any were
        computed or none is noted yet, by one rank per node (sharded: the group's totals)."""
        if self.about is None:
            return
        data = self.about["data"]
        lacks = not any(d.get("data") == data for d in self.cache.datasets())
        views = 1 + self.aug_views
        names = [f"v{v}" for v in range(views)] + ([f"t{v}" for v in range(views)] if self.multi else []) + ["err"]
        keys = [k for held in feature_pass.keys for k in held if k is not None]
        if self.sharded:  # every rank takes part in the sums
            computed, lacks = self.group.sum(np.array([computed, lacks], dtype=np.float64))
        if not computed and not lacks:
            return
        images, size = len(keys), self.cache.entry_bytes(keys, names)
        if self.sharded:
            images, size = (int(v) for v in self.group.sum(np.array([images, size], dtype=np.float64)))
        if self.group.writes_cache or not self.group.distributed:
            try:
                self.cache.record_dataset(self.about, images, size)
            except OSError:  # a note for `cache info`: never a reason to fail the run
                pass


def _kept(paths: list[str], owned: list[int] | None, errors: dict[str, str]) -> tuple[list[int], np.ndarray | None]:
    """(the rows to keep, and where sharded their images' positions in the list less the
    unreadable images, or None)."""
    if owned is None:
        return [i for i, p in enumerate(paths) if p not in errors], None
    readable = np.array([p not in errors for p in paths], dtype=bool)
    position = np.cumsum(readable) - 1
    keep = [k for k, i in enumerate(owned) if readable[i]]
    return keep, position[np.array([owned[k] for k in keep], dtype=np.int64)].astype(np.int64)


def _rows(features: np.ndarray, keep: list[int], dim: int) -> np.ndarray:
    """`features[keep]`, (0, dim) where none are kept here (a rank whose images are all unreadable)."""
    return features[keep] if len(keep) else np.zeros((0, dim), dtype=np.float32)


def labels_of(samples) -> np.ndarray:
    return np.array([s.label for s in samples], dtype=np.int64)
