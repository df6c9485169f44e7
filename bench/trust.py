"""Calibrated confidence on the shared sets (#40): the default run's temperature (fitted on the
head's out-of-fold logits of the training images, kept only where it softens and saves 2% of their
log loss) and its val ECE (15 bins), NLL and Brier before and after; with --finetune, also a
fine-tuned network's (3 epochs; its temperature fitted on the 10% of its training images held out
of its training, where that is 50 images or more: CIFAR-10's 5,000 give 500).

    python bench/trust.py [--datasets hymenoptera_data,flower_photos_small,cifar10-png] [--finetune cifar10-png]
                          [--json FILE]

Each run in its own process (`transferkit train DATA`, the default), cold cache. Not a test: the
numbers depend on the machine's precision only through the features.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import SHARED, print_table, train_cli  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="hymenoptera_data,flower_photos_small,cifar10-png")
    ap.add_argument("--finetune", default="", help="datasets (comma-separated) also fine-tuned for 3 epochs")
    ap.add_argument("--json", help="write every row here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tk-trust-"))
    env = {**os.environ, "TRANSFERKIT_CACHE": str(work / "cache")}
    rows = []
    plan = [(name, []) for name in args.datasets.split(",")] + \
        [(name, ["--strategy", "finetune", "--epochs", "3"]) for name in args.finetune.split(",") if name]
    for name, extra in plan:
        data = SHARED / name
        if not data.is_dir():
            sys.exit(f"{data} not found (../shared/assets/datasets)")
        label = name + (" (finetune)" if extra else "")
        got = train_cli(data, work / label.replace(" ", "-"), env, extra)
        results = got.pop("results", None)
        if results is None:
            rows.append({"dataset": label, **got})
            continue
        cal = results["metrics"]["calibration"]
        rows.append({"dataset": label, "val_images": results["num_val"], "val_acc": results["val_acc"],
                     "held_out": results["strategy_info"].get("calibration_images", 0),
                     "temperature": cal["temperature"], **{f"{k}_{when}": cal[when][k] for when in ("before", "after")
                                                           for k in ("ece", "nll", "brier")}, **got})
        print(f"{name}: {rows[-1]}", flush=True)
    print()
    print_table(rows, "dataset", [
        ("val", 5, lambda r: str(r["val_images"])), ("acc", 6, lambda r: f"{r['val_acc']:.4f}"),
        ("held out", 8, lambda r: str(r["held_out"])), ("T", 6, lambda r: f"{r['temperature']:.3f}"),
        *[(f"{metric.upper() if metric != 'brier' else 'Brier'} {when}", 12, lambda r, k=f"{metric}_{when}": f"{r[k]:.4f}")
          for metric in ("ece", "nll", "brier") for when in ("before", "after")]], "ece_before")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"\nwork folder: {work}")


if __name__ == "__main__":
    main()
