"""The run's plots: training curves, confusion matrices and image grids. Figures are drawn on
their own `matplotlib.figure.Figure` (no pyplot, no backend switch: the caller's matplotlib is
left as it was); the image grids are composed with Pillow. No torch here."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np

from ..errors import ImageDecodeError

CONFUSION_MAX = 30  # classes drawn in a confusion matrix; more: the most-confused sub-matrix
RIGHT, WRONG = "#1f4fbf", "#c62828"  # title colors: blue when right, red when wrong


def figure(size: tuple[float, float]):
    """A matplotlib figure that renders with Agg whatever backend the process uses."""
    from matplotlib.figure import Figure

    return Figure(figsize=size)


def save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_curves(path: Path, history, best_epoch: int, unit: str = "epoch") -> None:
    """Loss and accuracy per epoch (or per L-BFGS `unit`), the kept epoch marked."""
    epochs = [s.epoch for s in history]
    fig = figure((10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [s.train_loss for s in history], label="train")
    ax1.plot(epochs, [s.val_loss for s in history], label="val")
    ax1.set(title="loss", xlabel=unit)
    ax2.plot(epochs, [s.train_acc for s in history], label="train")
    ax2.plot(epochs, [s.val_acc for s in history], label="val")
    ax2.set(title="accuracy", xlabel=unit, ylim=(0, 1.01))
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs (iterations) are whole numbers
    for ax in (ax1, ax2):
        if best_epoch and unit == "epoch":
            ax.axvline(best_epoch, color="gray", linestyle=":", label=f"best epoch {best_epoch}")
        ax.grid(alpha=0.3)
        ax.legend()
    save(fig, path)


def plain(name: str) -> str:
    """A class name as literal text for matplotlib (a folder named "$5 notes" is not math)."""
    return name.replace("$", r"\$")


def confusion_subset(cm: np.ndarray, limit: int = CONFUSION_MAX) -> list[int]:
    """All classes when there are at most `limit`; else the `limit` classes with the most errors
    (as actual or as predicted), in class order."""
    n = cm.shape[0]
    if n <= limit:
        return list(range(n))
    off = cm - np.diag(np.diag(cm))
    errors = off.sum(0) + off.sum(1)
    top = sorted(np.argsort(-errors, kind="stable")[:limit].tolist())
    return top


def plot_confusion(run_dir: Path, summary: dict, classes: list[str]) -> str:
    """confusion_matrix.png (counts) and confusion_matrix_normalized.png (each row sums to 1);
    above CONFUSION_MAX classes, the sub-matrix of the most-confused classes. Returns a note
    saying what was drawn."""
    cm = np.asarray(summary["confusion_matrix"])
    keep = confusion_subset(cm)
    note = (f"all {len(classes)} classes" if len(keep) == len(classes) else
            f"the {len(keep)} most-confused of {len(classes)} classes; the full matrix is in metrics.json")
    subtitle = "" if len(keep) == len(classes) else f"\n{note}"
    names = [plain(classes[i]) for i in keep]
    sub = cm[np.ix_(keep, keep)]
    rows = cm[keep].sum(1, keepdims=True)  # normalized by the full row: all of the class's images
    normalized = np.divide(sub, rows, out=np.zeros(sub.shape), where=rows > 0)
    _matrix(run_dir / "confusion_matrix.png", sub, names, f"confusion matrix (images){subtitle}", "d")
    _matrix(run_dir / "confusion_matrix_normalized.png", normalized, names,
            f"confusion matrix (share of each actual class){subtitle}", ".2f")
    return note


def plot_reliability(path: Path, cal: dict) -> None:
    """reliability.png: each confidence bin's accuracy against its confidence (the diagonal:
    perfectly calibrated), before and after the temperature, with the ECE of each."""
    fig = figure((5.5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1)
    for key, colour in (("before", "#d62728"), ("after", "#1f77b4")):
        bins = cal[key]["bins"]
        if bins:
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", color=colour,
                    label=f"{key} (ECE {cal[key]['ece']:.3f})")
    ax.set(xlabel="confidence (top probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02),
           title=f"reliability on the val images (temperature {cal['temperature']:.2f})")
    ax.legend(loc="upper left")
    save(fig, path)


def plot_multilabel(run_dir: Path, summary: dict, classes: list[str]) -> str:
    """Multi-label: pr_curves.png (each class's precision-recall curve, its AP in the legend) and
    cooccurrence.png / cooccurrence_predicted.png (images with both labels: the diagonal is each
    label's count), above CONFUSION_MAX classes the most frequent ones. Returns a note."""
    fig = figure((7, 5))
    ax = fig.subplots()
    per_class = summary.get("per_class") or {}
    for name, curve in (summary.get("pr_curves") or {}).items():
        ap = (per_class.get(name) or {}).get("ap")
        ax.plot(curve["recall"], curve["precision"], label=plain(f"{name} (AP {ap:.2f})" if ap is not None else name))
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"precision-recall per class (mAP {summary.get('map_macro') or 0:.3f})")
    if len(classes) <= 20:
        ax.legend(fontsize=7, loc="lower left", prop=font_properties(classes))
    save(fig, run_dir / "pr_curves.png")
    true, pred = np.asarray(summary["cooccurrence"]), np.asarray(summary["cooccurrence_predicted"])
    keep = sorted(np.argsort(-np.diag(true), kind="stable")[:CONFUSION_MAX].tolist())
    note = (f"all {len(classes)} classes" if len(keep) == len(classes) else
            f"the {len(keep)} most frequent of {len(classes)} classes; the full matrices are in metrics.json")
    names = [plain(classes[i]) for i in keep]
    _matrix(run_dir / "cooccurrence.png", true[np.ix_(keep, keep)], names, "labels together (true)", "d",
            ("label", "label"))
    _matrix(run_dir / "cooccurrence_predicted.png", pred[np.ix_(keep, keep)], names, "labels together (predicted)",
            "d", ("label", "label"))
    return note


def _matrix(path: Path, values: np.ndarray, names: list[str], title: str, fmt: str,
            axes: tuple[str, str] = ("predicted", "actual")) -> None:
    n = len(names)
    size = min(24.0, max(5.0, 0.5 * n + 3))
    fig = figure((size, size))
    ax = fig.subplots()
    ax.imshow(values, cmap="Blues", vmin=0)
    fp = font_properties(names)  # class names in any script (CJK: a font that has them)
    ax.set_xticks(range(n), labels=names, rotation=45 if n > 2 else 0, ha="right" if n > 2 else "center",
                  fontproperties=fp)
    ax.set_yticks(range(n), labels=names, fontproperties=fp)
    ax.set(xlabel=axes[0], ylabel=axes[1])
    ax.set_title(title)
    high = values.max() / 2 if values.size else 0
    font = 10 if n <= 10 else 8 if n <= 20 else 6
    for i in range(n):
        for j in range(n):
            if values[i, j] or i == j:
                ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=font,
                        color="white" if values[i, j] > high else "black")
    save(fig, path)


def thumbnail(path: str, side: int):
    """The image, shrunk to fit side x side; None when it cannot be read (moved, deleted)."""
    from ..data.decode import load_rgb

    try:
        img = load_rgb(path, min_short_side=side)
    except (ImageDecodeError, OSError):
        return None
    img.thumbnail((side, side))
    return img


CELL, PAD, LINE = 200, 8, 17  # image grids: image side, spacing, text line height (pixels)


def _dejavu() -> Path | None:
    """matplotlib's DejaVu Sans (found without importing matplotlib)."""
    from importlib.util import find_spec

    spec = find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=None)
def _glyphs(path: str) -> frozenset[int]:
    """The code points a font file has glyphs for (the first face of a collection)."""
    from fontTools.ttLib import TTFont

    try:
        with TTFont(path, fontNumber=0, lazy=True) as font:
            return frozenset(font.getBestCmap() or {})
    except Exception:  # noqa: BLE001 - an unreadable font file is simply not a candidate
        return frozenset()


@functools.lru_cache(maxsize=None)
def _system_fonts() -> tuple[str, ...]:
    from matplotlib import font_manager

    return tuple(sorted(font_manager.findSystemFonts()))


def font_for(texts) -> Path | None:
    """A font file with a glyph for every character of `texts` (class names in any script):
    DejaVu Sans when it has them all, else the first installed font that does (a CJK font for
    Chinese names), else None, after one warning saying what to install."""
    needed = {ord(c) for t in texts for c in str(t) if not c.isspace()}
    dejavu = _dejavu()
    if dejavu is not None and needed <= _glyphs(str(dejavu)):
        return dejavu
    for path in _system_fonts():
        if needed <= _glyphs(path):
            return Path(path)
    missing = "".join(sorted({chr(c) for c in needed - _glyphs(str(dejavu))} if dejavu else set()))[:10]
    _warn_once(f"no installed font has the characters {missing!r} of the class names: the plots show boxes for "
               "them (report.html shows them); install a font for that script (Debian: fonts-noto-cjk for CJK)")
    return dejavu


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def font_properties(texts):
    """matplotlib FontProperties of `font_for(texts)`, or None where the default font will do."""
    from matplotlib.font_manager import FontProperties

    path = font_for(texts)
    return None if path is None or path == _dejavu() else FontProperties(fname=str(path))


def _font(size: int, texts=()):
    """A Pillow font that can draw `texts`: see `font_for`; Pillow's default when none is found."""
    from PIL import ImageFont

    path = font_for(texts)
    return ImageFont.truetype(str(path), size) if path is not None else ImageFont.load_default(size)


def _fit(text: str, font, width: int) -> str:
    """`text` shortened with an ellipsis to fit `width` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def plot_grid(path: Path, rows: list[dict], title: str, show_actual: bool) -> None:
    """Images captioned with the prediction and its probability: blue when right, red when wrong
    (with the actual class); `show_actual` always names it. Composed with Pillow: a contact sheet
    needs no axes, and this takes 0.12 s where matplotlib took 0.48 s (16 images)."""
    from PIL import Image, ImageDraw

    cols = 4 if len(rows) > 9 else 3
    n_rows = max(1, -(-len(rows) // cols))
    cell_w, cell_h = CELL + 2 * PAD, CELL + 2 * LINE + 2 * PAD
    top = 2 * LINE + PAD
    sheet = Image.new("RGB", (cols * cell_w, top + n_rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    texts = [title] + [r[k] for r in rows for k in ("predicted", "actual")]
    font, big = _font(13, texts), _font(16, texts)
    draw.text((sheet.width // 2, PAD + LINE // 2), title, fill="black", font=big, anchor="mm")
    if not rows:
        draw.text((PAD, top + PAD), "no misclassified images", fill="black", font=big)
    for k, r in enumerate(rows):
        x, y = (k % cols) * cell_w + PAD, top + (k // cols) * cell_h
        ok = r["actual"] == r["predicted"]
        lines = [f"{r['predicted']} ({r['probability']:.0%})"]
        if show_actual or not ok:
            lines.append(f"actual: {r['actual']}")
        for i, line in enumerate(lines):
            draw.text((x + CELL // 2, y + LINE * i + LINE // 2), _fit(line, font, CELL), fill=RIGHT if ok else WRONG,
                      font=font, anchor="mm")
        y += 2 * LINE
        img = thumbnail(r["path"], CELL)
        if img is None:
            draw.rectangle((x, y, x + CELL - 1, y + CELL - 1), outline="#bbbbbb")
            draw.text((x + CELL // 2, y + CELL // 2), "image not found", fill="black", font=font, anchor="mm")
        else:
            sheet.paste(img, (x + (CELL - img.width) // 2, y))  # right under its caption
    sheet.save(path, compress_level=1)  # photos barely compress: save the time


def plot_lr_find(lrs: list[float], losses: list[float], suggestion: float, path: Path) -> None:
    """The LR range test: smoothed training loss against the learning rate, the suggestion marked."""
    fig = figure((7, 4))
    ax = fig.subplots()
    ax.plot(lrs, losses)
    ax.axvline(suggestion, color="red", linestyle=":", label=f"suggested {suggestion:.2e}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)", title="LR range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    save(fig, path)
