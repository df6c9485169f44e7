"""Adding a class to a trained model (#42, part 1): `train DATA --from RUN` against retraining
from the ImageNet weights, side by side in one run.

    python bench/continue_run.py [--dataset flower_photos_small] [--new CLASS] [--epochs 8] [--seeds 2]
                                 [--child-lr 1e-3]

The parent is trained on every class of DATA but `--new` (default: the last), in a folder of links
(the shared data is never changed); then the new class is linked into that folder, as a user adds
one, and on all the classes:
- finetune: the parent fine-tuned for `--epochs`; its child `--from` it with the defaults of a
  continued network (a quarter of the epochs at 0.3x the learning rate), the new class's head row
  started from its images' mean features (imprinted); again with a random row; with `--child-lr`
  (e.g. the parent's own 1e-3); and a run from the ImageNet weights for `--epochs` (what
  "starting over" costs), each once per seed;
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
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import SHARED, cpu_seconds  # noqa: E402


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
    ap.add_argument("--child-lr", type=float, help="also a child with this learning rate")
    ap.add_argument("--seeds", type=int, default=1, help="the finetune runs, once per seed")
    args = ap.parse_args()
    from transferkit.training import parent

    data = SHARED / args.dataset
    if not data.is_dir():
        sys.exit(f"{data} not found (../shared/assets/datasets)")
    new = args.new or sorted(p.name for p in (data / "train").iterdir() if p.is_dir())[-1]
    root = Path(tempfile.mkdtemp(prefix="tk-continue-"))
    os.environ["TRANSFERKIT_CACHE"] = str(root / "cache")
    classes = {p.name for p in (data / "train").iterdir() if p.is_dir()}
    rows: list = []
    for seed in range(args.seeds):  # (the network runs: their spread is several points on 40 val images a class)
        work = root / f"seed{seed}"
        common = dict(strategy="finetune", epochs=args.epochs, seed=seed)
        p = timed(f"finetune parent ({args.epochs} ep, without {new})", rows, linked(data, work, classes - {new}),
                  new, out=str(work / "ft-parent"), **common)
        full = linked(data, work, classes)  # the new class added to the parent's folder
        child = dict(from_run=str(p), seed=seed)  # (its defaults: a quarter of the epochs, 0.3x the LR)
        timed("finetune --from parent (its defaults)", rows, full, new, out=str(work / "child"), **child)
        parent.NEW_ROWS = "random"
        try:
            timed("finetune --from parent (defaults, random new row)", rows, full, new,
                  out=str(work / "child-random"), **child)
        finally:
            parent.NEW_ROWS = "imprint"
        if args.child_lr:
            timed(f"finetune --from parent (defaults, lr {args.child_lr:g})", rows, full, new,
                  out=str(work / "child-lr"), lr=args.child_lr, **child)
        timed(f"finetune from ImageNet ({args.epochs} ep, all classes)", rows, full, new, out=str(work / "retrained"),
              **common)
    p = timed(f"linear parent (without {new})", rows, linked(data, root / "lin", classes - {new}), new,
              out=str(root / "lin-parent"))
    full = linked(data, root / "lin", classes)
    timed("linear --from parent", rows, full, new, from_run=str(p), out=str(root / "lin-child"))
    os.environ["TRANSFERKIT_CACHE"] = str(cold_cache(root / "cache", root / "cold-cache"))
    timed("linear, no feature cached (all classes)", rows, full, new, out=str(root / "lin-scratch"))

    mean = {}  # label -> the mean of its rows over the seeds
    for label, *values in rows:
        mean.setdefault(label, []).append(values)
    mean = {label: np.mean(np.asarray(v, dtype=np.float64), axis=0) for label, v in mean.items()}
    print(f"\n{args.dataset}: {new} added to {len(classes) - 1} classes; finetune runs: mean of {args.seeds} seed(s)")
    print(f"{'run':<52} {'old cls':>8} {'new cls':>8} {'all':>7} {'wall s':>7} {'CPU s':>7}")
    for label, (old, fresh, every, wall, cpu) in mean.items():
        fresh_text = f"{100 * fresh:>7.1f}%" if fresh == fresh else f"{'-':>8}"  # (a parent has no new class)
        print(f"{label:<52} {100 * old:>7.1f}% {fresh_text} {100 * every:>6.1f}% {wall:>7.1f} {cpu:>7.1f}")
    labels = list(mean)
    retrained = mean[next(x for x in labels if x.startswith("finetune from ImageNet"))]
    for label in labels:
        if label.startswith("finetune --from"):
            m = mean[label]
            print(f"{label}: old classes {100 * (m[0] - retrained[0]):+.1f} pt, new {100 * (m[1] - retrained[1]):+.1f} "
                  f"pt, all {100 * (m[2] - retrained[2]):+.1f} pt against retraining, in {m[3] / retrained[3]:.2f}x its "
                  f"wall time ({m[4] / retrained[4]:.2f}x CPU)")
    child, cold = mean["linear --from parent"], mean["linear, no feature cached (all classes)"]
    print(f"linear --from: all {100 * (child[2] - cold[2]):+.1f} pt against a run extracting every image, in "
          f"{child[3] / cold[3]:.2f}x its wall time ({child[4] / cold[4]:.2f}x CPU)")

if __name__ == "__main__":
    main()
