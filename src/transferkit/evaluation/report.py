"""What a run's evaluation leaves behind, and the one page that shows it all.

`write_evaluation` turns validation logits into `metrics.json` and `predictions.csv` (one row per
image: path, actual, predicted, probabilities). `render` makes everything else from those files
(and the run's `metrics.csv`, `config.yaml`, `results.json` where present): `confusion_matrix.png`
and its row-normalized twin, `curves.png`, `predictions.png`, `top_losses.png`,
`misclassified.csv` and a self-contained `report.html` (images embedded, no network). So
`transferkit report RUN` can rebuild the report without the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import Record, atomic_write, csv_table, read_json_object, \
    text_bytes, write_json
from . import metrics
from .page import report_html
from .rows import most_wrong, prediction_rows, read_predictions, read_summary
from ..task import Task, calibration
from .plots import plot_confusion, plot_curves, plot_grid, plot_multilabel, plot_reliability

GRID = 16  # validation images in predictions.png
TOP_LOSSES = 9  # images in top_losses.png


def write_evaluation(out_dir: Path, paths: list[str], y_true: np.ndarray, logits, classes: list[str],
                     extra: dict | None = None, task: dict | None = None, ood: np.ndarray | None = None,
                     ood_threshold: float | None = None) -> dict:
    """metrics.json (scikit-learn's numbers, plus `extra`) and predictions.csv; returns the summary.
    `task` (`Task.to_dict()`; None: single-label): a multi-label model is measured on label sets.
    `ood`: each image's out-of-distribution score (a column of predictions.csv; `ood_threshold`
    the model's --reject auto) and selective prediction (`metrics.selective`)."""
    kind = Task.from_dict(task, len(classes))
    if ood is not None:
        extra = {**(extra or {}), "ood": _ood_summary(np.asarray(ood, np.float64), ood_threshold)}
    if kind.multi:
        return _write_multilabel(out_dir, paths, np.asarray(y_true), np.asarray(logits), classes, extra, kind, ood)
    raw = Task().probabilities(logits).astype(np.float64)  # (before any temperature)
    probs = kind.probabilities(logits).astype(np.float64)  # (calibrated: the task's temperature)
    y_pred = probs.argmax(1)
    summary = metrics.summarize(y_true, y_pred, classes, probs)
    summary.update({"num_images": len(paths), "classes": classes, **(extra or {})})
    # before and after the temperature (1: the same numbers twice, the model not calibrated)
    summary["calibration"] = {"temperature": kind.temperature, "before": calibration(y_true, raw),
                              "after": calibration(y_true, probs)}
    summary["selective"] = metrics.selective(y_true == y_pred, probs.max(1) if len(probs) else np.zeros(0), ood)
    write_json(out_dir / "metrics.json", summary)
    atomic_write(out_dir / "predictions.csv", text_bytes(csv_table(*prediction_rows(paths, y_true, logits, classes,
                                                                                    kind, ood))))
    return summary


def _ood_summary(scores: np.ndarray, threshold: float | None) -> dict:
    """metrics.json's `ood`: the score's threshold (--reject auto) and the share of these images
    it rejects, and their scores' quartiles."""
    finite = scores[np.isfinite(scores)]
    quartiles = np.quantile(finite, [0.25, 0.5, 0.75]).round(4).tolist() if len(finite) else None
    rejected = float((finite > threshold).mean()) if threshold is not None and len(finite) else None
    return {"threshold": threshold, "rejected_share": rejected, "quartiles": quartiles}


PR_POINTS = 51  # recall levels at which metrics.json keeps each class's precision-recall curve


def _write_multilabel(out_dir: Path, paths: list[str], y_true: np.ndarray, logits: np.ndarray, classes: list[str],
                      extra: dict | None, task: Task, ood: np.ndarray | None = None) -> dict:
    """`write_evaluation` of a multi-label model: `metrics.summarize_multilabel`, each class's
    precision-recall curve (interpolated at PR_POINTS recall levels: the report draws it), and
    predictions.csv with the true and predicted sets (joined by the task's delimiter), the
    highest class probability and the image's log loss."""
    from sklearn.metrics import precision_recall_curve

    probs = task.probabilities(logits).astype(np.float64)
    thresholds = task.threshold_array(len(classes))
    summary = metrics.summarize_multilabel(y_true, probs, thresholds, classes)
    levels = np.linspace(0, 1, PR_POINTS)
    curves = {}
    for c, name in enumerate(classes):
        if y_true[:, c].sum() > 0:
            precision, recall, _ = precision_recall_curve(y_true[:, c] > 0, probs[:, c])
            best = [float(precision[recall >= r].max()) for r in levels]
            curves[name] = {"recall": levels.round(4).tolist(), "precision": np.round(best, 4).tolist()}
    summary.update({"pr_curves": curves, "num_images": len(paths), "classes": classes, "task_info": task.to_dict(),
                    **(extra or {})})
    pred = task.decide(probs)
    # selective prediction on the exact set: the most sure of the images' own decisions first
    sure = np.abs(probs - thresholds).min(1) if len(probs) else np.zeros(0)
    summary["selective"] = metrics.selective((pred == (y_true > 0)).all(1), sure, ood)
    write_json(out_dir / "metrics.json", summary)
    atomic_write(out_dir / "predictions.csv", text_bytes(csv_table(*prediction_rows(paths, y_true, logits, classes,
                                                                                    task, ood))))
    return summary


def render(run_dir: str | Path) -> Path:
    """All plots, misclassified.csv and report.html of a run (or eval) folder, from its
    metrics.json and predictions.csv. Returns the report's path."""
    run_dir = Path(run_dir).expanduser()
    return render_page(run_dir, render_plots(run_dir))


def evaluate_and_plot(out_dir: Path, paths: list[str], y_true: np.ndarray, logits, classes: list[str],
                      extra: dict | None, task: dict | None, ood: np.ndarray | None, ood_threshold: float | None,
                      best_epoch: int | None) -> tuple[dict, str]:
    """`write_evaluation`, then `render_plots`: what a run asks of its report process in one request,
    so that the plots are drawn while the run makes its heatmaps (it needs their numbers only for
    results.json, written after). Returns (the summary, the confusion matrix's note)."""
    summary = write_evaluation(out_dir, paths, y_true, logits, classes, extra, task, ood, ood_threshold)
    return summary, render_plots(out_dir, best_epoch)


def render_plots(run_dir: str | Path, best_epoch: int | None = None) -> str:
    """The plots of a run (or eval) folder, from its metrics.json, predictions.csv and
    metrics.csv (matplotlib: what `render_page` leaves out); returns the confusion matrix's note
    that the page prints under it. `best_epoch`: the kept epoch the curves mark (None: read from
    results.json)."""
    run_dir = Path(run_dir).expanduser()
    summary, rows, wrong, multi = _read_outcome(run_dir)
    classes = summary["classes"]
    confusion_note = plot_multilabel(run_dir, summary, classes) if multi else plot_confusion(run_dir, summary, classes)
    history = run_dir / "metrics.csv"
    if history.is_file():
        best = best_epoch if best_epoch is not None else \
            (read_json_object(run_dir / "results.json") or Record()).integer("best_epoch")
        epochs, unit = metrics.read_history_csv(history)
        plot_curves(run_dir / "curves.png", epochs, best or 0, unit)
    if (summary.get("calibration") or {}).get("before", {}).get("bins"):
        plot_reliability(run_dir / "reliability.png", summary["calibration"])
    plot_grid(run_dir / "predictions.png", sample_rows(rows, GRID), "validation predictions", show_actual=False)
    plot_grid(run_dir / "top_losses.png", wrong[:TOP_LOSSES],
              "largest loss" if multi else "most confidently wrong", show_actual=True)
    return confusion_note


def render_page(run_dir: Path, confusion_note: str) -> Path:
    """misclassified.csv and report.html of a run (or eval) folder whose plots are drawn
    (`render_plots`, or kept from an identical run: `evaluation.memo`). No matplotlib."""
    summary, _, wrong, multi = _read_outcome(run_dir)
    score = "loss" if multi else "probability"  # (multi-label: the largest loss, wrong or not quite sure)
    atomic_write(run_dir / "misclassified.csv", text_bytes(csv_table(
        ["path", "actual", "predicted", score],
        ([r["path"], r["actual"], r["predicted"], f"{r[score]:.4f}"] for r in wrong))))
    page = run_dir / "report.html"
    atomic_write(page, text_bytes(report_html(run_dir, summary, wrong, confusion_note)))
    return page


def _read_outcome(run_dir: Path) -> tuple[dict, list[dict], list[dict], bool]:
    """(summary, prediction rows, the wrong rows most confidently wrong first (multi-label: largest
    loss first), multi-label) of a run or eval folder."""
    for name in ("metrics.json", "predictions.csv"):
        if not (run_dir / name).is_file():
            raise UserError(f"{run_dir} has no {name}: not a transferkit run or eval folder (a run made "
                            "before reports existed lacks it: `transferkit eval RUN` writes a fresh one)")
    summary = read_summary(run_dir)
    rows = read_predictions(run_dir)
    multi = summary.get("task") == "multilabel"
    return summary, rows, most_wrong(rows, multi), multi


def sample_rows(rows: list[dict], k: int) -> list[dict]:
    """k rows spread over the validation set (a fixed draw: the same images every time)."""
    if len(rows) <= k:
        return rows
    idx = np.sort(np.random.default_rng(0).choice(len(rows), k, replace=False))
    return [rows[i] for i in idx]
