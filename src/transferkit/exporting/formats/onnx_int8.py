"""int8: ONNX Runtime static post-training quantization of the fp32 ONNX model (its
pre-processing step, then QDQ format, per-channel INT8 weights, UINT8 activations calibrated on
training images): the format Vitis AI and other NPU toolchains ingest. The head stays fp32."""

from __future__ import annotations

from pathlib import Path

from ...engines.int8 import quantize_qdq
from ..registry import ExportFormat, register
from .onnx_fp32 import runner, set_metadata


def _head(prepared: Path) -> list[str]:
    """The classifier head's nodes, which stay fp32: one small matrix, no measurable latency, and
    the layer where INT8 error lands directly on the logits (a head with very unequal weights,
    before heads.scale floored the feature scales: 52% top-1 agreement quantized, 96% fp32)."""
    import onnx

    return [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type in ("Gemm", "MatMul")]


def build(job, path: Path) -> str:
    calib = job.calibration()
    quantize_qdq(job.built["onnx"], path, calib, exclude=_head)
    set_metadata(path, job.meta)
    return f"{len(calib)} calibration images from the training split"


register(ExportFormat(name="int8", file="model.int8.onnx", order=2, build=build, runner=runner, needs=("onnx",),
                      summary="INT8 ONNX (static quantization, QDQ, calibrated on --calib training images)"))
