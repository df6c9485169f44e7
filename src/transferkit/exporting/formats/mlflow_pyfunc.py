"""mlflow: an MLflow pyfunc model folder (the MLflow model flavour): images in, labels and
probabilities out, on ONNX Runtime (made from the onnx format). Needs the mlflow extra."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import UserError
from ..registry import ExportFormat, register


def _pyfunc():
    try:
        from .. import pyfunc
    except ImportError:
        raise UserError("--formats mlflow needs MLflow: pip install 'transferkit[mlflow]'") from None
    return pyfunc


def build(job, path: Path) -> str:
    pyfunc = _pyfunc()
    pyfunc.save(path, job.built["onnx"], job.meta)
    note = "pyfunc over model.onnx: mlflow.pyfunc.load_model(folder).predict(images)"
    logged = pyfunc.log_to_tracked_run(job.run_dir, path) if job.run_dir is not None else None
    return f"{note}; {logged}" if logged else note


def runner(path: Path):
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(str(path))
    return lambda x: np.stack(model.predict(x)["logits"].to_list()).astype(np.float32)


register(ExportFormat(name="mlflow", file="mlflow_model", order=3, build=build, runner=runner, needs=("onnx",),
                      in_all=False, check=_pyfunc,
                      summary="MLflow pyfunc model folder: images in, labels and probabilities out (ONNX Runtime)"))
