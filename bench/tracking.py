"""What --track costs a run: the same training without tracking, with MLflow, with TensorBoard
and with both, in one run of this script (#29).

    python bench/tracking.py [--data DIR] [--repeat 3] [--finetune-epochs 2] [--json FILE]

Each `transferkit train` runs in its own process (the whole command, as a user runs it: MLflow's
import and its SQLite store's creation included), on a warm feature cache, repeated and
interleaved so the machine's noise spreads over every variant. MLflow logs to the default local
store beside the runs (one store per variant: its first run creates it). Prints the median wall
and CPU seconds (process and children) and the ratio to the run without tracking, for the default
linear head (seconds long: the fixed cost shows) and for a short fine-tuning (epochs logged live).
Not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import train_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"none": [], "mlflow": ["--track", "mlflow"], "tensorboard": ["--track", "tensorboard"],
            "both": ["--track", "mlflow", "--track", "tensorboard"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "samples" / "hymenoptera_small"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--json", help="write every row here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tk-track-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["TRANSFERKIT_CACHE"] = str(work / "cache")
    data = Path(args.data)
    train_cli(data, work / "warm", env, ["--strategy", "finetune", "--epochs", "1"])  # decode + features
    train_cli(data, work / "warm2", env, [])
    rows = []
    for recipe, extra in (("linear", []), ("finetune", ["--strategy", "finetune", "--epochs",
                                                        str(args.finetune_epochs)])):
        for i in range(args.repeat):
            for name, flags in VARIANTS.items():
                out = work / recipe / name / f"r{i}"
                got = train_cli(data, out, env, extra + flags)
                if "error" in got:
                    sys.exit(f"{recipe} {name}: {got['error']}")
                rows.append({"recipe": recipe, "variant": name, "repeat": i, "wall_s": got["wall_s"],
                             "cpu_s": got["cpu_s"], "run_wall_s": got["results"]["wall_s"],
                             "val_acc": got["val_acc"]})
    print(f"data: {data}, {args.repeat} repeats, medians")
    print(f"{'recipe':<9} {'tracking':<12} {'wall s':>7} {'CPU s':>7} {'wall x':>7} {'CPU x':>7} {'val acc':>8}")
    for recipe in ("linear", "finetune"):
        base = [r for r in rows if r["recipe"] == recipe and r["variant"] == "none"]
        base_wall = statistics.median(r["wall_s"] for r in base)
        base_cpu = statistics.median(r["cpu_s"] for r in base)
        for name in VARIANTS:
            mine = [r for r in rows if r["recipe"] == recipe and r["variant"] == name]
            wall = statistics.median(r["wall_s"] for r in mine)
            cpu = statistics.median(r["cpu_s"] for r in mine)
            print(f"{recipe:<9} {name:<12} {wall:7.1f} {cpu:7.1f} {wall / base_wall:7.2f} {cpu / base_cpu:7.2f} "
                  f"{mine[0]['val_acc']:8.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
