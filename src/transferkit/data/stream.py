"""Images decoded for one pass of a frozen network, streamed in batches: worker processes decode
ahead of the network, at most `PREFETCH_BATCHES` batches (bounded memory whatever the dataset's
size), and the caller gets them in order as uint8 NumPy arrays. No torch: a cold run whose
backbone is already converted for its engine never imports it.

Every view is decoded once: view 0 is the evaluation view (resize + center crop); views 1..K are
seeded random resized crops with flips, the same for a given (seed, image) in every run and
every worker (`views.view_rng`).
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Iterator

import numpy as np

from ..errors import ImageDecodeError
from ..models.preprocess import Preprocess
from ..processes import die_with_parent
from .decode import center_crop, load_rgb, resize_short
from .views import train_view, view_rng

# Decoded batches the workers may hold ahead of the network (about 5 MB each at 224 px): enough
# to decode through the seconds it takes to build or load the network, bounded whatever the size.
PREFETCH_BATCHES = 16


class ImageViews:
    """Item i -> (i, uint8 array (1 + K_i, 3, S, S) or None, error reason or "", whether the
    reason may be cached)."""

    def __init__(self, paths: list[str], pre: Preprocess, aug_views: int | list[int] = 0, seed: int = 0,
                 keys: list[str] | None = None):
        self.paths, self.pre, self.seed = paths, pre, seed
        self.aug_views = [aug_views] * len(paths) if isinstance(aug_views, int) else list(aug_views)
        self.keys = keys if keys is not None else paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple:
        try:
            img = load_rgb(self.paths[i], min_short_side=self.pre.resize_size)
        except ImageDecodeError as exc:
            return i, None, exc.reason, exc.cacheable
        base = resize_short(img, self.pre.resize_size, self.pre.interpolation)
        views = [center_crop(base, self.pre.input_size)]
        for v in range(1, self.aug_views[i] + 1):
            views.append(train_view(base, self.pre, view_rng(self.seed, self.keys[i], v)))
        return i, np.stack([np.asarray(v, dtype=np.uint8).transpose(2, 0, 1) for v in views]), "", True

    def batch(self, indices: range) -> tuple:
        """(indices decoded, all their views concatenated (sum V, 3, S, S) or None, views per index,
        errors [(index, reason, cacheable)])."""
        items = [self[i] for i in indices]
        ok = [(i, views) for i, views, _, _ in items if views is not None]
        errors = [(i, reason, cacheable) for i, views, reason, cacheable in items if views is None]
        batch = np.ascontiguousarray(np.concatenate([v for _, v in ok])) if ok else None
        return [i for i, _ in ok], batch, [len(v) for _, v in ok], errors


class DecodedBatches:
    """A started iterator of `ImageViews.batch` batches of at most `batch_size` views: with
    `workers`, decoding begins when this is made, in that many processes, up to
    PREFETCH_BATCHES batches ahead; without, each batch is decoded when asked for."""

    def __init__(self, views: ImageViews, batch_size: int = 32, workers: int = 0):
        per_batch = max(1, batch_size // (1 + max(views.aug_views, default=0)))
        self.views = views
        self.chunks = deque(range(s, min(s + per_batch, len(views))) for s in range(0, len(views), per_batch))
        self.ahead: deque[Future] = deque()
        self.pool = ProcessPoolExecutor(workers, initializer=_worker_start, initargs=(views, os.getpid())) \
            if workers and self.chunks else None
        self._fill()

    def _fill(self) -> None:
        while self.pool is not None and self.chunks and len(self.ahead) < PREFETCH_BATCHES:
            self.ahead.append(self.pool.submit(_decode, self.chunks.popleft()))

    def __iter__(self) -> Iterator[tuple]:
        return self

    def __next__(self) -> tuple:
        if self.pool is None:
            if not self.chunks:
                raise StopIteration
            return self.views.batch(self.chunks.popleft())
        if not self.ahead:
            self.close()
            raise StopIteration
        batch = self.ahead.popleft().result()
        self._fill()
        return batch

    def close(self) -> None:
        """Stop the workers (what they had not decoded is dropped)."""
        if self.pool is not None:
            pool, self.pool = self.pool, None
            pool.shutdown(wait=True, cancel_futures=True)

    def __del__(self) -> None:
        self.close()


def decode_batches(paths: list[str], pre: Preprocess, aug_views: int | list[int] = 0, seed: int = 0,
                   keys: list[str] | None = None, batch_size: int = 32, workers: int = 0) -> DecodedBatches:
    """A started iterator of decoded batches of `paths` (see `DecodedBatches`)."""
    return DecodedBatches(ImageViews(paths, pre, aug_views, seed, keys), batch_size, workers)


# The worker processes' own state: the views they decode, set once when each starts.
_worker_views: ImageViews | None = None


def _worker_start(views: ImageViews, parent: int) -> None:
    global _worker_views
    _worker_views = views
    die_with_parent(parent=parent)  # none is ever left behind decoding for nobody


def _decode(indices: range) -> tuple:
    return _worker_views.batch(indices)
