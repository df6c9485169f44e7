"""int8: ONNX Runtime static post-training quantization of the fp32 ONNX model (its
pre-processing step, then QDQ format, per-channel INT8 weights, UINT8 activations calibrated on
training images): the format Vitis AI and other NPU toolchains ingest. The head stays fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..registry import ExportFormat, register
from .onnx_fp32 import runner, set_metadata


class _Calibration:
    """ONNX Runtime's CalibrationDataReader over preprocessed training images, in batches (MinMax
    calibration keeps running extremes: the batch size does not change the result)."""

    def __init__(self, x: np.ndarray, name: str, batch: int = 16):
        self.items = ({name: np.ascontiguousarray(x[i:i + batch])} for i in range(0, len(x), batch))

    def get_next(self):
        return next(self.items, None)


def build(job, path: Path) -> str:
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calib = job.calibration()
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(job.built["onnx"]), str(prepared), skip_symbolic_shape=True)
        # The classifier head stays fp32: one small matrix, no measurable latency, and the layer
        # where INT8 error lands directly on the logits (a head with very unequal weights, before
        # heads.scale floored the feature scales: 52% top-1 agreement quantized, 96% fp32).
        head = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type in ("Gemm", "MatMul")]
        quantize_static(str(prepared), str(path), _Calibration(calib, "input"), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=head)
    set_metadata(path, job.meta)
    return f"{len(calib)} calibration images from the training split"


register(ExportFormat(name="int8", file="model.int8.onnx", order=2, build=build, runner=runner, needs=("onnx",),
                      summary="INT8 ONNX (static quantization, QDQ, calibrated on --calib training images)"))
