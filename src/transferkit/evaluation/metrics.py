"""Classification metrics (scikit-learn) and the training history (metrics.csv). No torch here."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np


MOST_CONFUSED = 10  # pairs listed in the table and the report
COVERAGES = (1.0, 0.95, 0.9, 0.8)  # selective prediction: the shares of the images answered


def selective(correct: np.ndarray, confidence: np.ndarray, ood: np.ndarray | None = None) -> list[dict]:
    """Selective prediction: the accuracy on the COVERAGES share of the images the model answers,
    keeping the most confident (highest `confidence`) and, given `ood`, the most typical (lowest
    out-of-distribution score). Rows: coverage, images answered, accuracy_by_confidence, accuracy_by_ood."""
    correct = np.asarray(correct, dtype=bool)
    rows = []
    for coverage in COVERAGES:
        n = int(round(coverage * len(correct)))
        row = {"coverage": coverage, "images": n, "accuracy_by_confidence": None, "accuracy_by_ood": None}
        if n:
            row["accuracy_by_confidence"] = float(correct[np.argsort(-confidence, kind="stable")[:n]].mean())
            if ood is not None:
                order = np.argsort(np.nan_to_num(ood, nan=np.inf), kind="stable")
                row["accuracy_by_ood"] = float(correct[order[:n]].mean())
        rows.append(row)
    return rows


def summarize(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], probs: np.ndarray | None = None) -> dict:
    """Everything scikit-learn says about these predictions: accuracy, balanced accuracy, top-5
    accuracy (with `probs`, when there are at least 5 classes), per-class precision, recall
    (= per-class accuracy), F1 and support, their macro and weighted averages, the confusion
    matrix (rows: actual, columns: predicted) in counts and row-normalized, and the most-confused
    (actual, predicted) pairs."""
    from sklearn.metrics import (accuracy_score, classification_report,
                                 confusion_matrix, top_k_accuracy_score)

    labels = list(range(len(classes)))
    # keyed by class index: a class folder named "accuracy" or "macro avg" must not collide
    report = classification_report(y_true, y_pred, labels=labels, output_dict=True,
                                   zero_division=0) if len(y_true) else {}
    empty = {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}

    def row(r: dict) -> dict:
        return {"precision": float(r["precision"]), "recall": float(r["recall"]), "f1": float(r["f1-score"]),
                "support": int(r["support"])}

    per_class = {}
    for k, c in enumerate(classes):
        m = row(report.get(str(k), empty))
        per_class[c] = {**m, "accuracy": m["recall"]}  # per-class accuracy is the class's recall
    averages = {n: row(report[f"{n} avg"]) for n in ("macro", "weighted") if f"{n} avg" in report}
    present = sorted(set(np.asarray(y_true).tolist()))
    if len(y_true) and len(present) < len(classes):
        # A class without validation images has no measured precision or recall: averaged as 0 it
        # would pull the macro average down while balanced accuracy (the mean recall of the classes
        # present) ignores it. Both average over the classes present.
        import warnings

        with warnings.catch_warnings():  # sklearn warns about the missing classes: said in metrics.json
            warnings.simplefilter("ignore")
            averages["macro"] = row(classification_report(y_true, y_pred, labels=present, output_dict=True,
                                                          zero_division=0)["macro avg"])
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    rows = cm.sum(1, keepdims=True)
    normalized = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    off = [(int(cm[i, j]), i, j) for i in labels for j in labels if i != j and cm[i, j] > 0]
    off.sort(key=lambda t: (-t[0], t[1], t[2]))
    top5 = None
    if probs is not None and len(classes) >= 5 and len(y_true):
        import warnings

        with warnings.catch_warnings():  # with exactly 5 classes it is 1.0 by definition: sklearn warns
            warnings.simplefilter("ignore")
            top5 = float(top_k_accuracy_score(y_true, probs, k=5, labels=labels))
    return {
        "classes_without_images": [classes[k] for k in labels if k not in present],
        "accuracy": float(accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        "balanced_accuracy": _balanced_accuracy(y_true, y_pred),
        "top5_accuracy": top5,
        "per_class": per_class,
        "macro_avg": averages.get("macro"),
        "weighted_avg": averages.get("weighted"),
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalized": np.round(normalized, 4).tolist(),
        "most_confused": [{"actual": classes[i], "predicted": classes[j], "count": n}
                          for n, i, j in off[:MOST_CONFUSED]],
    }


def summarize_multilabel(y_true: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, classes: list[str]) -> dict:
    """Multi-label numbers (scikit-learn's): mAP, macro (mean of the classes' average precision,
    over the classes with a positive image) and micro (every image-class pair pooled); per class
    its AP and, at its threshold, precision, recall, F1 and support (images that have it); their
    macro and micro averages; subset accuracy (every label of an image right: `accuracy`),
    Hamming loss, the mean per-class balanced accuracy (`balanced_accuracy`); and the label
    co-occurrence matrices (images with both labels), true and predicted."""
    from sklearn.metrics import average_precision_score, hamming_loss, precision_recall_fscore_support

    y = np.asarray(y_true) > 0
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs >= np.asarray(thresholds)[None, :]
    k, n = len(classes), len(y)
    support = y.sum(0)
    present = [c for c in range(k) if support[c] > 0]
    ap = np.full(k, np.nan)
    for c in present:
        ap[c] = average_precision_score(y[:, c], probs[:, c])
    p, r, f1, _ = precision_recall_fscore_support(y, pred, average=None, zero_division=0) if n else ([0.0] * k,) * 3 + (None,)
    per_class = {}
    for c, name in enumerate(classes):
        tn = int((~y[:, c] & ~pred[:, c]).sum())
        neg = int((~y[:, c]).sum())
        per_class[name] = {"ap": None if np.isnan(ap[c]) else float(ap[c]), "precision": float(p[c]),
                           "recall": float(r[c]), "f1": float(f1[c]), "support": int(support[c]),
                           "accuracy": float(r[c]), "specificity": tn / neg if neg else None,
                           "threshold": float(thresholds[c])}

    def average(kind: str) -> dict | None:
        if not n:
            return None
        labels = present if kind == "macro" else list(range(k))
        if not labels:
            return None
        a, b, c, _ = precision_recall_fscore_support(y, pred, average=kind, labels=labels, zero_division=0)
        return {"precision": float(a), "recall": float(b), "f1": float(c), "support": int(support[labels].sum())}

    balanced = [(per_class[classes[c]]["recall"] + per_class[classes[c]]["specificity"]) / 2 for c in present
                if per_class[classes[c]]["specificity"] is not None]
    micro_ap = float(average_precision_score(y[:, present].ravel(), probs[:, present].ravel())) if present else None
    as_int = y.astype(np.int64), pred.astype(np.int64)
    return {
        "task": "multilabel",
        "classes_without_images": [classes[c] for c in range(k) if c not in present],
        "accuracy": float((pred == y).all(1).mean()) if n else 0.0,
        "subset_accuracy": float((pred == y).all(1).mean()) if n else 0.0,
        "hamming_loss": float(hamming_loss(y, pred)) if n else 0.0,
        "balanced_accuracy": float(np.mean(balanced)) if balanced else 0.0,
        "map_macro": float(np.nanmean(ap)) if present else None,
        "map_micro": micro_ap,
        "per_class": per_class,
        "macro_avg": average("macro"),
        "micro_avg": average("micro"),
        "images_without_labels": int((~y.any(1)).sum()),
        "cooccurrence": (as_int[0].T @ as_int[0]).tolist(),
        "cooccurrence_predicted": (as_int[1].T @ as_int[1]).tolist(),
    }


def image_losses(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Multi-label: each image's log loss, summed over its classes (the top losses)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(y_true, dtype=np.float64)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(1)


def format_table(summary: dict) -> str:
    """The per-class table, the averages, the overall accuracies and the most-confused pairs
    (multi-label: each class's AP and threshold, mAP, subset accuracy and Hamming loss)."""
    if summary.get("task") == "multilabel":
        return _format_multilabel(summary)
    width = max(12, *(len(c) for c in summary["per_class"]))
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]

    def row(name: str, m: dict) -> str:
        return f"{name:<{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  {m['support']:7d}"

    lines += [row(c, m) for c, m in summary["per_class"].items()]
    for name in ("macro_avg", "weighted_avg"):
        if summary.get(name):
            lines.append(row(name.replace("_", " "), summary[name]))
    overall = f"accuracy {summary['accuracy']:.3f}, balanced accuracy {summary['balanced_accuracy']:.3f}"
    if summary.get("top5_accuracy") is not None:
        overall += f", top-5 accuracy {summary['top5_accuracy']:.3f}"
    lines.append(overall)
    if summary.get("most_confused"):
        pairs = "; ".join(f"{p['actual']} -> {p['predicted']} ({p['count']})" for p in summary["most_confused"][:5])
        lines.append(f"most confused (actual -> predicted): {pairs}")
    return "\n".join(lines)


def _format_multilabel(summary: dict) -> str:
    width = max(12, *(len(c) for c in summary["per_class"]))
    lines = [f"{'class':<{width}}     AP  threshold  precision  recall     f1  support"]
    for c, m in summary["per_class"].items():
        ap = "    -" if m["ap"] is None else f"{m['ap']:5.3f}"
        lines.append(f"{c:<{width}}  {ap}  {m['threshold']:9.3f}  {m['precision']:9.3f}  {m['recall']:6.3f}  "
                     f"{m['f1']:5.3f}  {m['support']:7d}")
    for name in ("macro_avg", "micro_avg"):
        m = summary.get(name)
        if m:
            lines.append(f"{name.replace('_', ' '):<{width}}  {'':5}  {'':9}  {m['precision']:9.3f}  {m['recall']:6.3f}  "
                         f"{m['f1']:5.3f}  {m['support']:7d}")
    maps = ", ".join(f"mAP {kind} {summary[key]:.3f}" for kind, key in (("macro", "map_macro"), ("micro", "map_micro"))
                     if summary.get(key) is not None)
    lines.append(f"{maps}; subset accuracy {summary['subset_accuracy']:.3f}, Hamming loss "
                 f"{summary['hamming_loss']:.4f}")
    return "\n".join(lines)


@dataclass
class EpochStats:
    """One row of the training history (an epoch, or a chunk of L-BFGS iterations)."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float  # the whole epoch, validation included
    train_seconds: float  # the training pass alone


def write_history_csv(path: Path, history, unit: str = "epoch") -> None:
    from ..files import atomic_write, csv_table

    atomic_write(path, csv_table(
        [unit, "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "train_seconds"],
        ([s.epoch, f"{s.train_loss:.6f}", f"{s.train_acc:.6f}", f"{s.val_loss:.6f}", f"{s.val_acc:.6f}",
          f"{s.lr:.3e}", f"{s.seconds:.3f}", f"{s.train_seconds:.3f}"] for s in history)).encode())


def read_history_csv(path: Path) -> tuple[list, str]:
    """What `write_history_csv` wrote: (EpochStats rows, unit)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        unit = reader.fieldnames[0] if reader.fieldnames else "epoch"
        return [EpochStats(int(r.pop(unit)), **{k: float(v) for k, v in r.items()}) for r in reader], unit


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The mean recall of the classes present in `y_true` (scikit-learn's; its warning about
    predicted classes absent from `y_true` is what `classes_without_images` records)."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    if not len(y_true):
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(balanced_accuracy_score(y_true, y_pred))
