"""Predicting with a trained bundle in PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.decode import eval_array
from ..models import bundle
from ..models.classifier import Classifier
from ..machine import default_workers
from ..errors import UserError
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
        self.ood = bundle.read_ood(meta, run_dir) if run_dir is not None else None
        self.ood_record = meta.ood if self.ood is not None else None

    can_explain = True

    def sizes(self) -> tuple[int, int]:
        return self.meta.preprocess.resize_size, self.meta.preprocess.input_size

    def forward_maps(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """On the same fast module as `forward` (`runtime.Extractor`): its spatial maps give exact
        class activation maps where its features are their means, Grad-CAM's elsewhere."""
        from ..models.maps import WithMaps, grad_cam
        from .heatmaps import class_maps

        if getattr(self, "_maps", None) is None:
            self._maps = WithMaps(self.extractor.module, self.meta.preprocess.input_size,
                                  getattr(self.model.backbone, "taps", None))
            if not self._maps.names:
                raise UserError(f"{self.meta.backbone} has no spatial maps to explain")
        x = self.runtime.to_input(torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2),
                                  self.extractor.mean, self.extractor.std, self.runtime.dtype)
        with torch.inference_mode():
            features, *maps = self._maps(x)
            features = features.float()
            logits = self.model.head(features).float()
        top = logits.argmax(1)
        if self._maps.exact:
            cams = class_maps([m.float().numpy() for m in maps], self.model.head.weight.detach().float().numpy(),
                              top.numpy())
        else:
            cams = grad_cam(self.model, self._maps, x, top).numpy()
        ood = self.ood.scores(features.numpy()) if self.ood is not None else None
        return logits.numpy(), ood, cams

    def prepare(self, source, name: str | None = None, whole: bool = False) -> np.ndarray:
        p = self.meta.preprocess
        return eval_array(source, p.input_size if whole else p.resize_size, p.input_size, p.interpolation, name)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.forward(batch)[0]

    @torch.inference_mode()
    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if not batch.flags.writeable:  # one image's view as decoded: torch wants memory it may write
            batch = batch.copy()
        u8 = torch.from_numpy(batch).permute(0, 3, 1, 2)
        features = self.extractor.forward(u8)
        logits = self.model.head(features).float().numpy()
        return logits, (self.ood.scores(features.float().numpy()) if self.ood is not None else None)
