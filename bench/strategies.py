"""Every strategy on one dataset, same backbone, side by side.

    python bench/strategies.py DATASET [--model efficientnet_lite0] [--epochs 4]
                                       [--teacher-model efficientnet_lite2]

Runs `transferkit train DATASET --strategy S` for each strategy in its own process (cold cache
for the first, as a user would meet it) and prints accuracy, balanced accuracy and wall time.
Network strategies run `--epochs` epochs; linear fits its logistic regression on cached features.
distill first fine-tunes a `--teacher-model` teacher (same epochs; its row is listed too), then
trains the `--model` student from it: compare with the finetune row, the same student on labels
alone with the same epochs. Not a test: numbers depend on the machine.
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


def registered() -> list[str]:
    """Every registered strategy except scratch (random init: a different experiment)."""
    from transferkit.training.strategies import STRATEGIES

    return [s.name for s in STRATEGIES if s.weights is None]


def epoch_flags(strategy: str, epochs: int) -> list[str]:
    """--epochs where the strategy takes it (not the logistic-regression head)."""
    from transferkit.training.options import applies
    from transferkit.training.strategies import STRATEGIES

    entry = STRATEGIES.get(strategy)
    return ["--epochs", str(epochs)] if applies("epochs", entry, entry.defaults.get("optimizer")) else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--epochs", type=int, default=4, help="epochs of the network strategies")
    ap.add_argument("--strategies", default=",".join(registered()))
    ap.add_argument("--teacher-model", default="efficientnet_lite2", help="distill: the teacher's backbone")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tk-strategies-"))
    env = {**os.environ, "TRANSFERKIT_CACHE": str(work / "cache")}
    rows, reasons = [], []

    def run(name: str, model: str, strategy: str, extra: list[str]) -> None:
        out = work / name
        cmd = [sys.executable, "-m", "transferkit", "train", args.dataset, "--model", model,
               "--strategy", strategy, "--out", str(out), "--quiet", *epoch_flags(strategy, args.epochs), *extra]
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
        res = json.loads((out / "results.json").read_text())
        kept = (f"{res['best_epoch']} / {res['epochs_run']}" if res.get("epochs_run")
                else f"L-BFGS, {res['head_iterations']} it.")
        rows.append((name, model, res["val_acc"], res["balanced_accuracy"], wall, kept))
        if strategy == "auto":
            reasons.append(f"auto chose {res['strategy']}: {res['strategy_reason']}")
        print(f"done {name}: {res['val_acc']:.4f} in {wall:.1f} s", file=sys.stderr, flush=True)

    for strategy in args.strategies.split(","):
        if strategy == "distill":
            run("teacher (finetune)", args.teacher_model, "finetune", [])
            run("distill", args.model, "distill", ["--teacher", str(work / "teacher (finetune)")])
        else:
            run(strategy, args.model, strategy, [])
    print(f"\ndataset: {args.dataset}  model: {args.model}  network epochs: {args.epochs}\n")
    print("| strategy | model | val acc | balanced acc | wall s | kept epoch / run |\n|---|---|---:|---:|---:|---:|")
    for name, model, acc, bal, wall, kept in rows:
        print(f"| {name} | {model} | {acc:.4f} | {bal:.4f} | {wall:.1f} | {kept} |")
    for line in reasons:
        print(f"\n{line}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
