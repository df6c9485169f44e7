"""Exported models as predictors, and the one place that tells an exported model from a run folder
(predict, suggest and serve ask it). No torch.

- an ONNX file (`model.onnx`, `model.int8.onnx`): ONNX Runtime;
- an OpenVINO IR (`export --formats openvino`: its folder, or its model.xml): OpenVINO, in fp32;
- a LiteRT flatbuffer (`export --formats tflite` or `tflite-int8`: model.tflite): the LiteRT
  interpreter.

Each carries transferkit's metadata (classes, preprocessing, task, the unknown score where the
format computes it): the same `OnnxPredictor` runs them all, OpenVINO and LiteRT behind ONNX
Runtime's session interface (`sessions`). An exported model runs on its own runtime only: an
option asking for another engine or precision is refused in one line, never silently ignored.
"""

from __future__ import annotations

from pathlib import Path

from .. import sessions
from ..errors import UserError
from .onnx_predictor import ONNX_ENGINES, OnnxPredictor

RUNTIMES = {"onnx": "onnxruntime", "openvino": "openvino", "tflite": "litert"}  # an exported model's kind -> its runtime
SHOWN = {"onnx": ("ONNX", "ONNX Runtime"), "openvino": ("OpenVINO", "OpenVINO"),
         "tflite": ("LiteRT", "the LiteRT interpreter")}  # (the kind, its runtime) in the user's words


def exported_kind(path: str | Path) -> str | None:
    """"onnx", "openvino" or "tflite" where `path` names an exported model, None for anything else
    (a run folder, or a path that is not there: its reader says so)."""
    if str(path).endswith(".onnx"):
        return "onnx"
    if str(path).endswith(".tflite"):
        return "tflite"
    from ..sessions.openvino import ir_file

    return "openvino" if ir_file(path) is not None else None


def check_options(path: str | Path, engine: str = "auto", precision: str = "auto") -> str:
    """The kind of the exported model at `path` (`exported_kind`), checked against the options:
    one line where --engine or --precision asks for what its runtime does not do."""
    kind = exported_kind(path)
    if kind is None:
        raise UserError(f"{path} is not an exported model (model.onnx, model.tflite, or an OpenVINO IR's folder or "
                        "model.xml)")
    allowed = ONNX_ENGINES if kind == "onnx" else ("auto", RUNTIMES[kind])
    if engine not in allowed:
        raise UserError(f"--engine {engine} runs a run folder's model; {path} is an exported {SHOWN[kind][0]} model, "
                        f"which runs on {SHOWN[kind][1]} (--engine {' or '.join(allowed[:2])})")
    if precision not in ("auto", "fp32"):
        raise UserError(f"--precision {precision} applies to a run folder's model; {path} is an exported "
                        f"{SHOWN[kind][0]} model, which runs in {'its own precision' if kind == 'tflite' else 'fp32'}")
    return kind


def open_session(path: str | Path, kind: str | None = None, threads: int = 0):
    """A session (ONNX Runtime's interface) of the exported model at `path` on its runtime."""
    kind = kind or exported_kind(path)
    if kind == "openvino":
        from ..sessions.openvino import ir_file

        path = ir_file(path)
    return sessions.open_session(path, threads, RUNTIMES.get(kind, "onnxruntime"))


def open_exported(path: str | Path, engine: str = "auto", precision: str = "auto", tta: str = "none",
                  threads: int = 0, batch_size: int = 32) -> OnnxPredictor:
    """A predictor of the exported model at `path` on its runtime, its options checked first."""
    kind = check_options(path, engine, precision)
    if kind == "openvino":  # (named by its folder: export.json lies beside it)
        from ..sessions.openvino import ir_file

        path = ir_file(path).parent
    predictor = OnnxPredictor(path, batch_size=batch_size, tta=tta, session=open_session(path, kind, threads))
    predictor.kind = kind
    return predictor
