"""The rows of predictions.csv, made from a model's validation logits with NumPy alone: the
report process writes them (`report.write_evaluation`), and the run's own process ranks the same
rows to explain the most confidently wrong images while that process is still busy
(`explained.report_heatmaps`), so both see identical rows. Read back (with metrics.json) by
`read_predictions` and `read_summary`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import TEXT_ERRORS, csv_untext, load_json_object
from ..task import Task
from .metrics import image_losses


def prediction_rows(paths: list[str], y_true: np.ndarray, logits, classes: list[str], task: Task,
                    ood: np.ndarray | None = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of predictions.csv: path, actual, predicted, the predicted class's
    probability and the actual class's (calibrated: the task's temperature or thresholds);
    multi-label: the true and predicted sets joined by the task's delimiter, the highest class
    probability, the lowest among the true classes, and the image's log loss; then `ood_score`
    where the model has one."""
    probs = task.probabilities(np.asarray(logits)).astype(np.float64)
    ood_header = [] if ood is None else ["ood_score"]

    def ood_cell(i: int) -> list[str]:
        return [] if ood is None else ["" if not np.isfinite(ood[i]) else f"{ood[i]:.6f}"]

    if task.multi:
        pred, losses, joined = task.decide(probs), image_losses(y_true, probs), task.joiner.join
        return (["path", "actual", "predicted", "probability", "actual_probability", "loss"] + ood_header,
                [[path, joined(classes[c] for c in np.flatnonzero(t)), joined(classes[c] for c in np.flatnonzero(q)),
                  f"{row.max():.6f}", f"{row[t > 0].min() if t.any() else 1.0:.6f}", f"{loss:.6f}", *ood_cell(i)]
                 for i, (path, t, q, row, loss) in enumerate(zip(paths, y_true, pred, probs, losses))])
    y_pred = probs.argmax(1)
    return (["path", "actual", "predicted", "probability", "actual_probability"] + ood_header,
            [[path, classes[t], classes[p], f"{row[p]:.6f}", f"{row[t]:.6f}", *ood_cell(i)]
             for i, (path, t, p, row) in enumerate(zip(paths, y_true, y_pred, probs))])


def as_records(header: list[str], rows: list[list[str]]) -> list[dict]:
    """The rows as `read_predictions` reads them back from the file (numbers parsed)."""
    return [parsed(dict(zip(header, row))) for row in rows]


def parsed(record: dict) -> dict:
    """A row of predictions.csv with its numbers parsed (in place)."""
    record["probability"], record["actual_probability"] = float(record["probability"]), float(record["actual_probability"])
    if "loss" in record:  # multi-label
        record["loss"] = float(record["loss"])
    return record


def most_wrong(rows: list[dict], multi: bool) -> list[dict]:
    """The wrong rows of predictions.csv, most confidently wrong first (multi-label: largest loss)."""
    wrong = [r for r in rows if r["actual"] != r["predicted"]]
    return sorted(wrong, key=lambda r: -r["loss"]) if multi else sorted(wrong, key=lambda r: -r["probability"])


def read_predictions(run_dir: Path) -> list[dict]:
    """predictions.csv as written by `write_evaluation`; a damaged file is a `UserError`."""
    path = run_dir / "predictions.csv"
    try:
        with open(path, newline="", encoding="utf-8", errors=TEXT_ERRORS) as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            parsed(r)
            r["path"], r["actual"], r["predicted"] = (csv_untext(r[k]) for k in ("path", "actual", "predicted"))
    except (KeyError, TypeError, ValueError, csv.Error, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is damaged ({type(exc).__name__}: {exc}); `transferkit eval RUN` writes a "
                        "fresh one") from None
    return rows


def read_summary(run_dir: Path) -> dict:
    """metrics.json as written by `write_evaluation`; a damaged file is a `UserError`."""
    path = run_dir / "metrics.json"
    try:
        summary = load_json_object(path)
        if not summary.texts("classes") or len(summary.texts("classes")) != len(summary["classes"]):
            raise ValueError("no list of classes")
        return summary
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is damaged ({exc}); `transferkit eval RUN` writes a fresh one") from None
