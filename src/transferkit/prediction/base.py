"""What every predictor does: images in (paths, bytes or PIL images), logits and predictions
out, in batches, decoding on threads it keeps between calls. No torch here."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..data.decode import source_name
from ..errors import ImageDecodeError
from .outputs import Prediction, top_predictions


class BasePredictor:
    """A model ready to predict. Subclasses say how an image becomes an input (`prepare`) and
    how a batch of inputs becomes logits (`run`).

    `workers` threads decode images (Pillow releases the GIL while decoding and resizing); they
    are started on first use and kept until `close()` (or the end of a `with` block), so repeated
    calls, as a server makes, pay for them once."""

    classes: list[str]

    def __init__(self, batch_size: int = 32, workers: int = 0):
        self.batch_size, self.workers = batch_size, workers
        self._pool: ThreadPoolExecutor | None = None

    def prepare(self, source, name: str | None = None) -> np.ndarray:
        """One image -> one model input; raises `ImageDecodeError`."""
        raise NotImplementedError

    def run(self, batch: np.ndarray) -> np.ndarray:
        """A stacked batch of inputs -> logits (B, C) as float32."""
        raise NotImplementedError

    def _prepared(self, item: tuple[object, str]) -> np.ndarray | str:
        try:
            return self.prepare(*item)
        except ImageDecodeError as exc:
            return exc.reason

    def logits(self, images: list, names: list[str] | None = None, progress=None) -> tuple[np.ndarray, dict[int, str]]:
        """Logits (N, C) of `images` (paths, bytes or PIL images; rows of unusable images are NaN)
        and {index: reason} for those. `progress`: (total, desc) -> a bar, updated per batch."""
        bar = progress(len(images), "predict") if progress else None
        names = names or [source_name(x, f"<image {i}>") for i, x in enumerate(images)]
        out = np.full((len(images), len(self.classes)), np.nan, dtype=np.float32)
        errors: dict[int, str] = {}
        if self.workers and self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="transferkit-decode")
        for start in range(0, len(images), self.batch_size):
            items = list(zip(images[start:start + self.batch_size], names[start:start + self.batch_size]))
            prepared = list(self._pool.map(self._prepared, items) if self._pool else map(self._prepared, items))
            ok = [start + j for j, p in enumerate(prepared) if not isinstance(p, str)]
            errors.update({start + j: p for j, p in enumerate(prepared) if isinstance(p, str)})
            if ok:
                out[ok] = self.run(np.stack([prepared[i - start] for i in ok]))
            if bar is not None:
                bar.update(len(items))
        if bar is not None:
            bar.close()
        return out, errors

    def predict(self, images: list, top_k: int = 1, names: list[str] | None = None,
                progress=None) -> list[Prediction]:
        """Predict each image (a path, the file's bytes or a PIL image); an unusable one gives a
        `Prediction` with `error` set. `names` label them in the results (default: the paths).

        Example: ``transferkit.load("runs/x").predict(["a.jpg"])[0].label``"""
        images = [str(x) if isinstance(x, Path) else x for x in images]
        names = names or [source_name(x, f"<image {i}>") for i, x in enumerate(images)]
        logits, errors = self.logits(images, names, progress)
        z = logits - logits.max(1, keepdims=True)  # rows of unreadable images stay NaN
        probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        return top_predictions(names, probs, errors, self.classes, top_k)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
