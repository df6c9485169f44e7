"""Labels from a table against class folders, side by side in one run:

    python bench/table.py [DATASET ...] [--strategy linear]

For each shared dataset (default: hymenoptera_data and flower_photos_small), trains the default
recipe on its folders, then on a CSV that names the same images and labels (written into a
temporary folder, never into the data; its split column says which images are validation), and
prints both accuracies, wall and CPU seconds, and whether the two bundles (model.safetensors and
model.json) are the same bytes. The table run finds the folder run's features in the cache (the
same files), so its time is the warm path; the cold path is the folder run's.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "assets" / "datasets"


def cpu_s() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def digest(run: Path) -> str:
    return hashlib.sha256((run / "model.safetensors").read_bytes() + (run / "model.json").read_bytes()).hexdigest()


def write_table(data: Path, out: Path) -> int:
    """A CSV of every image under DATA's train/ and val/ folders: path, label, split."""
    rows = []
    for split, role in (("train", "train"), ("val", "valid")):
        for p in sorted((data / split).rglob("*")):
            if p.is_file() and not p.name.startswith("."):
                rows.append((str(p.relative_to(data)), p.parent.name, role))
    with open(out, "w", newline="") as f:
        csv.writer(f).writerows([("image", "label", "split"), *rows])
    return len(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="*", default=["hymenoptera_data", "flower_photos_small"])
    ap.add_argument("--strategy", default="linear")
    args = ap.parse_args()
    import transferkit

    work = Path(tempfile.mkdtemp(prefix="tk-table-"))
    rows = []
    try:
        for name in args.datasets:
            data = SHARED / name
            if not (data / "train").is_dir() or not (data / "val").is_dir():
                print(f"skipped {name}: no train/ and val/ under {data}", file=sys.stderr)
                continue
            table = work / f"{name}.csv"
            listed = write_table(data, table)
            results = {}
            for kind, extra in (("folders", {}), ("table", {"labels": str(table), "split_col": "split"})):
                wall, cpu = time.perf_counter(), cpu_s()
                run = transferkit.train(data, out=str(work / f"{name}-{kind}"), strategy=args.strategy, quiet=True,
                                        **extra)
                results[kind] = (run, time.perf_counter() - wall, cpu_s() - cpu)
            (a, wa, ca), (b, wb, cb) = results["folders"], results["table"]
            rows.append((name, listed, a.val_acc, b.val_acc, wa, ca, wb, cb,
                         digest(Path(a.path)) == digest(Path(b.path))))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| dataset | images listed | val acc, folders | val acc, table | folders wall / CPU s | table wall / CPU s "
          "(warm) | same bundle bytes |\n|---|---:|---:|---:|---:|---:|---|")
    for name, n, acc_a, acc_b, wa, ca, wb, cb, same in rows:
        print(f"| {name} | {n} | {acc_a:.4f} | {acc_b:.4f} | {wa:.1f} / {ca:.1f} | {wb:.1f} / {cb:.1f} | "
              f"{'yes' if same else 'NO'} |")
    return 0 if all(r[-1] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
