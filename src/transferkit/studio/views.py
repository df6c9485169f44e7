"""What the studio's run pages show, read from the run folders' own files: one run (its results,
curves, confusion matrix, per-class metrics) and two side by side (`runs.compare`, with both
runs' curves and the validation images one gets right and the other wrong, by their rows)."""

from __future__ import annotations

from pathlib import Path

from ..evaluation.metrics import read_history_csv
from ..files import read_json_object, read_yaml_object
from ..runs import compare, read_predictions, read_run


def predictions(run_dir: Path) -> list[dict]:
    """The rows of the run's predictions.csv (`runs.read_predictions`); [] where it has none."""
    return read_predictions(run_dir) or []


def history(run_dir: Path) -> dict:
    try:
        rows, unit = read_history_csv(run_dir / "metrics.csv")
    except (OSError, ValueError, KeyError, TypeError):
        return {"unit": "epoch", "rows": []}
    return {"unit": unit, "rows": [{"step": r.epoch, "train_loss": r.train_loss, "val_loss": r.val_loss,
                                    "train_acc": r.train_acc, "val_acc": r.val_acc} for r in rows]}


def run_view(run_dir: Path) -> dict:
    row = read_run(run_dir)
    metrics = read_json_object(run_dir / "metrics.json") or {}
    results = read_json_object(run_dir / "results.json") or {}
    rows = predictions(run_dir)
    wrong = sorted((i for i, r in enumerate(rows) if r["actual"] != r["predicted"]),
                   key=lambda i: -rows[i]["probability"])
    return {"run": row.to_dict(), "classes": metrics.get("classes") or results.get("classes") or [],
            "confusion": metrics.get("confusion_matrix"), "per_class": metrics.get("per_class"),
            "history": history(run_dir), "report": (run_dir / "report.html").is_file(),
            "exported": (run_dir / "export" / "export.json").is_file(),
            "top_losses": [{"i": i, **rows[i]} for i in wrong[:24]],
            "settings": {k: v for k, v in (read_yaml_object(run_dir / "config.yaml") or {}).items() if v is not None}}


def compare_view(a: Path, b: Path) -> dict:
    c = compare(a, b)
    # the images' rows in A's predictions.csv: the thumbnails are served from A (the same images as B's)
    index = {r["path"]: i for i, r in enumerate(predictions(a))}
    view = c.to_dict()
    view["only_a_right"] = [{"i": index[p], "path": p} for p in c.only_a_right if p in index]
    view["only_b_right"] = [{"i": index[p], "path": p} for p in c.only_b_right if p in index]
    view["history"] = [history(a), history(b)]
    metrics = [read_json_object(folder / "metrics.json") or {} for folder in (a, b)]  # each read once
    view["confusion"] = [m.get("confusion_matrix") for m in metrics]
    view["classes"] = [m.get("classes") for m in metrics]
    return view
