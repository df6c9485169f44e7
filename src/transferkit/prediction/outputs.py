"""What a prediction is and how predictions are written: shared by the PyTorch `Predictor` and
prediction with ONNX Runtime alone (`onnx_predictor`). No torch here."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.discover import list_files
from ..errors import UserError
from ..files import csv_table


@dataclass
class Prediction:
    path: str
    label: str | None  # None when the file could not be read
    probability: float | None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None  # why the image could not be used
    # multi-label: the predicted set (every class at or above its threshold; may be empty); None
    # for a single-label model. `label` is then the most probable class, each probability its own sigmoid.
    labels: list[str] | None = None
    # how unlike the training images it is (`ood`: higher = less alike; None: the model has no
    # score), and whether it is rejected as unknown (its score above the threshold; None: not decided)
    ood_score: float | None = None
    unknown: bool | None = None


def top_predictions(paths: list[str], probs: np.ndarray, errors: dict[int, str], classes: list[str],
                    top_k: int, task=None, ood: np.ndarray | None = None, threshold: float | None = None,
                    unknown_label: str | None = None) -> list[Prediction]:
    """Predictions from class probabilities (N, C); rows in `errors` become error predictions.
    A multi-label `task` (`task.Task`) adds each image's predicted set, by class order. `ood`:
    each image's out-of-distribution score; above `threshold` it is unknown, and with
    `unknown_label` its label is that name (its top-k and probabilities stay the model's)."""
    k = max(1, min(top_k, len(classes)))
    multi = task is not None and task.multi
    chosen = task.decide(np.nan_to_num(probs, nan=0.0)) if multi else None
    out = []
    for i, path in enumerate(paths):
        if i in errors:
            out.append(Prediction(path, None, None, [], errors[i], [] if multi else None))
            continue
        order = np.argsort(-probs[i], kind="stable")[:k]
        top = [(classes[j], float(probs[i, j])) for j in order]
        labels = [classes[j] for j in np.flatnonzero(chosen[i])] if multi else None
        score = None if ood is None or not np.isfinite(ood[i]) else float(ood[i])
        unknown = None if score is None else (threshold is not None and score > threshold)
        label = unknown_label if unknown and unknown_label is not None else top[0][0]
        out.append(Prediction(path, label, top[0][1], top, labels=labels, ood_score=score, unknown=unknown))
    return out


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files as given, folders walked recursively (hidden files skipped); missing paths are errors."""
    files: list[str] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            files += list_files(p)
        elif p.is_file():
            files.append(str(p))
        elif p.exists():  # a FIFO, a device, a socket: never read (a pipe's read would wait for a writer)
            raise UserError(f"not an image file (a pipe, a device or a socket): {item}")
        else:
            raise UserError(f"not found: {item}")
    return files


def to_csv(preds: list[Prediction], top_k: int, joiner: str | None = None, ood: bool = False) -> str:
    """CSV of predictions; `joiner` (a multi-label model's delimiter): adds the `labels` column;
    `ood` (a model with an out-of-distribution score): the `ood_score` and `unknown` columns."""
    return csv_table(_csv_header(top_k, joiner, ood), _csv_rows(preds, top_k, joiner, ood))


# How predict's own output files start (CSV, JSON, JSON of no image): predict replaces only these.
OWN_HEADS = (b"path,label,probability,", b'[\n  {\n    "path": ', b"[]\n")


def _csv_header(top_k: int, joiner: str | None = None, ood: bool = False) -> list[str]:
    header = ["path", "label", "probability"] + (["labels"] if joiner is not None else []) + \
        (["ood_score", "unknown"] if ood else [])
    for k in range(1, top_k + 1):
        header += [f"top{k}_label", f"top{k}_probability"]
    return header + ["error"]


def _csv_rows(preds: list[Prediction], top_k: int, joiner: str | None = None, ood: bool = False) -> list[list[str]]:
    rows = []
    for p in preds:
        row = [p.path, p.label or "", "" if p.probability is None else f"{p.probability:.6f}"]
        if joiner is not None:
            row.append(joiner.join(p.labels or []))
        if ood:
            row += ["" if p.ood_score is None else f"{p.ood_score:.6f}",
                    "" if p.unknown is None else str(p.unknown).lower()]
        for k in range(top_k):
            row += [p.top_k[k][0], f"{p.top_k[k][1]:.6f}"] if k < len(p.top_k) else ["", ""]
        rows.append(row + [p.error or ""])
    return rows


def has_ood(predictor) -> bool:
    """Whether the predictor's model gives out-of-distribution scores (predict's `ood_score` and
    `unknown` columns)."""
    return getattr(predictor, "ood_record", None) is not None


def joiner_of(predictor) -> str | None:
    """What joins a predicted set in predict's `labels` column: the model's label delimiter
    (multi-label), or None: a single-label model's CSV has no such column."""
    return predictor.task.joiner if predictor.task.multi else None


class PredictionWriter:
    """Predictions written as they come, CSV or JSON (the same text `to_csv` / `to_json` make
    of all of them at once), to `stream`: `predict` on a million images holds one chunk of
    predictions, not all of them."""

    def __init__(self, stream, kind: str, top_k: int, joiner: str | None = None, ood: bool = False):
        self.stream, self.kind, self.top_k, self.count, self.joiner, self.ood = stream, kind, top_k, 0, joiner, ood
        if kind == "csv":
            stream.write(csv_table(_csv_header(top_k, joiner, ood), []))

    def write(self, preds: list[Prediction]) -> None:
        if self.kind == "csv":
            self.stream.write(csv_table(None, _csv_rows(preds, self.top_k, self.joiner, self.ood)))
        else:
            for p in preds:
                item = json.dumps(to_dict(p), indent=2).replace("\n", "\n  ")
                self.stream.write(("[\n  " if self.count == 0 else ",\n  ") + item)
                self.count += 1
            return
        self.count += len(preds)

    def close(self) -> None:
        if self.kind == "json":
            self.stream.write("[]\n" if self.count == 0 else "\n]\n")
        self.stream.flush()


def to_dict(p: Prediction, name_key: str = "path") -> dict:
    """One prediction as JSON writes it (`predict --output x.json`; the server names it "name");
    a multi-label model's adds `labels`, the predicted set."""
    out = {name_key: p.path, "label": p.label, "probability": p.probability,
           "top_k": [{"label": lab, "probability": q} for lab, q in p.top_k], "error": p.error}
    if p.labels is not None:
        out["labels"] = p.labels
    if p.ood_score is not None or p.unknown is not None:
        out["ood_score"], out["unknown"] = p.ood_score, p.unknown
    return out


def to_json(preds: list[Prediction]) -> str:
    return json.dumps([to_dict(p) for p in preds], indent=2) + "\n"
