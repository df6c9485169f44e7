"""The MLflow model flavour of an exported run (`export --formats mlflow`): an MLflow pyfunc model
that takes images and answers labels and probabilities, on ONNX Runtime (the exported
model.onnx inside it; torch is not needed to load or run it).

    model = mlflow.pyfunc.load_model("runs/x/export/mlflow_model")
    model.predict(["a.jpg", open("b.png", "rb").read()])       # paths, bytes, base64 strings
    model.predict(pd.DataFrame({"image": ["a.jpg"]}))           # a DataFrame: its "image" column
    model.predict(x)                                            # a preprocessed float32 (N, 3, S, S) tensor

The answer is a DataFrame, one row per image: `label`, `probability` (of the label),
`probabilities` and `logits` (every class, in the order of the model's metadata `classes`) and
`error` (why an image could not be used; its other columns empty). A multi-label model adds
`labels`, the predicted set (every class at its threshold or above), and its probabilities are
each class's own sigmoid. A model with an out-of-distribution score adds `ood_score` (higher = less
like the training images, computed in the ONNX graph) and `unknown` (above the run's threshold,
which keeps 95% of its val images). `mlflow models serve` serves it
as it is (JSON strings: paths on the server, or base64-encoded image files).

This module imports MLflow: it is imported only to export or load the flavour.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

IMAGE_COLUMN = "image"


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """A transferkit model as an MLflow pyfunc model (see the module's docstring)."""

    def load_context(self, context) -> None:
        from ..prediction.onnx_predictor import OnnxPredictor

        self.predictor = OnnxPredictor(context.artifacts["onnx"])

    # the hint (a DataFrame) keeps MLflow from imposing a schema: lists, arrays and one image are taken too
    def predict(self, context, model_input: pd.DataFrame, params=None):
        classes, task = self.predictor.classes, self.predictor.task
        if isinstance(model_input, np.ndarray) and model_input.dtype.kind == "f":
            x = np.ascontiguousarray(model_input, dtype=np.float32)
            size = self.predictor.pre["input_size"]
            if x.ndim != 4 or x.shape[1:] != (3, size, size):
                raise ValueError(f"a tensor input must be float32 [N, 3, {size}, {size}] (preprocessed); "
                                 f"got {list(x.shape)}")
            # a row holding NaN or infinity is that row's error, never a confident label
            finite = np.isfinite(x.reshape(len(x), -1)).all(1)
            logits = np.full((len(x), len(classes)), np.nan, np.float32)
            ood = np.full(len(x), np.nan, np.float32)
            if finite.any():
                logits[finite], scores = self.predictor.forward(np.ascontiguousarray(x[finite]))
                if scores is not None:
                    ood[finite] = scores
            errors = {int(i): "the input holds a value that is not finite (NaN or infinity)"
                      for i in np.flatnonzero(~finite)}
        else:
            images = [_image(item) for item in _items(model_input)]
            logits, ood, errors = self.predictor.scored(images, [_name(item, i) for i, item in enumerate(images)])
        scored = self.predictor.ood_record is not None
        threshold = self.predictor.threshold
        probs = task.probabilities(logits)
        chosen = task.decide(np.nan_to_num(probs, nan=0.0))
        rows = []
        for i in range(len(logits)):
            if i in errors:
                rows.append({"label": None, "probability": None, "probabilities": None, "logits": None,
                             "error": errors[i], "labels": [] if task.multi else None, "ood_score": None,
                             "unknown": None})
                continue
            top = int(np.argmax(probs[i]))
            score = float(ood[i]) if scored else None
            rows.append({"label": classes[top], "probability": float(probs[i, top]),
                         "probabilities": probs[i].astype(float).tolist(), "logits": logits[i].astype(float).tolist(),
                         "error": None, "labels": [classes[c] for c in np.flatnonzero(chosen[i])] if task.multi else None,
                         "ood_score": score, "unknown": None if score is None else bool(
                             threshold is not None and score > threshold)})
        columns = ["label", "probability", "probabilities", "logits", "error"] + (["labels"] if task.multi else []) \
            + (["ood_score", "unknown"] if scored else [])
        return pd.DataFrame(rows, columns=columns)


def _items(model_input) -> list:
    """The images of any input pyfunc hands over: a DataFrame (its "image" column, else its first),
    a Series, an array or a list of them, or one image."""
    if isinstance(model_input, pd.DataFrame):
        if model_input.shape[1] == 0:
            raise ValueError("the DataFrame has no column: put the images in a column named 'image'")
        column = IMAGE_COLUMN if IMAGE_COLUMN in model_input.columns else model_input.columns[0]
        return list(model_input[column])
    if isinstance(model_input, (str, bytes, bytearray, Path)):
        return [model_input]
    if isinstance(model_input, dict):
        if IMAGE_COLUMN not in model_input:
            raise ValueError("a dict input needs the key 'image'")
        return _items(model_input[IMAGE_COLUMN])
    return list(np.asarray(model_input, dtype=object).ravel()) if isinstance(model_input, np.ndarray) \
        else list(model_input)


def _image(item):
    """A path, the file's bytes, or (JSON has no bytes) a base64 string of them."""
    if isinstance(item, (bytes, bytearray, Path)):
        return bytes(item) if not isinstance(item, Path) else str(item)
    if isinstance(item, str):
        if _is_file(item):
            return str(Path(item).expanduser())
        try:
            return base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            return item  # reported per image: not found
    return item


def _is_file(text: str) -> bool:
    try:
        return len(text) < 4096 and Path(text).expanduser().is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte: a base64 string, not a path
        return False


def _name(item, i: int) -> str:
    return item if isinstance(item, str) else f"<image {i}>"


def save(path: Path, onnx: Path, meta: dict) -> None:
    """Write the pyfunc model of the exported `onnx` (with its metadata `meta`) to the folder `path`."""
    import logging

    from .. import __version__

    # MLflow logs that it cannot infer a signature: there is deliberately none (the inputs are open)
    logger = logging.getLogger("mlflow.pyfunc")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        _save(path, onnx, meta, __version__)
    finally:
        logger.setLevel(level)


def _save(path: Path, onnx: Path, meta: dict, version: str) -> None:
    mlflow.pyfunc.save_model(
        # the model as code (pyfunc_model.py), not as a pickle: loading it executes no stored bytes
        str(path), python_model=str(Path(__file__).with_name("pyfunc_model.py")), artifacts={"onnx": str(onnx)},
        # what loading and running it needs (pyfunc would otherwise load the model to guess them)
        pip_requirements=[f"transferkit=={version}", "onnxruntime", "pandas", "pillow", "numpy"],
        metadata={"transferkit": {k: meta[k] for k in ("classes", "preprocess", "backbone") if k in meta}},
    )


def log_to_tracked_run(run_dir: Path, folder: Path) -> str | None:
    """Where the run was tracked by MLflow (`train --track mlflow`), the model folder is logged to
    that MLflow run too, as the artifact "mlflow_model" (loadable as runs:/<run id>/mlflow_model).
    Returns what happened, for export.json; None where the run was not tracked."""
    from ..tracking import STATE_FILE, read_state

    state = read_state(run_dir).get("mlflow")
    if not state:
        return None
    try:
        client = mlflow.MlflowClient(tracking_uri=state["tracking_uri"])
        client.log_artifacts(state["run_id"], str(folder), "mlflow_model")
    except Exception as exc:  # noqa: BLE001 - the export stands; the tracking store is elsewhere's
        return f"not logged to the MLflow run in {STATE_FILE} ({str(exc).splitlines()[0][:200]})"
    return f"logged to MLflow run {state['run_id']} as runs:/{state['run_id']}/mlflow_model"
