"""Adding a class to a trained model (#42, part 1): `train DATA --from RUN` against retraining
from the ImageNet weights, side by side in one run.

    python bench/continue_run.py [--dataset flower_photos_small] [--new CLASS] [--epochs 8] [--more 2]

The parent is trained on every class of DATA but `--new` (default: the last), in a folder of links
(the shared data is never changed); then the new class is linked into that folder, as a user adds
one, and on all the classes:
- finetune: the parent fine-tuned for `--epochs`; its child `--from` it for `--more` epochs, the
  new class's head row started from its images' mean features (imprinted), and again with a
  random row; and a run from the ImageNet weights for `--epochs` (what "starting over" costs);
- linear (the default): the parent, its child `--from` it (the old images' features are cached:
  only the new class's are extracted), and a run on a cache without any features (the conversion
  kept: the first run on a dataset).
Prints, per run, the accuracy on the old classes' val images (forgetting), on the new class's and
on all, with wall and CPU seconds; and the child's old-class accuracy and time as a share of
the retrained run's.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "assets" / "datasets"


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def linked(data: Path, root: Path, classes: set[str]) -> Path:
    """A folder of links to DATA's `classes` folders (train and val), made or added to: the
    user's folder to which a class is added (the same paths before and after)."""
    out = root / data.name
    for split in ("train", "val"):
        for folder in sorted((data / split).iterdir()):
            if folder.is_dir() and folder.name in classes and not (out / split / folder.name).exists():
                (out / split).mkdir(parents=True, exist_ok=True)
                os.symlink(folder, out / split / folder.name)
    return out


def cold_cache(cache: Path, out: Path) -> Path:
    """A cache holding `cache`'s converted networks and prepared backbone weights, no features:
    a run on it extracts every image, as the first run on a dataset does."""
    import shutil

    shutil.copytree(cache / "engines", out / "engines")
    for weights in (cache / "features").glob("*/backbone.safetensors"):
        (out / "features" / weights.parent.name).mkdir(parents=True)
        shutil.copy2(weights, out / "features" / weights.parent.name / weights.name)
    return out


def scores(run: Path, data: Path, new: str) -> tuple[float, float, float]:
    """(old classes' val accuracy, the new class's, all) of RUN's model on DATA/val."""
    import transferkit

    images = [(str(p), p.parent.name) for p in sorted((data / "val").glob("*/*")) if p.is_file()]
    with transferkit.load(run) as model:
        labels = [p.label for p in model.predict([path for path, _ in images])]
    right = np.array([label == truth for label, (_, truth) in zip(labels, images)])
    old = np.array([truth != new for _, truth in images])
    return (float(right[old].mean()), float(right[~old].mean()) if (~old).any() else float("nan"),
            float(right.mean()))


def timed(label: str, rows: list, data: Path, new: str, **options) -> Path:
    import transferkit

    start, cpu = time.perf_counter(), cpu_seconds()
    run = Path(transferkit.train(str(data), quiet=True, no_report=True, **options).path)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    rows.append((label, *scores(run, data, new), wall, cpu))
    print(f"  {label}: done in {wall:.0f} s", file=sys.stderr, flush=True)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="flower_photos_small")
    ap.add_argument("--new", help="the class added (default: the last)")
    ap.add_argument("--epochs", type=int, default=8, help="the parent's and the retrained run's epochs")
    ap.add_argument("--more", type=int, default=2, help="the child's epochs")
    args = ap.parse_args()
    from transferkit.training import parent

    data = SHARED / args.dataset
    if not data.is_dir():
        sys.exit(f"{data} not found (../shared/assets/datasets)")
    new = args.new or sorted(p.name for p in (data / "train").iterdir() if p.is_dir())[-1]
    root = Path(tempfile.mkdtemp(prefix="tk-continue-"))
    os.environ["TRANSFERKIT_CACHE"] = str(root / "cache")
    classes = {p.name for p in (data / "train").iterdir() if p.is_dir()}
    old_data = linked(data, root / "ft", classes - {new})
    rows: list = []
    common = dict(strategy="finetune", epochs=args.epochs)
    p = timed(f"finetune parent ({args.epochs} ep, without {new})", rows, old_data, new, out=str(root / "ft-parent"),
              **common)
    data = linked(data, root / "ft", classes)  # the new class added to the parent's folder
    timed(f"finetune --from parent ({args.more} ep, imprinted row)", rows, data, new, from_run=str(p),
          epochs=args.more, out=str(root / "ft-child"))
    parent.NEW_ROWS = "random"
    try:
        timed(f"finetune --from parent ({args.more} ep, random row)", rows, data, new, from_run=str(p),
              epochs=args.more, out=str(root / "ft-child-random"))
    finally:
        parent.NEW_ROWS = "imprint"
    timed(f"finetune from ImageNet ({args.epochs} ep, all classes)", rows, data, new, out=str(root / "ft-scratch"),
          **common)
    old_data = linked(SHARED / args.dataset, root / "lin", classes - {new})
    p = timed(f"linear parent (without {new})", rows, old_data, new, out=str(root / "lin-parent"))
    data = linked(SHARED / args.dataset, root / "lin", classes)
    timed("linear --from parent", rows, data, new, from_run=str(p), out=str(root / "lin-child"))
    cold = cold_cache(root / "cache", root / "cold-cache")
    os.environ["TRANSFERKIT_CACHE"] = str(cold)
    timed("linear, no feature cached (all classes)", rows, data, new, out=str(root / "lin-scratch"))

    print(f"\n{args.dataset}: {new} added to {len(list((data / 'train').iterdir())) - 1} classes")
    print(f"{'run':<48} {'old cls':>8} {'new cls':>8} {'all':>7} {'wall s':>7} {'CPU s':>7}")
    for label, old, fresh, every, wall, cpu in rows:
        fresh_text = f"{100 * fresh:>7.1f}%" if fresh == fresh else f"{'-':>8}"  # (a parent has no new class)
        print(f"{label:<48} {100 * old:>7.1f}% {fresh_text} {100 * every:>6.1f}% {wall:>7.1f} {cpu:>7.1f}")
    child, scratch = rows[1], rows[3]
    print(f"finetune --from: old classes {100 * (child[1] - scratch[1]):+.1f} pt, all {100 * (child[3] - scratch[3]):+.1f} pt "
          f"against retraining, in {child[4] / scratch[4]:.2f}x its wall time ({child[5] / scratch[5]:.2f}x CPU); "
          f"imprinted - random new row: new class {100 * (rows[1][2] - rows[2][2]):+.1f} pt, "
          f"all {100 * (rows[1][3] - rows[2][3]):+.1f} pt")
    child, scratch = rows[5], rows[6]
    print(f"linear --from: all {100 * (child[3] - scratch[3]):+.1f} pt against a cold run, in "
          f"{child[4] / scratch[4]:.2f}x its wall time ({child[5] / scratch[5]:.2f}x CPU)")


if __name__ == "__main__":
    main()
