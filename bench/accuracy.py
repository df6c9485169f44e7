"""Accuracy of every candidate on the shared datasets, with the time each took (#16).

    python bench/accuracy.py [--datasets hymenoptera_data,flower_photos_small,cifar10-png]
                             [--candidates heads,tta,finetune,lp-ft,auto] [--epochs 6] [--json FILE]

Per dataset, in one run:
- `default`: `transferkit train DATA` (cold cache: the time a user meets first);
- the heads on the same cached features (in this process, fitted on the train split, scored on
  val): plain scikit-learn `LogisticRegression()` on the last layer's and on the multi-layer
  features (the reference the default must not fall below), the previous default (last layer,
  per-feature scaling, weight decay 0.1), and the cross-validated head restricted to the last layer;
- `tta`: the default run evaluated with --tta flip and flip-crops;
- `finetune`, `lp-ft`, `auto`: `transferkit train DATA --strategy S --epochs E` in a subprocess,
  each timed (wall and CPU seconds, the process and its children).
Every row prints val accuracy, its difference to the default in points, wall and CPU seconds.
fastai's `fine_tune` and timm's `train.py` on the same weights: bench/peers.py (they are not
dependencies; it runs them from folders you give). Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "assets" / "datasets"
DATASETS = ("hymenoptera_data", "flower_photos_small", "cifar10-png")
CANDIDATES = ("heads", "tta", "finetune", "lp-ft", "auto")


def cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def train_cli(data: Path, out: Path, env: dict, extra: list[str]) -> dict:
    """`transferkit train` in its own process: its results.json plus wall and CPU seconds."""
    cmd = [sys.executable, "-m", "transferkit", "train", str(data), "--out", str(out), "--quiet", *extra]
    start, cpu = time.perf_counter(), cpu_seconds()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1], "wall_s": wall, "cpu_s": cpu}
    results = json.loads((out / "results.json").read_text())
    return {"val_acc": results["val_acc"], "wall_s": wall, "cpu_s": cpu, "results": results}


def print_table(rows: list[dict], name: str, columns: list[tuple[str, int, object]], measured: str) -> None:
    """The benchmarks' tables: each row's `name` then `columns`, each (header, width, the cell's
    text of a row); a row without its `measured` figure (its run failed) shows its error instead."""
    first = max([len(name)] + [len(str(r.get(name, ""))) for r in rows]) + 2
    print(f"{name:<{first}}" + "".join(f" {header:>{width}}" for header, width, _ in columns))
    for r in rows:
        if measured not in r:
            print(f"{r.get(name, ''):<{first}} error: {r.get('error')}")
            continue
        print(f"{r[name]:<{first}}" + "".join(f" {cell(r):>{width}}" for _, width, cell in columns))


def cached_features(data: Path, cache: Path):
    """The default run's features of `data` (`context.Features`), through `cache` (computed there
    if missing)."""
    from transferkit.cache import Cache
    from transferkit.config import TrainConfig
    from transferkit.training.options import resolve
    from transferkit.console import Console
    from transferkit.training.setup import make_context

    cfg = resolve(TrainConfig.from_mapping({"data": str(data), "cache_dir": str(cache),
                                            "out": tempfile.mkdtemp(prefix="tk-heads-")}))
    return make_context(cfg, Console(quiet=True), Cache(cache).prepare()).cached_features()


def shared_features(name: str, cache: Path):
    """The default run's features of the shared dataset `name` through `cache` (the command exits
    naming the folder where it is absent): (`context.Features`, (x_train, y_train, x_val, y_val)
    as arrays)."""
    import numpy as np

    data = SHARED / name
    if not data.is_dir():
        sys.exit(f"{data} not found (../shared/assets/datasets)")
    f = cached_features(data, cache)
    return f, tuple(np.asarray(a) for a in (f.x_train, f.y_train, f.x_val, f.y_val))


def head_rows(data: Path, cache: Path) -> list[dict]:
    """The head variants on the default run's cached features (nothing is extracted again)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from transferkit.config import TrainConfig

    from transferkit.training.options import resolve
    from transferkit.training.heads import fit_best_head, fit_logistic

    f = cached_features(data, cache)
    assert f.facts["features_computed"] == 0, "the default run should have cached every feature"
    rows = []

    def score(head, width: int) -> float:  # (the cached features are NumPy arrays)
        return float((np.asarray(head(f.x_val[:, :width])).argmax(1) == f.y_val).mean())

    for name, width in f.widths.items():
        start, cpu = time.perf_counter(), cpu_seconds()
        plain = LogisticRegression(max_iter=5000).fit(f.x_train[:, :width], f.y_train)
        acc = float(plain.score(f.x_val[:, :width], f.y_val))
        rows.append({"candidate": f"sklearn LogisticRegression() on {name} features", "val_acc": acc,
                     "wall_s": time.perf_counter() - start, "cpu_s": cpu_seconds() - cpu})
    for label, options in (("previous default: last, per-feature scaling, weight decay 0.1", None),
                           ("cross-validated head, last layer only (--features last)", {"features": "last"})):
        start, cpu = time.perf_counter(), cpu_seconds()
        if options is None:
            fit_cfg = resolve(TrainConfig.from_mapping({"data": str(data), "weight_decay": 0.1}))
            _, head = fit_logistic(fit_cfg, len(f.split.classes), f.x_train[:, :f.widths["last"]], f.y_train,
                                   f.x_val[:, :f.widths["last"]], f.y_val, scaling="feature")
            width = f.widths["last"]
        else:
            _, head, choice = fit_best_head(resolve(TrainConfig.from_mapping({"data": str(data), **options})), f)
            width = f.widths[choice.features]
        rows.append({"candidate": label, "val_acc": score(head, width), "wall_s": time.perf_counter() - start,
                     "cpu_s": cpu_seconds() - cpu})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--epochs", type=int, default=6, help="epochs of finetune and lp-ft (auto: lp-ft's)")
    ap.add_argument("--json", help="write every row here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tk-accuracy-"))
    env = {**os.environ, "TRANSFERKIT_CACHE": str(work / "cache")}
    candidates = args.candidates.split(",")
    table = []
    for name in args.datasets.split(","):
        data = SHARED / name
        if not data.is_dir():
            print(f"skipping {name}: {data} is absent")
            continue
        rows = []
        default = train_cli(data, work / name / "default", env, [])
        if "error" in default:
            print(f"{name}: the default run failed: {default['error']}")
            continue
        head = default["results"].get("head") or {}
        rows.append({"candidate": f"default (linear: {head.get('features')} features, {head.get('scaling')} scaling, "
                                  f"weight decay {head.get('weight_decay')})", **default})
        if "heads" in candidates:
            rows += head_rows(data, work / "cache")
        if "tta" in candidates:
            import transferkit
            from transferkit.console import Console

            for tta in ("flip", "flip-crops"):
                start, cpu = time.perf_counter(), cpu_seconds()
                summary = transferkit.evaluate(work / name / "default", tta=tta, console=Console(quiet=True),
                                               out=work / name / f"eval-{tta}")
                rows.append({"candidate": f"default, evaluated with --tta {tta}", "val_acc": summary["accuracy"],
                             "wall_s": time.perf_counter() - start, "cpu_s": cpu_seconds() - cpu})
        for strategy in ("finetune", "lp-ft", "auto"):
            if strategy in candidates:
                extra = ["--strategy", strategy] + (["--epochs", str(args.epochs)] if strategy != "auto" else [])
                got = train_cli(data, work / name / strategy, env, extra)
                label = strategy if strategy != "auto" else "auto"
                if "results" in got:
                    r = got["results"]
                    if strategy == "auto":
                        label = f"auto (chose {r['strategy']}: {r['strategy_reason']})"
                    elif r.get("strategy_info", {}).get("kept") == "probe":
                        label += " (kept its probe)"
                    else:
                        label += f" (best epoch {r['best_epoch']}/{r['epochs_run']})"
                rows.append({"candidate": label, **got})
        base = rows[0]["val_acc"]
        print(f"\n## {name}  (default val accuracy {base:.4f})")
        print(f"{'candidate':<100} {'val acc':>8} {'vs default':>10} {'wall s':>8} {'CPU s':>8}")
        for row in rows:
            acc = row.get("val_acc")
            text = f"{acc:.4f} {100 * (acc - base):+9.1f}pt" if acc is not None else f"error: {row.get('error')}"
            print(f"{row['candidate'][:100]:<100} {text:>19} {row['wall_s']:8.1f} {row['cpu_s']:8.1f}")
            table.append({"dataset": name, **{k: v for k, v in row.items() if k != "results"}})
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1))
    print(f"\nwork folder (runs, cache): {work}")


if __name__ == "__main__":
    main()
