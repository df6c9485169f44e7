"""openvino: an OpenVINO IR folder (model.xml, model.bin: fp32 weights), converted from the fp32
ONNX model with its transferkit metadata in the IR's runtime info; checked on the run's validation
images with OpenVINO in fp32, and run by `predict`/`serve` as a model.onnx is. Needs the openvino
extra (`pip install 'transferkit[openvino]'`), checked before any work."""

from __future__ import annotations

from pathlib import Path

from ..registry import ExportFormat, register
from .onnx_fp32 import runner


def check() -> None:
    from ...sessions.openvino import require

    require()


def build(job, path: Path) -> str:
    from ...sessions.openvino import save_ir

    save_ir(job.built["onnx"], path, job.meta)
    return "model.xml + model.bin (fp32), from model.onnx; OpenVINO's CPU plugin run in f32"


register(ExportFormat(name="openvino", file="openvino_model", order=4, build=build, runner=runner, needs=("onnx",),
                      in_all=False, check=check,
                      summary="OpenVINO IR folder (fp32, metadata inside): predict and serve run it on OpenVINO"))
