"""Prediction from an exported model with ONNX Runtime alone: no torch needed.

The model's metadata (written by `transferkit export`) says how to prepare an image: resize the
short side to `resize_size` with `interpolation`, center crop `input_size`, scale to [0, 1],
subtract `mean` and divide by `std` per RGB channel, NCHW float32. This module applies exactly
that with Pillow and NumPy, the same code the PyTorch path uses for its evaluation view.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import ImageDecodeError, UserError
from .images import normalized_array
from .prediction import Prediction, top_predictions

META_KEY = "transferkit"  # the ONNX metadata_props key holding the JSON below


def read_metadata(path: str | Path) -> dict:
    """The transferkit metadata of an exported ONNX model (classes, preprocessing, ...)."""
    session = open_session(path)
    return _metadata(session, path)


def open_session(path: str | Path):
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("predicting from an ONNX model needs onnxruntime: pip install onnxruntime") from None
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"not found: {path}")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise UserError(f"{path} is not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from None


def _metadata(session, path) -> dict:
    raw = session.get_modelmeta().custom_metadata_map.get(META_KEY)
    if raw is None:
        raise UserError(f"{path} has no transferkit metadata: export it with `transferkit export RUN`")
    return json.loads(raw)


class OnnxPredictor:
    """An exported model (fp32 or INT8 ONNX) ready to predict image files, torch-free."""

    def __init__(self, path: str | Path, batch_size: int = 32):
        self.path = Path(path).expanduser()
        self.session = open_session(self.path)
        self.meta = _metadata(self.session, self.path)
        self.classes: list[str] = self.meta["classes"]
        self.pre: dict = self.meta["preprocess"]
        self.input = self.session.get_inputs()[0].name
        self.batch_size = batch_size

    def prepare(self, path: str) -> np.ndarray:
        p = self.pre
        return normalized_array(path, p["resize_size"], p["input_size"], p["interpolation"], p["mean"], p["std"])

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: batch})[0]

    def logits(self, paths: list[str]) -> tuple[np.ndarray, dict[int, str]]:
        """Logits (N, C) (rows of unreadable files are NaN) and {index: reason}."""
        out = np.full((len(paths), len(self.classes)), np.nan, dtype=np.float32)
        errors: dict[int, str] = {}
        for start in range(0, len(paths), self.batch_size):
            idx, arrays = [], []
            for i in range(start, min(start + self.batch_size, len(paths))):
                try:
                    arrays.append(self.prepare(paths[i]))
                    idx.append(i)
                except ImageDecodeError as exc:
                    errors[i] = exc.reason
            if arrays:
                out[idx] = self.run(np.stack(arrays))
        return out, errors

    def predict(self, paths: list[str | Path], top_k: int = 1) -> list[Prediction]:
        files = [str(p) for p in paths]
        logits, errors = self.logits(files)
        z = logits - logits.max(1, keepdims=True)  # rows of unreadable files stay NaN
        probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        return top_predictions(files, probs, errors, self.classes, top_k)
