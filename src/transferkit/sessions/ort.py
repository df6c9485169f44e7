"""ONNX Runtime sessions on the CPU, of a model file or its bytes. No torch here."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..machine import session_threads


def open_session(model: str | Path | bytes, threads: int = 0):
    """An ONNX Runtime CPU session of the model at `model` (a path, or the model's bytes);
    `threads`: its intra-op threads (0: as many as this process has cores, see below)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("predicting from an ONNX model needs onnxruntime: pip install onnxruntime") from None
    if not isinstance(model, bytes):
        model = Path(model).expanduser()
        if not model.is_file():
            raise UserError(f"not found: {model}")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    options.intra_op_num_threads = session_threads(threads)
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        what = "the model" if isinstance(model, bytes) else model
        raise UserError(f"{what} is not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from None
