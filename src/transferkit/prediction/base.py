"""What every predictor does: images in (paths, bytes or PIL images), logits and predictions
out, in batches, decoding on threads it keeps between calls. No torch here."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..config import TTA
from ..data.decode import source_name
from ..errors import ImageDecodeError, UserError
from ..task import Task
from .outputs import Prediction, top_predictions


def as_list(images) -> list:
    """The images a predictor is given: one image (a path, bytes, a PIL image) is a list of one,
    never a sequence of its characters or bytes; anything else must be a list of those."""
    from PIL import Image

    if isinstance(images, (str, Path, bytes, bytearray, memoryview, Image.Image)):
        return [images]
    if isinstance(images, dict) or not hasattr(images, "__iter__"):
        raise UserError(f"images must be a list of paths, bytes or PIL images, not {type(images).__name__}")
    return list(images)


class BasePredictor:
    """A model ready to predict. Subclasses say how an image becomes an input (`prepare`) and
    how a batch of inputs becomes logits (`run`).

    `workers` threads decode images (Pillow releases the GIL while decoding and resizing); they
    are started on first use and kept until `close()` (or the end of a `with` block), so repeated
    calls, as a server makes, pay for them once."""

    classes: list[str]
    task: Task = Task()  # single-label (softmax) or multi-label (a sigmoid per class, its thresholds)
    channels_last: bool = True  # the layout `prepare` returns: (H, W, C), else (C, H, W)
    input_dtype: str = "uint8"  # what `prepare` returns: uint8 pixels, or "float32" normalized
    # the out-of-distribution score's record (`ood.Ood.to_dict`: its threshold), None for a model
    # without one; `reject` ("auto", "off" or a score) and `unknown_label` decide what is unknown
    ood_record: dict | None = None
    reject: str | float = "auto"
    unknown_label: str | None = None

    def __init__(self, batch_size: int = 32, workers: int = 0, tta: str = "none"):
        if tta not in TTA:
            raise ValueError(f"tta must be one of {', '.join(TTA)}")
        self.batch_size, self.workers, self.tta = batch_size, workers, tta
        self._pool: ThreadPoolExecutor | None = None

    def set_reject(self, reject: str | float | None = "auto", unknown_label: str | None = None) -> None:
        """--reject and --unknown-label (`ood.parse_reject`); a `UserError` for a bad value."""
        from ..ood import parse_reject

        try:
            self.reject = parse_reject(reject)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if unknown_label is not None and not str(unknown_label).strip():
            raise UserError("--unknown-label must be a name")
        if self.ood_record is None and (isinstance(self.reject, float) or unknown_label is not None):
            raise UserError("this model has no out-of-distribution score (a run trained before transferkit had one, "
                            "or an export of it): --reject and --unknown-label need one; retrain (or re-export) it")
        self.unknown_label = unknown_label

    @property
    def threshold(self) -> float | None:
        """The OOD score above which a prediction is unknown (None: nothing is rejected)."""
        from ..ood import threshold_for

        return threshold_for(self.ood_record, self.reject)

    def prepare(self, source, name: str | None = None, whole: bool = False) -> np.ndarray:
        """One image -> one model input (`whole`: its short side resized to the input size, so
        no margin is cropped off); raises `ImageDecodeError`."""
        raise NotImplementedError

    def views(self, source, name: str | None = None) -> np.ndarray:
        """The stacked inputs of one image: its evaluation view, and with test-time augmentation
        its mirror image ("flip"), plus the view without the crop margin and its mirror
        ("flip-crops")."""
        first = self.prepare(source, name)
        if self.tta == "none":
            return first[None]
        out = [first]
        if self.tta == "flip-crops":
            out.append(self.prepare(source, name, whole=True))
        axis = 1 if self.channels_last else 2
        return np.stack(out + [np.ascontiguousarray(np.flip(v, axis)) for v in out])

    def run(self, batch: np.ndarray) -> np.ndarray:
        """A stacked batch of inputs -> logits (B, C) as float32."""
        raise NotImplementedError

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """A stacked batch -> logits (B, C) and out-of-distribution scores (B,), or None where the
        model has none."""
        return self.run(batch), None

    can_explain = False  # whether `forward_maps` gives spatial maps (a run folder's model; not an exported one)

    def sizes(self) -> tuple[int, int]:
        """(resize_size, input_size) of the evaluation view: where a heatmap lies on the image."""
        raise NotImplementedError

    def forward_maps(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Evaluation views (B, ...) -> logits (B, C), OOD scores (B,) or None, and each image's
        map (B, h, w) of where its most probable class comes from (`models.maps`); a `UserError`
        for a model without spatial maps."""
        raise UserError("this model has no spatial maps to explain (an exported or converted ONNX model gives only "
                        "its outputs): explain with the run folder")

    def explain(self, images: list, names: list[str] | None = None, progress=None):
        """As `scored`, from the evaluation view alone (no test-time augmentation), with each
        image's class activation map (h, w) of its most probable class (None for an unusable
        image): (logits, ood or None, maps, errors)."""
        return self._view_pass(images, names, progress, "explain", self.forward_maps)

    def _view_pass(self, images: list, names: list[str] | None, progress, desc: str, forward):
        """The evaluation view of each image through `forward` (a stacked batch -> logits, OOD
        scores or None, and a row of something per image or None): (logits, ood or None, each
        image's row or None, errors)."""
        images = as_list(images)
        out = np.full((len(images), len(self.classes)), np.nan, dtype=np.float32)
        ood = np.full(len(images), np.nan, dtype=np.float32)
        extra: list[np.ndarray | None] = [None] * len(images)
        scored, errors = False, {}
        for ok, rows, bad in self._batches(images, names, self._view, progress, desc):
            errors.update(bad)
            if ok:
                logits, scores, per_image = forward(np.stack(rows))
                out[ok] = logits
                if per_image is not None:
                    for j, i in enumerate(ok):
                        extra[i] = per_image[j]
                if scores is not None:
                    ood[ok], scored = scores, True
        return out, (ood if scored or self.ood_record is not None else None), extra, errors

    def _batches(self, images: list, names: list[str] | None, prepare, progress, desc: str):
        """Per batch of `images`, decoded on the predictor's threads by `prepare` ((image, name) ->
        an input, or the reason it cannot be used): (indices of the usable ones, their inputs,
        {index: reason} of the others). `progress`: (total, desc) -> a bar, updated per batch."""
        names = names or [source_name(x, f"<image {i}>") for i, x in enumerate(images)]
        bar = progress(len(images), desc) if progress else None
        if self.workers and self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="transferkit-decode")
        for start in range(0, len(images), self.batch_size):
            items = list(zip(images[start:start + self.batch_size], names[start:start + self.batch_size]))
            prepared = list(self._pool.map(prepare, items) if self._pool else map(prepare, items))
            yield ([start + j for j, p in enumerate(prepared) if not isinstance(p, str)],
                   [p for p in prepared if not isinstance(p, str)],
                   {start + j: p for j, p in enumerate(prepared) if isinstance(p, str)})
            if bar is not None:
                bar.update(len(items))
        if bar is not None:
            bar.close()

    def usable_views(self, source, name: str | None = None) -> np.ndarray | str:
        """`views(source, name)`, or the reason the image cannot be used."""
        try:
            return self.views(source, name)
        except ImageDecodeError as exc:
            return exc.reason

    def _view(self, item: tuple[object, str]) -> np.ndarray | str:
        """The evaluation view of (image, name), or the reason it cannot be used."""
        try:
            return self.prepare(*item)
        except ImageDecodeError as exc:
            return exc.reason

    def _prepared(self, item: tuple[object, str]) -> np.ndarray | str:
        return self.usable_views(*item)

    def logits(self, images: list, names: list[str] | None = None, progress=None) -> tuple[np.ndarray, dict[int, str]]:
        """Logits (N, C) of `images` (paths, bytes or PIL images; rows of unusable images are NaN)
        and {index: reason} for those. `progress`: (total, desc) -> a bar, updated per batch."""
        logits, _, errors = self.scored(images, names, progress)
        return logits, errors

    def scored(self, images: list, names: list[str] | None = None,
               progress=None) -> tuple[np.ndarray, np.ndarray | None, dict[int, str]]:
        """As `logits`, with each image's out-of-distribution score (N,) (of its evaluation view;
        NaN for an unusable image), or None for a model without one."""
        images = as_list(images)
        out = np.full((len(images), len(self.classes)), np.nan, dtype=np.float32)
        ood = np.full(len(images), np.nan, dtype=np.float32)
        scored = False
        errors: dict[int, str] = {}
        for ok, rows, bad in self._batches(images, names, self._prepared, progress, "predict"):
            errors.update(bad)
            if ok:
                logits, scores = self.forward(np.concatenate(rows))
                out[ok] = self.task.mean_of_views(logits.reshape(len(ok), -1, len(self.classes)))
                if scores is not None:  # (the evaluation view's: the first of each image's views)
                    ood[ok], scored = np.asarray(scores, np.float32).reshape(len(ok), -1)[:, 0], True
        return out, (ood if scored or self.ood_record is not None else None), errors

    def forward_embedded(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """As `forward`, with each image's features (B, D) where the model exposes them (a head on a
        frozen backbone's features: the last layer's), else None."""
        return (*self.forward(batch), None)

    def embedded(self, images: list, names: list[str] | None = None, progress=None):
        """As `scored`, from the evaluation view alone, with each image's features where the model
        exposes them (`forward_embedded`; NaN rows for unusable images): (logits, ood or None,
        features or None, errors)."""
        logits, ood, rows, errors = self._view_pass(images, names, progress, "score", self.forward_embedded)
        width = next((len(r) for r in rows if r is not None), None)
        features = None if width is None else np.stack(
            [r if r is not None else np.full(width, np.nan, np.float32) for r in rows]).astype(np.float32)
        return logits, ood, features, errors

    def predict(self, images: list, top_k: int = 1, names: list[str] | None = None,
                progress=None) -> list[Prediction]:
        """Predict each image (a path, the file's bytes or a PIL image); an unusable one gives a
        `Prediction` with `error` set. `names` label them in the results (default: the paths).

        Example: ``transferkit.load("runs/x").predict(["a.jpg"])[0].label``; one image alone
        (``predict("a.jpg")``) is taken as a list of one."""
        images = [str(x) if isinstance(x, Path) else x for x in as_list(images)]
        names = names or [source_name(x, f"<image {i}>") for i, x in enumerate(images)]
        logits, ood, errors = self.scored(images, names, progress)
        return top_predictions(names, self.task.probabilities(logits), errors, self.classes, top_k, self.task,
                               ood, self.threshold, self.unknown_label)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
