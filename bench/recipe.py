"""The fine-tuning recipe's options, each against the plain recipe, in one run (#28).

    python bench/recipe.py [--datasets hymenoptera_data,flower_photos_small] [--strategy finetune]
                           [--epochs 8] [--variants plain,ema,trivial-mixup,...] [--json FILE]

Per dataset, `transferkit train DATA --strategy S --epochs E` with the plain recipe (--augment
basic, no MixUp/CutMix/EMA/layer decay/drop path: the defaults) and with each variant's options,
every run in its own process on a warm cache (a one-epoch run first decodes the images), timed
(wall and CPU seconds of the process and its children). Prints val accuracy, the difference to the
plain recipe in points, and the cost ratio. Not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import SHARED, train_cli  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    "plain": [],
    "ema": ["--ema", "0.999"],
    "trivial-mixup": ["--augment", "trivial", "--mixup", "0.2"],
    "ema-trivial-mixup": ["--ema", "0.999", "--augment", "trivial", "--mixup", "0.2"],
    "randaugment": ["--augment", "randaugment"],
    "trivial": ["--augment", "trivial"],
    "cutmix": ["--cutmix", "1.0"],
    "layer-decay": ["--layer-decay", "0.75", "--backbone-lr-mult", "1"],
    "drop-path": ["--drop-path", "0.1"],
    "none": ["--augment", "none"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="hymenoptera_data,flower_photos_small")
    ap.add_argument("--strategy", default="finetune")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--variants", default="plain,ema,trivial-mixup,ema-trivial-mixup")
    ap.add_argument("--extra", default="", help="options added to every run, e.g. '--seed 1'")
    ap.add_argument("--json", help="write every row here")
    args = ap.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    cache = Path(tempfile.mkdtemp(prefix="tk-recipe-cache-"))
    env = {**os.environ, "TRANSFERKIT_CACHE": str(cache)}
    rows = []
    for name in args.datasets.split(","):
        data = SHARED / name
        if not data.is_dir():
            sys.exit(f"{data} not found (../shared/assets/datasets)")
        # one epoch first, not reported: it decodes the images into the cache, so that every
        # variant's time is that of a warm cache
        train_cli(data, Path(tempfile.mkdtemp(prefix="tk-recipe-")) / "warm", env,
                  ["--strategy", args.strategy, "--epochs", "1", "--no-report"])
        plain = None
        for variant in variants:
            out = Path(tempfile.mkdtemp(prefix="tk-recipe-")) / "run"
            extra = ["--strategy", args.strategy, "--epochs", str(args.epochs), "--no-report", *VARIANTS[variant],
                     *args.extra.split()]
            row = {"dataset": name, "variant": variant, "options": " ".join(VARIANTS[variant]),
                   **train_cli(data, out, env, extra)}
            results = row.pop("results", None) or {}
            row["best_epoch"] = results.get("best_epoch")
            if variant == "plain":
                plain = row
            if "val_acc" in row and plain and "val_acc" in plain:
                row["delta_pts"] = 100 * (row["val_acc"] - plain["val_acc"])
                row["cpu_ratio"] = row["cpu_s"] / plain["cpu_s"]
            rows.append(row)
            acc = f"{row['val_acc']:.4f}" if "val_acc" in row else row.get("error", "?")
            delta = f"{row['delta_pts']:+.1f}" if "delta_pts" in row else ""
            ratio = f"{row['cpu_ratio']:.2f}x" if "cpu_ratio" in row else ""
            print(f"{name:22s} {variant:20s} {acc:>8s} {delta:>6s} pts  best epoch {row['best_epoch']}  "
                  f"wall {row['wall_s']:7.1f} s  CPU {row['cpu_s']:7.1f} s {ratio}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
