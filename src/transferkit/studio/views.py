"""What the studio's run pages show, read from the run folders' own files: one run (its results,
curves, confusion matrix, per-class metrics) and two side by side (`runs.compare`, with both
runs' curves and the validation images one gets right and the other wrong, by their rows)."""

from __future__ import annotations

from pathlib import Path

from ..evaluation.metrics import read_history_csv
from ..files import Record, read_json_object, read_yaml_object
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


def confusion(metrics: Record) -> list[list[float]] | None:
    """The confusion matrix of a run's metrics.json, if it is a square matrix of numbers the size of
    its classes (a damaged file gives None, never a page that breaks)."""
    rows = metrics.items_of("confusion_matrix", list)
    n = len(metrics.texts("classes"))
    ok = len(rows) == n and all(len(r) == n and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    for v in r) for r in rows)
    return rows if ok and n else None


def per_class(metrics: Record) -> dict[str, dict]:
    """{class: {metric: number}} of a run's metrics.json, the numbers that are numbers."""
    table = metrics.record("per_class")
    return {str(c): {k: table.record(c).number(k) for k in ("precision", "recall", "f1", "support")} for c in table}


def run_view(run_dir: Path) -> dict:
    row = read_run(run_dir)
    metrics = read_json_object(run_dir / "metrics.json") or Record()
    results = read_json_object(run_dir / "results.json") or Record()
    rows = predictions(run_dir)
    # the most confidently wrong; multi-label: the largest loss (their probability is the top class's)
    wrong = sorted((i for i, r in enumerate(rows) if r["actual"] != r["predicted"]),
                   key=lambda i: -rows[i].get("loss", rows[i]["probability"]))
    ood = metrics.record("ood")
    threshold = ood.number("threshold")
    scored = [i for i, r in enumerate(rows) if "ood_score" in r]
    for r in rows:  # (above the model's --reject auto threshold: predict would call it unknown)
        if "ood_score" in r and threshold is not None:
            r["unknown"] = r["ood_score"] > threshold
    # the val images least like the training images (highest out-of-distribution score)
    unusual = sorted(scored, key=lambda i: -rows[i]["ood_score"])[:24]
    return {"run": row.to_dict(), "classes": metrics.texts("classes") or results.texts("classes"),
            "ood": {"threshold": threshold, "rejected_share": ood.number("rejected_share")} if scored else None,
            "unusual": [{"i": i, **rows[i]} for i in unusual],
            "selective": [{k: r.number(k) for k in ("coverage", "images", "accuracy_by_confidence", "accuracy_by_ood")}
                          for r in metrics.items_of("selective", dict)],
            "task": metrics.text("task", "single"), "map": {k: metrics.number(k) for k in ("map_macro", "map_micro")},
            "confusion": confusion(metrics), "per_class": per_class(metrics),
            "history": history(run_dir), "report": (run_dir / "report.html").is_file(),
            "exported": (run_dir / "export" / "export.json").is_file(),
            "top_losses": [{"i": i, **rows[i]} for i in wrong[:24]],
            "settings": {str(k): _setting(v) for k, v in (read_yaml_object(run_dir / "config.yaml") or {}).items()
                         if v is not None}}


def _setting(value):
    """An option's value as the page shows it: a number, text, true/false or a list of them as
    they are; anything else (a damaged or edited config.yaml) as its text, at most 200 characters."""
    if isinstance(value, (str, bool, int)) or isinstance(value, float) and value == value and abs(value) != float("inf"):
        return value
    if isinstance(value, list) and all(isinstance(v, (str, int, bool)) for v in value):
        return value
    return str(value)[:200]


def compare_view(a: Path, b: Path) -> dict:
    c = compare(a, b)
    # the images' rows in A's predictions.csv: the thumbnails are served from A (the same images as B's)
    rows_a, rows_b = predictions(a), {r["path"]: r for r in predictions(b)}
    index = {r["path"]: i for i, r in enumerate(rows_a)}

    def item(p: str) -> dict:  # the image, its class, and what each run said (the page's caption)
        ra, rb = rows_a[index[p]], rows_b.get(p, {})
        return {"i": index[p], "path": p, "actual": ra["actual"], "a_predicted": ra["predicted"],
                "a_probability": ra["probability"], "b_predicted": rb.get("predicted"),
                "b_probability": rb.get("probability")}

    view = c.to_dict()
    view["only_a_right"] = [item(p) for p in c.only_a_right if p in index]
    view["only_b_right"] = [item(p) for p in c.only_b_right if p in index]
    view["history"] = [history(a), history(b)]
    metrics = [read_json_object(folder / "metrics.json") or Record() for folder in (a, b)]  # each read once
    view["confusion"] = [confusion(m) for m in metrics]
    view["classes"] = [m.texts("classes") for m in metrics]
    return view
