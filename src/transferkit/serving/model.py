"""The model a server answers with: a run folder's bundle (on ONNX Runtime or PyTorch) or an
exported ONNX file (ONNX Runtime alone: torch is never imported), and what `GET /model` says
about it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np

from ..machine import usable_cores
from ..errors import UserError
from ..files import read_json_object
from ..prediction.base import BasePredictor
from ..prediction.exported import RUNTIMES, exported_kind, open_exported


class ServedModel:
    """A predictor and its description.

    A run folder's bundle runs on the engine `engines.choose` picks (`engine`: auto | onnxruntime
    | torch): on a CPU ONNX Runtime, the bundle converted once (cached, checked against PyTorch),
    on a GPU or where the conversion fails PyTorch (`say` tells which and why, and when it
    converts). An exported model runs on its own runtime (a model.onnx on ONNX Runtime, an
    OpenVINO IR on OpenVINO: `prediction.exported`), and torch is not imported.
    `threads`: the model's intra-op threads (0: the library's default, one per core); several
    workers share the cores."""

    def __init__(self, model: str | Path, device: str = "auto", precision: str = "auto", tta: str = "none",
                 threads: int = 0, engine: str = "auto", say: Callable[[str], None] | None = None):
        self.source = Path(model).expanduser()
        if not self.source.exists():
            raise UserError(f"not found: {model}")
        say = say or (lambda message: print(message, file=sys.stderr, flush=True))
        if exported_kind(model) is not None:
            self.predictor: BasePredictor = open_exported(self.source, engine, precision, tta, threads)
            self.info = _exported_info(self.predictor)
        else:
            self.predictor, self.info = _bundle_predictor(self.source, device, precision, tta, threads, engine, say)
        self.info["tta"] = tta
        self.classes: list[str] = self.predictor.classes
        self.task = self.predictor.task  # single-label, or multi-label with its thresholds
        self.info["task"] = self.task.to_dict()
        import threading

        self._lock, self._torch = threading.Lock(), None  # (`_explainer`)
        # a model with an out-of-distribution score: `run` gives it as one more column after the logits
        self.scores_ood = self.predictor.ood_record is not None
        self.info["ood"] = self.predictor.ood_record

    def views(self, data: bytes, name: str) -> np.ndarray | str:
        """One image's model inputs (its views), or why it cannot be used."""
        return self.predictor.usable_views(data, name)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Inputs (B, ...) -> logits (B, C), then each row's OOD score (column C) where the model
        has one: one array, so the batcher slices both at once."""
        logits, ood = self.predictor.forward(batch)
        if not self.scores_ood:
            return logits
        return np.concatenate([logits, np.asarray(ood, np.float32).reshape(-1, 1)], 1)

    def set_reject(self, reject, unknown_label: str | None) -> None:
        """--reject and --unknown-label (`BasePredictor.set_reject`)."""
        self.predictor.set_reject(reject, unknown_label)
        self.info["reject"] = {"threshold": self.predictor.threshold, "unknown_label": unknown_label}

    def from_tensor(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed inputs (N, 3, S, S) float32 (normalized, as an exported model.onnx takes
        them) -> the predictor's inputs. A predictor of uint8 pixels gets them back by undoing the
        normalization and rounding: exact for a tensor made from an 8-bit image."""
        if self.predictor.input_dtype == "float32":
            return np.ascontiguousarray(x, dtype=np.float32)
        pre = self.info["preprocess"]
        mean = np.asarray(pre["mean"], np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(pre["std"], np.float32).reshape(1, 3, 1, 1)
        u8 = np.clip(np.rint((x * std + mean) * 255.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(u8.transpose(0, 2, 3, 1) if self.predictor.channels_last else u8)

    def explain(self, data: bytes, name: str, top_k: int) -> dict:
        """One image's prediction (`outputs.to_dict`, from the same pass) with where its most
        probable class comes from: `heatmap` (PNG, the image's size, 8-bit grey) and `overlay`
        (JPEG), base64. A `UserError` for a model without spatial maps or an unusable image."""
        import base64

        from ..prediction.heatmaps import encoded, of_image
        from ..prediction.outputs import to_dict, top_predictions

        explainer = self._explainer()
        logits, ood, maps, errors = explainer.explain([data], [name])
        if errors:
            raise UserError(f"{name}: {errors[0]}")
        png, jpg = encoded(*of_image(data, maps[0], explainer.sizes(), name))
        p = self.predictor
        pred = top_predictions([name], self.task.probabilities(logits), {}, self.classes, top_k, self.task, ood,
                               p.threshold, p.unknown_label)[0]
        return {**to_dict(pred, "name"), "class_explained": pred.top_k[0][0],
                "heatmap": base64.b64encode(png).decode(), "overlay": base64.b64encode(jpg).decode()}

    def _explainer(self) -> BasePredictor:
        """What gives this model's spatial maps: its predictor, or (a run converted whole for ONNX
        Runtime) the run on PyTorch, loaded on the first explanation."""
        with self._lock:
            if self.predictor.can_explain:
                return self.predictor
            if exported_kind(self.source) is not None:
                raise UserError("an exported model gives only its outputs, no spatial maps: serve the run folder to "
                                "explain")
            if self._torch is None:
                from .. import engines

                self._torch = engines.load_bundle(self.source, "torch", "cpu", "auto", "none")
            return self._torch

    def close(self) -> None:
        self.predictor.close()
        if self._torch is not None:
            self._torch.close()


def _bundle_predictor(source: Path, device: str, precision: str, tta: str, threads: int, engine: str,
                      say) -> tuple[BasePredictor, dict]:
    """The run's model on the engine `engines.choose` picks for an open-ended stream of images."""
    from .. import engines
    from ..models import bundle

    meta, run_dir = bundle.read_meta(source)
    predictor = engines.load_bundle(source, engine, device, precision, tta, threads=threads, say=say)
    choice = predictor.engine
    say(f"engine: {choice.line()}")
    name = "pytorch" if choice.engine == "torch" else choice.engine
    return predictor, _bundle_info(meta, run_dir, name, choice.device, choice.precision)


def _bundle_info(meta, run_dir: Path, engine: str, device: str, precision: str) -> dict:
    pre = meta.preprocess.to_dict()
    return {"name": run_dir.name, "format": "pytorch", "engine": engine, "backbone": meta.backbone,
            "strategy": meta.strategy, "classes": meta.classes, "num_classes": len(meta.classes),
            "preprocess": {k: pre[k] for k in ("input_size", "resize_size", "interpolation", "mean", "std")},
            "device": device, "precision": precision, "metrics": _run_metrics(run_dir)}


def _exported_info(predictor) -> dict:
    meta, path = predictor.meta, predictor.path
    run_dir = path.resolve().parent.parent  # exported into RUN/export/ by default
    metrics = _run_metrics(run_dir)
    export = read_json_object(path.resolve().parent / "export.json") or {}
    for artifact in export.get("artifacts", []):
        if artifact.get("file") == path.name and isinstance(artifact.get("accuracy"), (int, float)):
            # this file's own accuracy on the run's val images, as `export` measured it
            key = "map_macro" if (meta.get("task") or {}).get("kind") == "multilabel" else "val_acc"  # (export's measure)
            metrics = {**metrics, key: artifact["accuracy"], "measured_as": f"export.json ({path.name})"}
    pre = meta["preprocess"]
    return {"name": path.name, "format": predictor.kind, "engine": RUNTIMES[predictor.kind], "backbone": meta.get("backbone"),
            "classes": meta["classes"],
            "num_classes": len(meta["classes"]),
            "preprocess": {k: pre[k] for k in ("input_size", "resize_size", "interpolation", "mean", "std")},
            "device": "cpu", "precision": "int8" if ".int8." in path.name else "fp32", "metrics": metrics}


def _run_metrics(run_dir: Path) -> dict:
    """The run's val accuracy and macro F1 (results.json, metrics.json), where they are."""
    results, metrics = read_json_object(run_dir / "results.json"), read_json_object(run_dir / "metrics.json")
    out = {}
    if results and isinstance(results.get("val_acc"), (int, float)):
        out["val_acc"] = results["val_acc"]
    if metrics:
        for key in ("balanced_accuracy", "num_images", "map_macro", "map_micro", "hamming_loss"):
            if isinstance(metrics.get(key), (int, float)):
                out[key] = metrics[key]
        macro = metrics.get("macro_avg") or {}
        if isinstance(macro, dict) and isinstance(macro.get("f1"), (int, float)):
            out["macro_f1"] = macro["f1"]
    return out


def worker_threads(workers: int) -> int:
    """Intra-op threads per worker process: the cores shared out (0: one worker, the default)."""
    return 0 if workers <= 1 else max(1, usable_cores() // workers)
