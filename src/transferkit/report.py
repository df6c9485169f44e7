"""What a run's evaluation leaves behind, and the one page that shows it all.

`write_evaluation` turns validation logits into `metrics.json` and `predictions.csv` (one row per
image: path, actual, predicted, probabilities). `render` makes everything else from those files
(and the run's `metrics.csv`, `config.yaml`, `results.json` where present): `confusion_matrix.png`
and its row-normalized twin, `curves.png`, `predictions.png`, `top_losses.png`,
`misclassified.csv` and a self-contained `report.html` (images embedded, no network). So
`transferkit report RUN` can rebuild the report without the model.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np

from . import metrics
from .errors import ImageDecodeError, UserError

CONFUSION_MAX = 30  # classes drawn in a confusion matrix; more: the most-confused sub-matrix
GRID = 16  # validation images in predictions.png
TOP_LOSSES = 9  # images in top_losses.png
REPORT_THUMBS = 60  # misclassified images shown in report.html
RIGHT, WRONG = "#1f4fbf", "#c62828"  # title colors: blue when right, red when wrong


def write_evaluation(out_dir: Path, paths: list[str], y_true: np.ndarray, logits, classes: list[str],
                     extra: dict | None = None) -> dict:
    """metrics.json (scikit-learn's numbers, plus `extra`) and predictions.csv; returns the summary."""
    from scipy.special import softmax

    probs = softmax(np.asarray(logits, dtype=np.float64), axis=1)
    y_pred = probs.argmax(1)
    summary = metrics.summarize(y_true, y_pred, classes, probs)
    summary.update({"num_images": len(paths), "classes": classes, **(extra or {})})
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(out_dir / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "actual", "predicted", "probability", "actual_probability"])
        for path, t, p, row in zip(paths, y_true, y_pred, probs):
            w.writerow([path, classes[t], classes[p], f"{row[p]:.6f}", f"{row[t]:.6f}"])
    return summary


def read_predictions(run_dir: Path) -> list[dict]:
    with open(run_dir / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["probability"], r["actual_probability"] = float(r["probability"]), float(r["actual_probability"])
    return rows


def render(run_dir: str | Path) -> Path:
    """All plots, misclassified.csv and report.html of a run (or eval) folder, from its
    metrics.json and predictions.csv. Returns the report's path."""
    run_dir = Path(run_dir).expanduser()
    for name in ("metrics.json", "predictions.csv"):
        if not (run_dir / name).is_file():
            raise UserError(f"{run_dir} has no {name}: not a transferkit run or eval folder (a run made "
                            "before reports existed lacks it: `transferkit eval RUN` writes a fresh one)")
    summary = json.loads((run_dir / "metrics.json").read_text())
    classes = summary["classes"]
    rows = read_predictions(run_dir)
    wrong = sorted((r for r in rows if r["actual"] != r["predicted"]), key=lambda r: -r["probability"])
    with open(run_dir / "misclassified.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "actual", "predicted", "probability"])
        w.writerows([r["path"], r["actual"], r["predicted"], f"{r['probability']:.4f}"] for r in wrong)
    confusion_note = plot_confusion(run_dir, summary, classes)
    history = run_dir / "metrics.csv"
    if history.is_file():
        results = run_dir / "results.json"
        best = json.loads(results.read_text()).get("best_epoch") if results.is_file() else None
        epochs, unit = metrics.read_history_csv(history)
        metrics.plot_curves(run_dir / "curves.png", epochs, best or 0, unit)
    plot_grid(run_dir / "predictions.png", _sample(rows, GRID), "validation predictions", show_actual=False)
    plot_grid(run_dir / "top_losses.png", wrong[:TOP_LOSSES], "most confidently wrong", show_actual=True)
    page = run_dir / "report.html"
    page.write_text(report_html(run_dir, summary, wrong, confusion_note), encoding="utf-8")
    return page


# The Worker's child: lowest CPU priority (where the OS has it), then `_serve`.
_CHILD = "import os; hasattr(os, 'nice') and os.nice(19); from transferkit.report import _serve; _serve()"


class Worker:
    """A child process for a run's evaluation and report, started before training: it imports
    scikit-learn and matplotlib (about 1.1 s on one core, at the lowest CPU priority) while this
    process imports torch and trains. `evaluate` (`write_evaluation`) and `render` then run there
    and this process only waits. If the child cannot start or fails, the work is done here
    instead, with a warning naming the reason: the outputs are the same either way. `close()` (or
    leaving the `with` block) ends the child."""

    def __init__(self, warn=None):
        self.warn = warn
        package_root = str(Path(__file__).resolve().parents[1])  # the same transferkit in the child
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        except OSError:
            self.proc = None

    def evaluate(self, out_dir: Path, paths: list[str], y_true: np.ndarray, logits, classes: list[str],
                 extra: dict | None = None) -> dict:
        return self._call("evaluate", out_dir, paths, np.asarray(y_true), np.asarray(logits), classes, extra)

    def render(self, run_dir: Path) -> Path:
        return self._call("render", run_dir)

    def _call(self, name: str, *args):
        if self.proc is not None:
            try:
                pickle.dump((name, args), self.proc.stdin)
                self.proc.stdin.flush()
                ok, value = pickle.load(self.proc.stdout)
            except (OSError, EOFError, pickle.PickleError) as exc:
                ok, value = False, f"it stopped ({type(exc).__name__})"
                self.close()
            if ok:
                return value
            if self.warn:
                self.warn(f"the report process failed: {value}; doing its work here")
        return _WORK[name](*args)

    def close(self) -> None:
        """No more requests: the child exits on its own (not waited for: tearing down its
        interpreter takes 0.3 s and concerns nobody)."""
        if self.proc is not None:
            proc, self.proc = self.proc, None
            for pipe in (proc.stdin, proc.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _serve() -> None:
    """The child of `Worker`: import what the work needs, then answer requests (pickled
    (name, args) on stdin; (ok, result or error text) on stdout) until stdin closes."""
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the replies
    metrics.pyplot()
    import scipy.special  # noqa: F401 - imported now, while the parent trains
    import sklearn.metrics  # noqa: F401

    while True:
        try:
            name, args = pickle.load(requests)
        except EOFError:
            return
        try:
            reply = (True, _WORK[name](*args))
        except Exception as exc:  # noqa: BLE001 - the parent redoes the work and raises it there
            reply = (False, f"{type(exc).__name__}: {exc}")
        pickle.dump(reply, replies)
        replies.flush()


_WORK = {"evaluate": write_evaluation, "render": render}  # what a Worker does, by name


# -- plots ---------------------------------------------------------------------------------------


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


def _matrix(path: Path, values: np.ndarray, names: list[str], title: str, fmt: str) -> None:
    plt = metrics.pyplot()
    n = len(names)
    size = min(24.0, max(5.0, 0.5 * n + 3))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(values, cmap="Blues", vmin=0)
    ax.set_xticks(range(n), labels=names, rotation=45 if n > 2 else 0, ha="right" if n > 2 else "center")
    ax.set_yticks(range(n), labels=names)
    ax.set(xlabel="predicted", ylabel="actual")
    ax.set_title(title)
    high = values.max() / 2 if values.size else 0
    font = 10 if n <= 10 else 8 if n <= 20 else 6
    for i in range(n):
        for j in range(n):
            if values[i, j] or i == j:
                ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=font,
                        color="white" if values[i, j] > high else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _sample(rows: list[dict], k: int) -> list[dict]:
    """k rows spread over the validation set (a fixed draw: the same images every time)."""
    if len(rows) <= k:
        return rows
    idx = np.sort(np.random.default_rng(0).choice(len(rows), k, replace=False))
    return [rows[i] for i in idx]


def _thumbnail(path: str, side: int):
    """The image, shrunk to fit side x side; None when it cannot be read (moved, deleted)."""
    from .images import load_rgb

    try:
        img = load_rgb(path, min_short_side=side)
    except (ImageDecodeError, OSError):
        return None
    img.thumbnail((side, side))
    return img


CELL, PAD, LINE = 200, 8, 17  # image grids: image side, spacing, text line height (pixels)


def _font(size: int):
    """matplotlib's DejaVu Sans (found without importing matplotlib), else Pillow's default."""
    from importlib.util import find_spec

    from PIL import ImageFont

    spec = find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size)


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
    font, big = _font(13), _font(16)
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
        img = _thumbnail(r["path"], CELL)
        if img is None:
            draw.rectangle((x, y, x + CELL - 1, y + CELL - 1), outline="#bbbbbb")
            draw.text((x + CELL // 2, y + CELL // 2), "image not found", fill="black", font=font, anchor="mm")
        else:
            sheet.paste(img, (x + (CELL - img.width) // 2, y))  # right under its caption
    sheet.save(path, compress_level=1)  # photos barely compress: save the time


# -- the page ------------------------------------------------------------------------------------


def _data_uri(raw: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def _img_tag(path: Path, alt: str) -> str:
    if not path.is_file():
        return ""
    return (f'<figure><img src="{_data_uri(path.read_bytes(), "image/png")}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(alt)}</figcaption></figure>")


def _thumb_uri(path: str) -> str | None:
    img = _thumbnail(path, 160)
    if img is None:
        return None
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return _data_uri(buf.getvalue(), "image/jpeg")


def _table(header: list[str], rows: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _settings(run_dir: Path) -> list[list]:
    rows: list[list] = []
    results = run_dir / "results.json"
    if results.is_file():
        r = json.loads(results.read_text())
        for key in ("backbone", "strategy", "strategy_reason", "num_train", "num_val", "val_source",
                    "device", "precision", "wall_s"):
            if r.get(key) is not None:
                rows.append([key, r[key]])
    config = run_dir / "config.yaml"
    if config.is_file():
        import yaml

        for key, value in (yaml.safe_load(config.read_text()) or {}).items():
            if value is not None and key not in {k for k, _ in rows}:
                rows.append([key, value])
    return rows


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}thead{background:#f3f3f3}
figure{margin:1em 0}figure img{max-width:100%}figcaption{color:#666;font-size:.9em}
.thumbs{display:flex;flex-wrap:wrap;gap:.6em}.thumbs figure{margin:0;width:170px}
.thumbs img{width:160px;height:160px;object-fit:contain;background:#eee}
.wrong{color:#c62828}.note{color:#666}
"""


def report_html(run_dir: Path, summary: dict, wrong: list[dict], confusion_note: str) -> str:
    """One self-contained page: settings, metrics, plots, misclassified images (all embedded)."""
    e = html.escape
    classes = summary["classes"]
    def row(name: str, m: dict) -> list:
        return [name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", m["support"]]

    per_class = [row(c, m) for c, m in summary["per_class"].items()]
    per_class += [row(n.replace("_", " "), summary[n]) for n in ("macro_avg", "weighted_avg") if summary.get(n)]
    overall = [["accuracy", f"{summary['accuracy']:.4f}"], ["balanced accuracy", f"{summary['balanced_accuracy']:.4f}"]]
    if summary.get("top5_accuracy") is not None:
        overall.append(["top-5 accuracy", f"{summary['top5_accuracy']:.4f}"])
    overall.append(["images", summary.get("num_images", sum(m["support"] for m in summary["per_class"].values()))])
    confused = [[p["actual"], p["predicted"], p["count"]] for p in summary.get("most_confused", [])]
    thumbs = []
    for r in wrong[:REPORT_THUMBS]:
        uri = _thumb_uri(r["path"])
        img = f'<img src="{uri}" alt="{e(Path(r["path"]).name)}">' if uri else "<div>image not found</div>"
        thumbs.append(f'<figure>{img}<figcaption title="{e(r["path"])}">{e(Path(r["path"]).name)}<br>'
                      f'actual {e(r["actual"])}<br><span class="wrong">predicted {e(r["predicted"])} '
                      f'({r["probability"]:.0%})</span></figcaption></figure>')
    more = (f'<p class="note">{len(wrong) - REPORT_THUMBS} more in misclassified.csv</p>'
            if len(wrong) > REPORT_THUMBS else "")
    skipped = summary.get("skipped_files") or []
    plots = "".join(_img_tag(run_dir / name, caption) for name, caption in [
        ("curves.png", "training curves"),
        ("confusion_matrix.png", f"confusion matrix, counts: {confusion_note}"),
        ("confusion_matrix_normalized.png", "confusion matrix, row-normalized (recall on the diagonal)"),
        ("predictions.png", "validation predictions: blue right, red wrong"),
        ("top_losses.png", "top losses: the most confidently wrong predictions"),
    ])
    title = f"transferkit report: {run_dir.name}"
    # an eval folder: what was evaluated on what, then the settings of the run it evaluated
    evaluated = [[k, summary[k]] for k in ("run", "data") if summary.get(k)]
    settings = evaluated + _settings(Path(summary["run"]) if summary.get("run") else run_dir)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body>
<h1>{e(title)}</h1>
<p class="note">{len(classes)} classes; validation images: {summary.get('num_images', '')}.</p>
<h2>Summary</h2>{_table(["metric", "value"], overall, "overall")}
<h2>Per class</h2>{_table(["class", "precision", "recall", "f1", "support"], per_class, "per-class")}
<h2>Most confused</h2>{_table(["actual", "predicted", "images"], confused, "confused") if confused else "<p>none</p>"}
<h2>Plots</h2>{plots}
<h2>Misclassified images ({len(wrong)})</h2><div class="thumbs">{"".join(thumbs) or "<p>none</p>"}</div>{more}
{"<h2>Skipped files</h2>" + _table(["path", "reason"], [[s["path"], s["reason"]] for s in skipped]) if skipped else ""}
<h2>Settings</h2>{_table(["setting", "value"], settings, "settings")}
</body></html>
"""
