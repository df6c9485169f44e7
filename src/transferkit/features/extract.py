"""Frozen-backbone features, streamed from the image files through an engine's extractor
(`engines`: ONNX Runtime, or PyTorch's `runtime.Extractor`), with the results stored in the
cache (`cache.ShardedCache`, one checksummed entry per image and view). No torch here.
With multi-layer features (`models.multilayer`) each view is two entries: "v" the last layer's
features (the same entry a last-layer-only run reads and writes) and "t" the earlier stages'.

Unreadable images are cached as such, with the reason, so a warm run reports them without
decoding anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..cache import ShardedCache, image_key
from ..distributed import Group
from ..errors import describe_os_error
from ..models.preprocess import Preprocess

# Freezing the backbone (TorchScript) makes the first batch about 0.5 s slower and then saves
# 0.7-1.4 ms per image over the BatchNorm-folded eager module (Lite0, bf16, 2 cores): it pays from
# roughly 400-700 images (`runtime.Extractor`).
FREEZE_MIN_IMAGES = 600

@dataclass
class FeatureSet:
    features: np.ndarray  # (N, D): eval view
    augmented: np.ndarray | None  # (N, K, D) or None
    errors: dict[str, str]  # path -> reason, for images that could not be read
    cached: int  # images served from the cache
    computed: int  # images run through the backbone
    last_width: int  # the first columns that are the last layer's features (all of them without multi)
    rows: list[int] | None = None  # sharded: the positions (in the list of paths) of this rank's rows


class FeaturePass:
    """Features of lists of images, each list with its number of augmented views (train: K,
    val: 0), from the cache where it has them, the rest computed in one streaming pass.

    The cache is read when the pass is made, and the missing images start decoding then too, in
    DataLoader worker processes: decoding overlaps what the caller does before `run` (building
    the network: importing timm alone holds one core for about 2 s while the other is idle).

    In a group of processes (`distributed.Group`) the images missing from any rank's cache are
    shared out: each rank computes every world-th of them, and the results (features, or why an
    image is unreadable) are exchanged over the group, so every rank ends with the same
    features without the nodes sharing a filesystem; one rank per node writes them to its cache.

    `sharded` (in a group): each rank holds only its share of the images (every world-th, from
    its rank), read from its cache or computed by itself and written to its cache; nothing is
    exchanged but the reasons images are unreadable. What a data-parallel head needs (#31): no
    process ever holds every image's features."""

    def __init__(self, groups: list[tuple[list[str], int]], pre: Preprocess, cache: ShardedCache | None,
                 seed: int = 0, batch_size: int = 32, workers: int = 0, multi: bool = False,
                 group: Group | None = None, sharded: bool = False):
        self.groups, self.multi, self.group = groups, multi, group or Group()
        self.sharded = sharded and self.group.distributed
        self.last_width: int | None = None
        # the positions of each list this rank holds: all of them, or its share
        self.owned = [list(self.group.share(len(paths)) if self.sharded else range(len(paths))) for paths, _ in groups]
        self.rows: list[list[np.ndarray | None]] = [[None] * len(paths) for paths, _ in groups]
        self.errors: list[dict[str, str]] = [{} for _ in groups]
        self.keys: list[list[str | None]] = [[None] * len(paths) for paths, _ in groups]
        for g, (paths, _) in enumerate(groups):
            for i in self.owned[g]:
                self.keys[g][i] = self._key(paths[i], self.errors[g])
        self.cache = cache
        self.todo: list[tuple[int, int]] = []  # (group, index) of the images to compute
        for g, (paths, aug_views) in enumerate(groups):
            for i in self.owned[g]:
                key = self.keys[g][i]
                if key is None:
                    continue
                got = self._cached(key, 1 + aug_views)
                if isinstance(got, str):
                    self.errors[g][paths[i]] = got
                elif got is None:
                    self.todo.append((g, i))
                else:
                    self.rows[g][i] = got
        self.missing = set(self.todo)  # what this rank's cache lacks
        if self.sharded:  # each rank computes what it holds and lacks
            self.share = list(range(len(self.todo)))
        else:
            self.todo = self.group.union(self.todo)  # what any rank lacks is computed once, shared out
            self.share = list(self.group.share(len(self.todo)))  # the positions in `todo` computed here
        self._batches = None
        if self.share:
            from ..data.stream import decode_batches  # worker processes: only when there is work

            mine = [self.todo[j] for j in self.share]
            self._batches = decode_batches(
                [groups[g][0][i] for g, i in mine], pre, [groups[g][1] for g, _ in mine], seed,
                [self.keys[g][i] for g, i in mine], batch_size, workers)

    @staticmethod
    def _key(path: str, errors: dict[str, str]) -> str | None:
        """The image's cache key, or None (and the reason in `errors`) when it cannot be stat'ed."""
        try:
            return image_key(path)
        except OSError as exc:
            errors[path] = describe_os_error(exc)
            return None

    def _cached(self, key: str, views: int) -> np.ndarray | str | None:
        """The cached (views, D) features, the cached reason the image is unreadable, or None."""
        if self.cache is None:
            return None
        reason = self.cache.get_error(key)
        if reason is not None:
            return reason
        vecs = [self.cache.get(key, f"v{v}") for v in range(views)]
        if self.multi:
            taps = [self.cache.get(key, f"t{v}") for v in range(views)]
            if any(t is None for t in taps) or any(v is None for v in vecs):
                return None
            self.last_width = vecs[0].shape[-1]
            vecs = [np.concatenate([v, t]) for v, t in zip(vecs, taps)]
        return np.stack(vecs) if all(v is not None for v in vecs) else None

    def run(self, extractor, progress=None) -> list[FeatureSet]:
        """One `FeatureSet` per group. `extractor` (`runtime.Extractor`, or an engine's
        extractor with its interface: `engines`) may be a factory, called only if some features
        are not this rank's to compute."""
        if progress is not None:
            progress.update(sum(len(o) for o in self.owned) - len(self.todo))
        done = self._compute(extractor, progress) if self._batches is not None else {}
        if self.sharded:  # the widths only: every rank the same, whether it computed any or not
            self.last_width = next((w for w in self.group.all_gather(self.last_width) if w is not None), None)
        elif self.group.distributed:
            parts = self.group.all_gather((done, self.last_width))
            done = {j: result for part, _ in parts for j, result in part.items()}
            self.last_width = self.last_width or next((w for _, w in parts if w is not None), None)
            if progress is not None:
                progress.update(len(self.todo) - len(self.share))
        writes = self.cache is not None and (self.group.writes_cache or not self.group.distributed or self.sharded)
        for j, (row, reason, cacheable) in sorted(done.items()):
            g, i = self.todo[j]
            write = writes and (g, i) in self.missing
            if row is None:
                self.errors[g][self.groups[g][0][i]] = reason
                if write and cacheable:  # not "permission denied": it may be fixed
                    self.cache.put_error(self.keys[g][i], reason)
                continue
            self.rows[g][i] = row
            if write:
                w = self.last_width or row.shape[-1]
                for v in range(len(row)):
                    self.cache.put(self.keys[g][i], f"v{v}", row[v, :w])
                    if self.multi:
                        self.cache.put(self.keys[g][i], f"t{v}", row[v, w:])
        if self.cache is not None:
            self.cache.flush()
        todo = {g: sum(1 for t, _ in self.todo if t == g) for g in range(len(self.groups))}
        return [_feature_set([self.rows[g][i] for i in self.owned[g]], 1 + aug_views, self.errors[g], todo[g],
                             self.last_width, self.owned[g] if self.sharded else None)
                for g, (_, aug_views) in enumerate(self.groups)]

    def _compute(self, extractor, progress) -> dict[int, tuple]:
        """This rank's share: {position in `todo`: (features (1 + K, D) or None, error reason,
        whether the reason may be cached)}."""
        if callable(extractor) and not hasattr(extractor, "run"):
            extractor = extractor()
        views = sum(1 + self.groups[self.todo[j][0]][1] for j in self.share)
        extractor.freeze = extractor.freeze or views >= FREEZE_MIN_IMAGES
        batches, self._batches = self._batches, None
        done: dict[int, tuple] = {}
        for idx, feats, errs in extractor.run(batches, progress):
            for k, reason, cacheable in errs:
                done[self.share[k]] = (None, reason, cacheable)
            for k, f in zip(idx, feats):
                done[self.share[k]] = (np.asarray(f), "", True)
        if self.multi:  # known once the network runs (an engine's conversion records it)
            if extractor.last_features is None and any(row is not None for row, _, _ in done.values()):
                raise RuntimeError("a multi-layer feature pass needs a multi-layer backbone")
            self.last_width = extractor.last_features
        return done


def _feature_set(rows: list[np.ndarray | None], views: int, errors: dict[str, str], computed: int,
                 last_width: int | None, owned: list[int] | None = None) -> FeatureSet:
    dim = next((r.shape[-1] for r in rows if r is not None), 0)
    full = np.zeros((len(rows), views, dim), dtype=np.float32)
    for i, r in enumerate(rows):
        if r is not None:
            full[i] = r
    return FeatureSet(full[:, 0], full[:, 1:] if views > 1 else None, errors, len(rows) - computed, computed,
                      last_width or dim, owned)
