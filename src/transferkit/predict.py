"""Predicting with a trained bundle: files or folders in, labels and probabilities out."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import bundle
from .data import list_files
from .errors import UserError
from .features import Extractor
from .model import Classifier
from .runtime import Runtime, default_workers


@dataclass
class Prediction:
    path: str
    label: str | None  # None when the file could not be read
    probability: float | None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str = ""


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
            if feats is not None:
                out[idx] = self.model.head(feats[:, 0])
            errors.update(dict(errs))
        return out, errors

    def predict(self, paths: list[str | Path], top_k: int = 1) -> list[Prediction]:
        """Predict each image file; unreadable files give a `Prediction` with `error` set.

        Example: ``transferkit.load("runs/x").predict(["a.jpg"])[0].label``"""
        files = [str(p) for p in paths]
        logits, errors = self.logits(files)
        probs = torch.softmax(logits, dim=1)
        k = max(1, min(top_k, len(self.classes)))
        out = []
        for i, path in enumerate(files):
            if i in errors:
                out.append(Prediction(path, None, None, [], errors[i]))
                continue
            p, c = probs[i].topk(k)
            top = [(self.classes[j], float(q)) for q, j in zip(p.tolist(), c.tolist())]
            out.append(Prediction(path, top[0][0], top[0][1], top))
        return out


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files as given, folders walked recursively (hidden files skipped); missing paths are errors."""
    files: list[str] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            files += list_files(p)
        elif p.is_file():
            files.append(str(p))
        else:
            raise UserError(f"not found: {item}")
    return files


def to_csv(preds: list[Prediction], top_k: int) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    header = ["path", "label", "probability"]
    for k in range(1, top_k + 1):
        header += [f"top{k}_label", f"top{k}_probability"]
    w.writerow(header + ["error"])
    for p in preds:
        row = [p.path, p.label or "", "" if p.probability is None else f"{p.probability:.6f}"]
        for k in range(top_k):
            row += [p.top_k[k][0], f"{p.top_k[k][1]:.6f}"] if k < len(p.top_k) else ["", ""]
        w.writerow(row + [p.error])
    return buf.getvalue()


def to_json(preds: list[Prediction]) -> str:
    rows = [
        {"path": p.path, "label": p.label, "probability": p.probability,
         "top_k": [{"label": lab, "probability": q} for lab, q in p.top_k], "error": p.error or None}
        for p in preds
    ]
    return json.dumps(rows, indent=2) + "\n"
