"""Sessions of an exported or converted model on the CPU, with ONNX Runtime's interface (`run`,
`get_inputs`, `get_outputs`, `get_modelmeta`), whichever runtime runs it: ONNX Runtime (`ort`),
OpenVINO (`openvino`) or the LiteRT interpreter (`litert`); and transferkit's metadata in them
(`metadata`). The bottom layer for the engines and the predictors: it imports neither, nor torch.
"""

from __future__ import annotations

from pathlib import Path

RUNTIMES = ("onnxruntime", "openvino", "litert")


def open_session(model: str | Path | bytes, threads: int = 0, runtime: str = "onnxruntime"):
    """A CPU session of `model` (a path, or an ONNX model's bytes) on `runtime`; `threads`: its
    intra-op threads (0: one per core this process may use). Raises `UserError` where the file is
    missing or the runtime cannot load it, `MissingExtra` where the runtime is not installed."""
    if runtime == "openvino":
        from .openvino import OvSession

        return OvSession(model, threads)
    if runtime == "litert":
        from .litert import LiteRtSession

        return LiteRtSession(model, threads)
    if runtime != "onnxruntime":
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    from .ort import open_session as ort_session

    return ort_session(model, threads)
