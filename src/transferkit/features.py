"""Frozen-backbone features: fast batched extraction, streamed from the image files, with the
results stored in the cache (`cache.ShardedCache`, one checksummed entry per image and view).
With multi-layer features (`models.multilayer`) each view is two entries: "v" the last layer's
features (the same entry a last-layer-only run reads and writes) and "t" the earlier stages'.

Unreadable images are cached as such, with the reason, so a warm run reports them without
decoding anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from .cache import ShardedCache, image_key
from .data.datasets import decode_batches
from .errors import describe_os_error
from .models.preprocess import Preprocess
from .runtime import Runtime

# Freezing the backbone (TorchScript) makes the first batch about 0.5 s slower and then saves
# 0.7-1.4 ms per image over the BatchNorm-folded eager module (Lite0, bf16, 2 cores): it pays from
# roughly 400-700 images.
FREEZE_MIN_IMAGES = 600


class Extractor:
    """Runs a frozen backbone over image files, fast: eval mode, BatchNorm folded, channels_last,
    bf16 where the CPU has it (AMP dtype on CUDA), batched. Batches come decoded (`run` takes
    `decode_batches`, whose workers decode ahead)."""

    def __init__(self, backbone: nn.Module, pre: Preprocess, runtime: Runtime,
                 batch_size: int = 32):
        self.module = runtime.inference_module(backbone, pre.input_size)
        self.last_features = getattr(backbone, "last_features", None)  # multi-layer: width of the last layer's part
        self.frozen: torch.jit.ScriptModule | None = None
        self.freeze = False  # set by callers with enough images to pay for freezing
        self.pre, self.runtime = pre, runtime
        self.batch_size = batch_size
        self.mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.std).view(1, 3, 1, 1)

    @torch.no_grad()
    def forward(self, batch_u8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) -> float32 features (B, D) on the CPU."""
        x = self.runtime.to_input(batch_u8, self.mean, self.std, self.runtime.dtype)
        if self.freeze and self.frozen is None:
            out = self._freeze(x)
            if out is not None:
                return out
        if self.frozen is not None:
            # no_grad, not inference_mode: TorchScript runs its optimized graph only outside it.
            return self.frozen(x).float().cpu()
        with torch.inference_mode():
            return self.module(x).float().cpu()

    def _freeze(self, x: torch.Tensor) -> torch.Tensor | None:
        """TorchScript trace + freeze: fuses ops beyond the eager BatchNorm folding; measured 10-18%
        faster than the folded eager module for EfficientNet-Lite0 in bf16 on CPU (6.3 vs 7.0-7.7
        ms/img). Returns this batch's features,
        or None (and stays eager) for a model that does not trace or whose traced output differs.
        The first call of the frozen module must see the real batch shape: its executor optimizes
        for the shapes of its first runs."""
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                frozen = torch.jit.freeze(torch.jit.trace(self.module, x, check_trace=False))
                out = frozen(x).float()
                ref = self.module(x[:2]).float()
        except Exception:  # noqa: BLE001 - any tracing failure just means: stay eager
            self.freeze = False
            return None
        if not torch.allclose(out[:2], ref, rtol=0.05, atol=0.05):
            self.freeze = False
            return None
        self.frozen = frozen
        return out.cpu()

    def run(self, batches: Iterator[tuple], progress=None) -> Iterator[tuple]:
        """Features of `decode_batches` batches (already under way): yields (indices, one
        (1 + K, D) tensor per index, errors [(index, reason, cacheable)]) per batch."""
        for idx, batch, counts, errors in batches:
            feats = self.forward(batch).split(counts) if batch is not None else ()
            if progress is not None:
                progress.update(len(idx) + len(errors))
            yield idx, feats, errors


@dataclass
class FeatureSet:
    features: torch.Tensor  # (N, D): eval view
    augmented: torch.Tensor | None  # (N, K, D) or None
    errors: dict[str, str]  # path -> reason, for images that could not be read
    cached: int  # images served from the cache
    computed: int  # images run through the backbone
    last_width: int  # the first columns that are the last layer's features (all of them without multi)


class FeaturePass:
    """Features of lists of images, each list with its number of augmented views (train: K,
    val: 0), from the cache where it has them, the rest computed in one streaming pass.

    The cache is read when the pass is made, and the missing images start decoding then too, in
    DataLoader worker processes: decoding overlaps what the caller does before `run` (building
    the network: importing timm alone holds one core for about 2 s while the other is idle)."""

    def __init__(self, groups: list[tuple[list[str], int]], pre: Preprocess, cache: ShardedCache | None,
                 seed: int = 0, batch_size: int = 32, workers: int = 0, multi: bool = False):
        self.groups, self.multi = groups, multi
        self.last_width: int | None = None
        self.rows: list[list[np.ndarray | None]] = [[None] * len(paths) for paths, _ in groups]
        self.errors: list[dict[str, str]] = [{} for _ in groups]
        self.keys = [[self._key(p, self.errors[g]) for p in paths] for g, (paths, _) in enumerate(groups)]
        self.cache = cache
        self.todo: list[tuple[int, int]] = []  # (group, index) of the images to compute
        for g, (paths, aug_views) in enumerate(groups):
            for i, key in enumerate(self.keys[g]):
                if key is None:
                    continue
                got = self._cached(key, 1 + aug_views)
                if isinstance(got, str):
                    self.errors[g][paths[i]] = got
                elif got is None:
                    self.todo.append((g, i))
                else:
                    self.rows[g][i] = got
        self._batches = None
        if self.todo:
            self._batches = decode_batches(
                [groups[g][0][i] for g, i in self.todo], pre, [groups[g][1] for g, _ in self.todo], seed,
                [self.keys[g][i] for g, i in self.todo], batch_size, workers)

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

    def run(self, extractor: Extractor | Callable[[], Extractor], progress=None) -> list[FeatureSet]:
        """One `FeatureSet` per group. `extractor` may be a factory, called only if some features
        are not cached."""
        if progress is not None:
            progress.update(sum(len(p) for p, _ in self.groups) - len(self.todo))
        if self._batches is not None:
            if not isinstance(extractor, Extractor):
                extractor = extractor()
            views = sum(1 + self.groups[g][1] for g, _ in self.todo)
            extractor.freeze = extractor.freeze or views >= FREEZE_MIN_IMAGES
            if self.multi:
                if extractor.last_features is None:
                    raise RuntimeError("a multi-layer feature pass needs a multi-layer backbone")
                self.last_width = extractor.last_features
            batches, self._batches = self._batches, None
            for idx, feats, errs in extractor.run(batches, progress):
                for j, reason, cacheable in errs:
                    g, i = self.todo[j]
                    self.errors[g][self.groups[g][0][i]] = reason
                    if self.cache is not None and cacheable:  # not "permission denied": it may be fixed
                        self.cache.put_error(self.keys[g][i], reason)
                for j, f in zip(idx, feats):
                    g, i = self.todo[j]
                    self.rows[g][i] = f.numpy()
                    if self.cache is not None:
                        row, w = self.rows[g][i], self.last_width or self.rows[g][i].shape[-1]
                        for v in range(len(f)):
                            self.cache.put(self.keys[g][i], f"v{v}", row[v, :w])
                            if self.multi:
                                self.cache.put(self.keys[g][i], f"t{v}", row[v, w:])
            if self.cache is not None:
                self.cache.flush()
        todo = {g: sum(1 for t, _ in self.todo if t == g) for g in range(len(self.groups))}
        return [_feature_set(self.rows[g], 1 + aug_views, self.errors[g], todo[g], self.last_width)
                for g, (_, aug_views) in enumerate(self.groups)]


def _feature_set(rows: list[np.ndarray | None], views: int, errors: dict[str, str], computed: int,
                 last_width: int | None) -> FeatureSet:
    dim = next((r.shape[-1] for r in rows if r is not None), 0)
    full = np.zeros((len(rows), views, dim), dtype=np.float32)
    for i, r in enumerate(rows):
        if r is not None:
            full[i] = r
    t = torch.from_numpy(full)
    return FeatureSet(t[:, 0], t[:, 1:] if views > 1 else None, errors, len(rows) - computed, computed,
                      last_width or dim)
