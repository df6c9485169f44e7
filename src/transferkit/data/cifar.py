"""The CIFAR-10 "python version" dataset (data_batch_1..5, test_batch, batches.meta), read safely.

The batches are Python pickles. Unpickling a file runs whatever it names, so they are read with
an unpickler that accepts only what CIFAR batches contain (dicts, lists, bytes and numpy uint8
arrays) and refuses anything else with a one-line error.

The images are written once as PNG files into the cache, laid out as class folders (train/ from the
data batches, val/ from test_batch), so every other part of transferkit (decode and feature caches,
predict, the report's image grids) treats them like any image folder. The folder is keyed by the
batch files' names, sizes and mtimes, written to a temporary folder and renamed when complete.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import UserError

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
SIDE = 32  # CIFAR images are 32x32 RGB

# (module, name) pairs a CIFAR batch may reference: numpy's array reconstruction (numpy 1 and 2
# module names) and the bytes helper that protocol-2 pickles written by Python 3 use.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def find(root: Path) -> Path | None:
    """The folder holding the CIFAR-10 batches: `root` itself or root/cifar-10-batches-py."""
    for folder in (root, root / "cifar-10-batches-py"):
        if (folder / "batches.meta").is_file() and (folder / "test_batch").is_file():
            return folder
    return None


def read_batch(path: Path) -> dict:
    """One batch: {"data": uint8 (N, 3072), "labels": list[int], "filenames": list[str]} (or the
    meta dict). Raises `UserError` naming the file when it is not a valid CIFAR batch."""
    try:
        with open(path, "rb") as f:
            raw = _BatchUnpickler(io.BufferedReader(f), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise UserError(f"{path}: not a CIFAR-10 python batch ({exc})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: not a CIFAR-10 python batch (a {type(raw).__name__}, not a dict)")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}


def _images(batch: dict, path: Path) -> tuple[np.ndarray, list[int]]:
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE \
            or labels is None or len(labels) != data.shape[0]:
        raise UserError(f"{path}: not a CIFAR-10 python batch (expected 'data' (N, 3072) and N 'labels')")
    return data.astype(np.uint8, copy=False).reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1), list(labels)


def class_names(folder: Path) -> list[str]:
    meta = read_batch(folder / "batches.meta")
    names = meta.get("label_names")
    if not names:
        raise UserError(f"{folder / 'batches.meta'}: no label_names")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _key(folder: Path, batches: list[Path]) -> str:
    h = hashlib.sha256(str(folder.resolve()).encode())
    for p in batches:
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def materialize(folder: Path, datasets_dir: Path) -> Path:
    """The batches in `folder` as datasets_dir/cifar10-<key>/{train,val}/<class>/*.png (made
    once; later calls return the existing folder)."""
    from PIL import Image

    train = [folder / n for n in TRAIN_BATCHES if (folder / n).is_file()]
    if not train:
        raise UserError(f"{folder}: CIFAR-10 layout without any data_batch_1..5 file")
    batches = train + [folder / "test_batch", folder / "batches.meta"]
    target = Path(datasets_dir) / f"cifar10-{_key(folder, batches)}"
    if (target / "COMPLETE").is_file():
        return target
    names = class_names(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".cifar-", dir=target.parent))
    try:
        for split, files in (("train", train), ("val", [folder / "test_batch"])):
            for name in names:
                (tmp / split / name).mkdir(parents=True)
            for path in files:
                images, labels = _images(read_batch(path), path)
                for i, (img, label) in enumerate(zip(images, labels)):
                    if not 0 <= int(label) < len(names):
                        raise UserError(f"{path}: label {label} of image {i} is not one of {len(names)} classes")
                    Image.fromarray(img).save(tmp / split / names[int(label)] / f"{path.name}_{i:05d}.png",
                                              compress_level=1)
        (tmp / "COMPLETE").write_text("")
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if (target / "COMPLETE").is_file():  # another process finished first
            return target
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
