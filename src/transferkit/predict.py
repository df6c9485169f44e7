"""Predicting with a trained bundle: files or folders in, labels and probabilities out."""

from __future__ import annotations

from pathlib import Path

import torch

from . import bundle
from .features import Extractor
from .model import Classifier
from .prediction import Prediction, expand_inputs, to_csv, to_json, top_predictions  # noqa: F401 (re-exported)
from .runtime import Runtime, default_workers


class Predictor:
    """A trained classifier ready to predict. Build it with `transferkit.load(run_dir)`."""

    def __init__(self, model: Classifier, meta: bundle.BundleMeta, run_dir: Path | None = None,
                 device: str = "auto", precision: str = "auto", batch_size: int = 32):
        self.model, self.meta, self.run_dir = model.eval(), meta, run_dir
        self.classes = meta.classes
        self.runtime = Runtime.create(device, precision)
        self.extractor = Extractor(model.backbone, meta.preprocess, self.runtime, batch_size, default_workers())

    @torch.inference_mode()
    def logits(self, paths: list[str], progress=None) -> tuple[torch.Tensor, dict[int, str]]:
        """Logits (N, C) for `paths` (rows of unreadable files are NaN) and {index: reason}."""
        out = torch.full((len(paths), len(self.classes)), float("nan"))
        errors: dict[int, str] = {}
        for idx, feats, errs in self.extractor.iter_batches(paths, progress=progress):
            if idx:
                out[idx] = self.model.head(torch.stack([f[0] for f in feats]))
            errors.update(dict(errs))
        return out, errors

    def predict(self, paths: list[str | Path], top_k: int = 1) -> list[Prediction]:
        """Predict each image file; unreadable files give a `Prediction` with `error` set.

        Example: ``transferkit.load("runs/x").predict(["a.jpg"])[0].label``"""
        files = [str(p) for p in paths]
        logits, errors = self.logits(files)
        return top_predictions(files, torch.softmax(logits, dim=1).numpy(), errors, self.classes, top_k)
