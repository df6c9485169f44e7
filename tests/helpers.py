"""Test helpers: tiny synthetic datasets and the shared real datasets."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "assets" / "datasets"


def shared_dataset(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"shared dataset {path} is absent (CI always has ../shared)")
    return path


def make_image(path: Path, color: tuple[int, int, int], size=(64, 48), seed: int = 0) -> Path:
    """A noisy image of one dominant colour, so a linear probe can learn the class."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(color) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


COLORS = {"blue": (30, 60, 200), "red": (200, 40, 30), "green": (40, 180, 60)}


def make_dataset(root: Path, classes=("blue", "red"), n_train=6, n_val=3, with_val=True) -> Path:
    for ci, c in enumerate(classes):
        for i in range(n_train):
            make_image(root / "train" / c / f"{c}{i}.png", COLORS[c], seed=ci * 100 + i)
        if with_val:
            for i in range(n_val):
                make_image(root / "val" / c / f"{c}{i}.jpg", COLORS[c], seed=ci * 100 + 50 + i)
    return root


# Machine epsilon (the spacing of numbers near 1) of the precisions tests compare in: a tolerance
# that holds in fp32 and in bf16 is written in these, not as one fixed number.
EPS = {"fp32": 2.0 ** -23, "bf16": 2.0 ** -8}


def eps(precision: str) -> float:
    return EPS[precision]


@contextlib.contextmanager
def interrupted_after_first_epoch():
    """Within the block, training stops as Ctrl-C would after its first epoch: a last subscriber
    of `loop.fit` raises KeyboardInterrupt at its end (fit keeps that epoch and its checkpoint)."""
    from transferkit.training import loop

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "fit", interrupting_fit(1))
        yield


def interrupting_fit(epoch: int):
    """`loop.fit`, with a last subscriber raising KeyboardInterrupt (Ctrl-C) at `epoch`'s end."""
    from transferkit.training import loop

    real_fit = loop.fit

    class CtrlC(loop.Subscriber):
        def epoch_end(self, state, stats):
            if stats.epoch == epoch:
                raise KeyboardInterrupt

    def fit(step, train_loader, val_loader, epochs, subscribers=(), *args, **kwargs):
        return real_fit(step, train_loader, val_loader, epochs, [*subscribers, CtrlC()], *args, **kwargs)

    return fit


def file_tree(root: Path) -> dict[str, str]:
    """Every file under `root` (its path inside it) with its content's sha256: equal before and
    after a command means nothing there was moved, renamed or changed."""
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def make_multilabel(root: Path, n: int = 24, classes=("blue", "red", "green"), delim: str = " ") -> Path:
    """Multi-label images: each of `n` images shows one, two or none of `classes` (a vertical band
    of each colour it has, on grey), listed in root/labels.csv (path, labels joined by `delim`);
    returns that file. The label sets cycle, so every set has images on both sides of a split."""
    sets = [(0,), (1,), (2,), (0, 1), (1, 2), (0, 2), ()]
    rng = np.random.default_rng(0)
    rows = ["path,labels"]
    for i in range(n):
        chosen = sets[i % len(sets)]
        arr = np.clip(128 + rng.normal(0, 20, (48, 64, 3)), 0, 255)
        for j, c in enumerate(chosen):
            arr[:, j * 32:(j + 1) * 32] = np.clip(np.array(COLORS[classes[c]]) + rng.normal(0, 20, (48, 32, 3)), 0, 255)
        path = root / "images" / f"img{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr.astype(np.uint8)).save(path)
        rows.append(f"images/{path.name},{delim.join(classes[c] for c in chosen)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


BACKBONE_FILE = "backbone.safetensors"  # (cache.Cache.backbone_file: features/<key>/backbone.safetensors)


def seed_cache(root, made_by_tests) -> None:
    """Hard links in the cache at `root` to the conversions and backbone weights files in
    `made_by_tests` (the `conversions` folder)."""
    engines = root / "engines"
    engines.mkdir(parents=True, exist_ok=True)
    for made in made_by_tests.glob("*.onnx"):
        os.link(made, engines / made.name)
    for made in made_by_tests.glob(f"*.{BACKBONE_FILE}"):
        folder = root / "features" / made.name.split(".", 1)[0]
        folder.mkdir(parents=True, exist_ok=True)
        os.link(made, folder / BACKBONE_FILE)


def keep_made(root, made_by_tests) -> None:
    """What the cache at `root` made that `made_by_tests` lacks, linked there (`seed_cache`)."""
    found = [(made, made.name) for made in (root / "engines").glob("*.onnx")]
    found += [(made, f"{made.parent.name}.{BACKBONE_FILE}") for made in (root / "features").glob(f"*/{BACKBONE_FILE}")]
    for made, name in found:
        if not (made_by_tests / name).exists():
            os.link(made, made_by_tests / name)
