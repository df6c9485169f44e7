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

from ..data.decode import normalized_array
from ..errors import UserError
from ..sessions import open_session
from ..sessions.metadata import META_KEY
from ..task import Task
from .base import BasePredictor

ONNX_ENGINES = ("auto", "onnxruntime", "onnx")  # what may run an exported .onnx file


def read_metadata(path: str | Path) -> dict:
    """The transferkit metadata of an exported ONNX model (classes, preprocessing, ...)."""
    session = open_session(path)
    return _metadata(session, path)


def _metadata(session, path) -> dict:
    """The model's transferkit metadata, checked (classes, preprocessing) like a bundle's."""
    from ..models.preprocess import MAX_SIZE, Preprocess

    raw = session.get_modelmeta().custom_metadata_map.get(META_KEY)
    if raw is None:
        raise UserError(f"{path} has no transferkit metadata: export it with `transferkit export RUN`")
    try:
        meta = json.loads(raw)
        classes, pre = meta["classes"], meta["preprocess"]
        Preprocess.from_dict({**pre, "crop_pct": pre["input_size"] / pre["resize_size"]})
        if not pre["input_size"] <= pre["resize_size"] <= 2 * MAX_SIZE:
            raise ValueError(f"resize_size {pre['resize_size']} must be between input_size and {2 * MAX_SIZE}")
        if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)):
            raise ValueError("classes must be a list of names")
        shapes = [o.shape for o in session.get_outputs()]
        if len(shapes) == 2 and meta.get("ood") is not None:  # logits and the out-of-distribution score
            shapes = shapes[:1]
        width = shapes[0][-1] if len(shapes) == 1 and len(shapes[0]) == 2 else None
        if not isinstance(width, int) or width != len(classes):  # a symbolic or missing width cannot be trusted
            raise ValueError(f"it names {len(classes)} classes, but the model's output is {shapes}: "
                             f"one (batch, {len(classes)}) output expected")
        Task.from_dict(meta.get("task"), len(classes))
        inputs = [i.shape for i in session.get_inputs()]
        if len(inputs) != 1 or len(inputs[0]) != 4 or inputs[0][1] != 3:
            raise ValueError(f"the model's input is {inputs}: one (batch, 3, height, width) input expected")
    except (ValueError, KeyError, TypeError, ZeroDivisionError, UserError) as exc:
        raise UserError(f"{path}: its transferkit metadata is damaged ({exc})") from None
    return meta


class OnnxPredictor(BasePredictor):
    """An exported model (fp32 or INT8 ONNX, or an OpenVINO IR) ready to predict images,
    torch-free. `session`: one already open (a cached conversion of `path`'s run, or an IR on
    OpenVINO: `sessions.openvino.OvSession`, ONNX Runtime's interface), else `path` opened on
    ONNX Runtime."""

    channels_last = False
    input_dtype = "float32"
    kind = "onnx"  # or "openvino" (`exported.open_exported`)

    def __init__(self, path: str | Path, batch_size: int = 32, workers: int = 0, tta: str = "none",
                 threads: int = 0, session=None):
        super().__init__(batch_size, workers, tta)
        self.path = Path(path).expanduser()
        self.session = session if session is not None else open_session(self.path, threads)
        self.meta = _metadata(self.session, self.path)
        self.classes: list[str] = self.meta["classes"]
        self.task = Task.from_dict(self.meta.get("task"), len(self.classes))  # (checked by _metadata)
        self.pre: dict = self.meta["preprocess"]
        self.input = self.session.get_inputs()[0].name
        # an export of a model with an out-of-distribution score computes it in its graph (a second output)
        self.scores_ood = len(self.session.get_outputs()) == 2 and self.meta.get("ood") is not None
        self.ood_record = self.meta.get("ood") if self.scores_ood else None

    def prepare(self, source, name: str | None = None, whole: bool = False) -> np.ndarray:
        p = self.pre
        return normalized_array(source, p["input_size"] if whole else p["resize_size"], p["input_size"],
                                p["interpolation"], p["mean"], p["std"], name)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.forward(batch)[0]

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        out = self.session.run(None, {self.input: batch})
        return out[0], (out[1].reshape(-1) if self.scores_ood else None)
