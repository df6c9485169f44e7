"""onnx: fp32, opset 18, dynamic batch, weights inside the file; the class names and the
preprocessing in the model's metadata (what `transferkit predict model.onnx` reads)."""

from __future__ import annotations

from pathlib import Path

from ..registry import ExportFormat, register

OPSET = 18


def build(job, path: Path) -> None:
    import contextlib
    import io

    import onnx
    import torch

    # a run with an out-of-distribution score: it is the graph's second output (`models.with_ood`)
    model, names = (job.model, ["logits"]) if job.scored_model is None else (job.scored_model, ["logits", "ood_score"])
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates its steps on stdout
        torch.onnx.export(model, (job.example,), str(path), input_names=["input"], output_names=names,
                          dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=OPSET,
                          dynamo=True, external_data=False)
    set_metadata(path, job.meta)
    onnx.checker.check_model(str(path))


def set_metadata(path: Path, meta: dict) -> None:
    """Store `meta` (JSON) under the transferkit key of the model's metadata."""
    from ...sessions.metadata import onnx_with_metadata

    path.write_bytes(onnx_with_metadata(path.read_bytes(), meta))


def runner(path: Path):
    """The artifact's logits, on its runtime (`prediction.exported`: ONNX Runtime, OpenVINO, LiteRT)."""
    from ...prediction.exported import open_session

    session = open_session(path)
    return lambda x: session.run(None, {"input": x})[0]


register(ExportFormat(name="onnx", file="model.onnx", order=0, build=build, runner=runner,
                      summary="fp32 ONNX, dynamic batch, metadata inside (ONNX Runtime, TensorRT, OpenVINO, ...)"))
