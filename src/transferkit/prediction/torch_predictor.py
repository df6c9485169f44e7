"""Predicting with a trained bundle in PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.decode import eval_array
from ..models import bundle
from ..models.classifier import Classifier
from ..engines.cpu import default_workers
from ..runtime import Extractor, Runtime
from .base import BasePredictor


class Predictor(BasePredictor):
    """A trained classifier ready to predict. Build it with `transferkit.load(run_dir)`; its
    backbone runs on the fast inference path (BatchNorm folded, channels_last, bf16 where the CPU
    has it), the same as training's feature extraction."""

    def __init__(self, model: Classifier, meta: bundle.BundleMeta, run_dir: Path | None = None,
                 device: str = "auto", precision: str = "auto", batch_size: int = 32, workers: int | None = None,
                 tta: str = "none"):
        super().__init__(batch_size, default_workers() if workers is None else workers, tta)
        self.model, self.meta, self.run_dir = model.eval(), meta, run_dir
        self.classes, self.task = meta.classes, meta.task
        self.runtime = Runtime.create(device, precision)
        self.extractor = Extractor(model.backbone, meta.preprocess, self.runtime, batch_size)

    def prepare(self, source, name: str | None = None, whole: bool = False) -> np.ndarray:
        p = self.meta.preprocess
        return eval_array(source, p.input_size if whole else p.resize_size, p.input_size, p.interpolation, name)

    @torch.inference_mode()
    def run(self, batch: np.ndarray) -> np.ndarray:
        if not batch.flags.writeable:  # one image's view as decoded: torch wants memory it may write
            batch = batch.copy()
        u8 = torch.from_numpy(batch).permute(0, 3, 1, 2)
        return self.model.head(self.extractor.forward(u8)).float().numpy()
