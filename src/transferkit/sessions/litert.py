"""The LiteRT (TensorFlow Lite) interpreter for an exported .tflite model (`export --formats tflite`,
`tflite-int8`), behind ONNX Runtime's session interface (as `openvino.OvSession`), so `predict`,
`serve` and the export's gate run it as they run a model.onnx. Not an engine for run folders. No
torch here.

A flatbuffer is converted for one image at a time: a batch is run image by image. An INT8 model's
inputs and outputs are quantized and dequantized with the scale and zero point it reports.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np

from ..errors import MissingExtra, UserError, first_line
from .metadata import META_KEY
from ..machine import session_threads
from .openvino import ModelMeta, Port

EXTRA = "tflite"


def require() -> None:
    import importlib.util

    if importlib.util.find_spec("ai_edge_litert") is None:
        raise MissingExtra(f"running a .tflite model needs LiteRT: pip install 'transferkit[{EXTRA}]'")


def read_metadata(path: str | Path) -> dict | None:
    """The transferkit metadata a .tflite file carries (None where it has none)."""
    require()
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(Path(path).read_bytes()))
    for entry in model.metadata or []:
        if _name(entry) == META_KEY:
            return json.loads(bytes(np.asarray(model.buffers[entry.buffer].data, dtype=np.uint8)).decode())
    return None


def write_metadata(path: Path, meta: dict) -> None:
    """`meta` (JSON) in the flatbuffer's metadata table under META_KEY (replacing one there)."""
    require()
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = META_KEY, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _name(m) != META_KEY] + [entry]
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))


def _name(entry) -> str:
    return entry.name.decode() if isinstance(entry.name, bytes) else str(entry.name)


class LiteRtSession:
    """A .tflite model on the LiteRT interpreter, used as an ONNX Runtime session is; `threads`
    as ONNX Runtime's (0: one per core this process may use, or OMP_NUM_THREADS)."""

    def __init__(self, path: str | Path, threads: int = 0):
        require()
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise UserError(f"not found: {self.path}")
        try:
            with quiet_native():  # (the interpreter announces its CPU delegate on stderr)
                self.interpreter = Interpreter(model_path=str(self.path), num_threads=session_threads(threads))
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise UserError(f"{self.path}: LiteRT cannot run it ({first_line(exc, 200)})") from None
        self.inputs = self.interpreter.get_input_details()
        self.outputs = self.interpreter.get_output_details()

    def run(self, names, feeds: dict) -> list[np.ndarray]:
        """The outputs for `feeds` ({input name: a batch}), image by image."""
        (x,) = feeds.values()
        inp = self.inputs[0]
        rows: list[list[np.ndarray]] = [[] for _ in self.outputs]
        for row in np.asarray(x):
            self.interpreter.set_tensor(inp["index"], _quantized(row[None], inp))
            self.interpreter.invoke()
            for k, out in enumerate(self.outputs):
                rows[k].append(_dequantized(self.interpreter.get_tensor(out["index"]), out))
        return [np.concatenate(r) for r in rows]

    def get_inputs(self) -> list[Port]:
        return [Port(d["name"], ["?", *map(int, d["shape"][1:])]) for d in self.inputs]

    def get_outputs(self) -> list[Port]:
        return [Port(d["name"], ["?", *map(int, d["shape"][1:])]) for d in self.outputs]

    def get_modelmeta(self) -> ModelMeta:
        meta = read_metadata(self.path)
        return ModelMeta({} if meta is None else {META_KEY: json.dumps(meta)})


@contextlib.contextmanager
def quiet_native():
    """Native code's writes to stderr (file descriptor 2) dropped while it runs."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _quantized(x: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail.get("quantization", (0.0, 0))
    if detail["dtype"] == np.float32 or not scale:
        return x.astype(detail["dtype"], copy=False)
    info = np.iinfo(detail["dtype"])
    return np.clip(np.rint(x / scale + zero), info.min, info.max).astype(detail["dtype"])


def _dequantized(y: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail.get("quantization", (0.0, 0))
    if detail["dtype"] == np.float32 or not scale:
        return y.astype(np.float32, copy=False)
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)
