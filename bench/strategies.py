"""Every strategy on one dataset, same backbone, side by side.

    python bench/strategies.py DATASET [--model efficientnet_lite0] [--epochs 4]

Runs `transferkit train DATASET --strategy S` for each strategy in its own process (cold cache
for the first, as a user would meet it) and prints accuracy, balanced accuracy and wall time.
Network strategies (finetune, partial, gradual, lp-ft) run `--epochs` epochs; linear runs its
default 60 cheap epochs on cached features. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STRATEGIES = ["linear", "finetune", "partial", "gradual", "lp-ft"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--epochs", type=int, default=4, help="epochs of the network strategies")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tk-strategies-"))
    env = {**os.environ, "TRANSFERKIT_CACHE": str(work / "cache")}
    rows = []
    for strategy in args.strategies.split(","):
        out = work / strategy
        cmd = [sys.executable, "-m", "transferkit.cli", "train", args.dataset, "--model", args.model,
               "--strategy", strategy, "--out", str(out), "--quiet"]
        if strategy != "linear":
            cmd += ["--epochs", str(args.epochs)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{strategy} failed:\n{proc.stderr[-2000:]}")
        res = json.loads((out / "results.json").read_text())
        rows.append((strategy, res["val_acc"], res["balanced_accuracy"], wall, res["best_epoch"], res["epochs_run"]))
        print(f"done {strategy}: {res['val_acc']:.4f} in {wall:.1f} s", file=sys.stderr, flush=True)
    print(f"\ndataset: {args.dataset}  model: {args.model}  network epochs: {args.epochs}\n")
    print("| strategy | val acc | balanced acc | wall s | kept epoch / run |\n|---|---:|---:|---:|---:|")
    for s, acc, bal, wall, best, ran in rows:
        print(f"| {s} | {acc:.4f} | {bal:.4f} | {wall:.1f} | {best} / {ran} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
