"""A run's evaluation and report files kept in the cache by a digest of everything that made them,
so that a run which would write the same files (a warm run: the same images, features, head and
options) copies them instead of importing scikit-learn and matplotlib to make them again (#41:
those imports and the plots were most of a warm run's time). Kept: metrics.json,
predictions.csv, the plots and the heatmaps, with the note the page prints under the confusion
matrix; report.html and misclassified.csv are written fresh each run (the page names the run
and its settings). No torch, no scikit-learn, no matplotlib here."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np

# +1 when what the evaluation or the report writes changes (a new plot, another metric), so that
# nothing written by an earlier version is copied
MEMO_VERSION = 1
NAME = "report"  # the entry's name in the cache's store
EVALUATION_FILES = ("metrics.json", "predictions.csv")
REPORT_FILES = ("curves.png", "confusion_matrix.png", "confusion_matrix_normalized.png", "reliability.png",
                "pr_curves.png", "cooccurrence.png", "cooccurrence_predicted.png", "predictions.png",
                "top_losses.png", "heatmaps.json")
NOTE = "confusion_note.txt"  # (in the entry only)
# the modules (under transferkit/) whose code makes the kept files: part of the digest
MAKERS = ("evaluation/report.py", "evaluation/plots.py", "evaluation/metrics.py", "evaluation/rows.py",
          "evaluation/explained.py", "prediction/heatmaps.py", "task.py")


def key(paths: list[str], arrays: dict[str, np.ndarray | None], about: dict) -> str:
    """The digest of what a run's evaluation files depend on: the val images (each by path, size
    and modification time: the plots show them), the arrays evaluated (labels, logits, OOD
    scores), `about` (the classes, the task, the skipped files and data health, the OOD threshold,
    the kept epoch, the losses and accuracies of the history: the curves; not its seconds), and
    the code that writes them. `with_model` makes it the report's."""
    from ..cache import image_key

    h = hashlib.sha256(json.dumps([MEMO_VERSION, about], sort_keys=True, default=str).encode())
    for source in sorted(MAKERS):  # the code that writes them: an edited plot is never copied stale
        h.update((Path(__file__).parents[1] / source).read_bytes())
    for name, arr in sorted(arrays.items()):
        if arr is not None:
            arr = np.ascontiguousarray(arr)
            h.update(f"{name}|{arr.dtype.str}|{arr.shape}".encode())
            h.update(arr.tobytes())
    for path in paths:
        h.update(image_key(path).encode())
    return h.hexdigest()[:48]


def with_model(digest: str, run_dir: Path) -> str:
    """`digest` (`key`) made the report's: with the run's model (model.json and
    model.safetensors), whose heatmaps the report shows."""
    from ..files import file_sha256

    h = hashlib.sha256(f"report|{digest}".encode())
    for name in ("model.json", "model.safetensors"):
        file = run_dir / name
        h.update(f"{name}|{file_sha256(file) if file.is_file() else ''}".encode())
    return h.hexdigest()[:48]


def restore(store, digest: str, run_dir: Path, report: bool = True) -> str | None:
    """The kept files of `digest` written into `run_dir` (not `report`: the evaluation's only);
    returns the confusion matrix's note ("" without a report), or None where nothing is kept (or
    it does not read back: the run then makes its files)."""
    from ..files import atomic_write

    if store is None:
        return None
    data = store.get(digest, NAME)
    if data is None:
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(data.tobytes())) as archive:
            found = {name: archive.read(name) for name in archive.namelist()}
    except (zipfile.BadZipFile, KeyError, ValueError, OSError):
        return None
    if not all(name in found for name in EVALUATION_FILES) or any(not _allowed(name) for name in found):
        return None
    for name, body in found.items():
        if name != NOTE and (report or name in EVALUATION_FILES):
            (run_dir / name).parent.mkdir(exist_ok=True)
            atomic_write(run_dir / name, body)
    return found.get(NOTE, b"").decode("utf-8", "replace") if report else ""


def keep(store, digest: str, run_dir: Path, confusion_note: str | None) -> None:
    """The evaluation's (and, with `confusion_note`, the report's) files of `run_dir` kept under
    `digest`."""
    if store is None:
        return
    from .explained import heatmap_files

    names = list(EVALUATION_FILES)
    if confusion_note is not None:
        names += [n for n in REPORT_FILES if (run_dir / n).is_file()]
        names += [str(p.relative_to(run_dir)) for p in heatmap_files(run_dir).values()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:  # (PNG and JPEG: compressed already)
        for name in names:
            archive.write(run_dir / name, name)
        if confusion_note is not None:
            archive.writestr(NOTE, confusion_note)
    store.put(digest, NAME, np.frombuffer(buffer.getvalue(), dtype=np.uint8))
    store.flush()


def _allowed(name: str) -> bool:
    """A name the entry may write into a run folder: one of ours, or a heatmap (heatmaps/NNN.jpg)."""
    from .explained import FOLDER

    parts = Path(name).parts
    return name in (*EVALUATION_FILES, *REPORT_FILES, NOTE) or (
        len(parts) == 2 and parts[0] == FOLDER and parts[1].endswith(".jpg") and not parts[1].startswith("."))
