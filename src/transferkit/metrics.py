"""Classification metrics (scikit-learn) and the run's plots (matplotlib)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def summarize(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy, per-class accuracy (= recall), precision, F1, support,
    and the confusion matrix (rows: actual, columns: predicted)."""
    from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix,
                                 precision_recall_fscore_support)

    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    per_class = {
        c: {"accuracy": float(recall[i]), "precision": float(precision[i]), "f1": float(f1[i]),
            "support": int(support[i])}
        for i, c in enumerate(classes)
    }
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def format_table(summary: dict) -> str:
    width = max(8, *(len(c) for c in summary["per_class"]))
    lines = [f"{'class':<{width}}  accuracy  precision     f1  support"]
    for c, m in summary["per_class"].items():
        lines.append(f"{c:<{width}}  {m['accuracy']:8.3f}  {m['precision']:9.3f}  {m['f1']:5.3f}  {m['support']:7d}")
    lines.append(f"{'overall':<{width}}  {summary['accuracy']:8.3f}  (balanced accuracy {summary['balanced_accuracy']:.3f})")
    return "\n".join(lines)


def write_history_csv(path: Path, history, unit: str = "epoch") -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([unit, "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "train_seconds"])
        for s in history:
            w.writerow([s.epoch, f"{s.train_loss:.6f}", f"{s.train_acc:.6f}", f"{s.val_loss:.6f}",
                        f"{s.val_acc:.6f}", f"{s.lr:.3e}", f"{s.seconds:.3f}", f"{s.train_seconds:.3f}"])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(path: Path, history, best_epoch: int, unit: str = "epoch") -> None:
    """Loss and accuracy per epoch (or per L-BFGS `unit`), the kept epoch marked."""
    plt = _pyplot()
    epochs = [s.epoch for s in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [s.train_loss for s in history], label="train")
    ax1.plot(epochs, [s.val_loss for s in history], label="val")
    ax1.set(title="loss", xlabel=unit)
    ax2.plot(epochs, [s.train_acc for s in history], label="train")
    ax2.plot(epochs, [s.val_acc for s in history], label="val")
    ax2.set(title="accuracy", xlabel=unit, ylim=(0, 1.01))
    for ax in (ax1, ax2):
        if best_epoch and unit == "epoch":
            ax.axvline(best_epoch, color="gray", linestyle=":", label=f"best epoch {best_epoch}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(path: Path, matrix: list[list[int]], classes: list[str]) -> None:
    plt = _pyplot()
    cm = np.asarray(matrix)
    n = len(classes)
    size = min(40.0, max(4.5, 0.45 * n + 2.5))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), labels=classes, rotation=45 if n > 2 else 0, ha="right" if n > 2 else "center")
    ax.set_yticks(range(n), labels=classes)
    ax.set(xlabel="predicted", ylabel="actual", title="confusion matrix (counts)")
    if n <= 30:
        high = cm.max() / 2 if cm.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if cm[i, j] > high else "black", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
