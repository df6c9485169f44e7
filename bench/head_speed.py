"""The head's cross-validated choice against the feature extraction it decides about (#41).

    python bench/head_speed.py [--datasets hymenoptera_data,flower_photos_small,cifar10-png]
                               [--sizes 100,250,500,1000,2000,4000,8000,16000] [--baseline SRC]

Per dataset, the default run's features (last layer and multi-layer) are extracted once into a
fresh cache, timed: that pass gives this CPU's extraction seconds per image (decoding included).
Then:
- at every size n of `--sizes`: `heads.select_head` on n training rows (a stratified sample;
  beyond the dataset's training images, copies of its rows with Gaussian noise at 5% of each
  feature's deviation), wall and CPU seconds (the median of REPEATS runs), beside n x the
  extraction's seconds per image:
  the ratio's goal is <= 10% (and <= 0.5 s below 500 images);
- on the whole training split: the chosen head's val accuracy beside a plain probe's
  (scikit-learn's `LogisticRegression(max_iter=1000)` on the last layer's raw features).
With `--baseline SRC` (another source tree, e.g. `git worktree add /tmp/old HEAD~3`) the same
runs with SRC/src in the same run, and the ratios this tree / baseline are printed. Each tree's
timings run in a child process of their own (imports warm before timing). Not a test: the
numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from accuracy import SHARED  # noqa: E402

SIZES = (100, 250, 500, 1000, 2000, 4000, 8000, 16000)


def extract(dataset: str, work: Path) -> dict:
    """The default run's features of `dataset` into `work` (npz), and the extraction's timing."""
    from transferkit.cache import Cache
    from transferkit.config import TrainConfig
    from transferkit.training.options import resolve
    from transferkit.console import Console
    from transferkit.training.setup import make_context

    cache = work / "cache"
    cfg = resolve(TrainConfig.from_mapping({"data": str(SHARED / dataset), "cache_dir": str(cache),
                                            "out": str(work / "out")}))
    start, cpu = time.perf_counter(), _cpu()
    f = make_context(cfg, Console(quiet=True), Cache(cache).prepare()).cached_features()
    wall, cpu = time.perf_counter() - start, _cpu() - cpu
    n = f.num_images
    path = work / f"{dataset}.npz"
    np.savez(path, xt=np.asarray(f.x_train[:n]), yt=np.asarray(f.y_train[:n]), xv=np.asarray(f.x_val),
             yv=np.asarray(f.y_val), last=f.widths["last"], multi=f.widths.get("multi", 0), k=len(f.split.classes))
    images = n + len(f.y_val)
    return {"npz": str(path), "images": images, "features_s": f.facts["features_s"], "wall_s": wall, "cpu_s": cpu,
            "s_per_image": f.facts["features_s"] / images}


def rows_of(d, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from transferkit.folds import stratified_sample

    x, y = d["xt"], d["yt"]
    if n <= len(y):
        keep = stratified_sample(y, n, seed)
        return x[keep], y[keep]
    rng = np.random.default_rng(seed)
    extra = rng.integers(0, len(y), n - len(y))
    noisy = x[extra] + rng.normal(size=(len(extra), x.shape[1])).astype(np.float32) * 0.05 * x.std(0)
    return np.concatenate([x, noisy]), np.concatenate([y, y[extra]])


def child(npz: str, sizes: list[int]) -> dict:
    """select_head's timings at each size, and the chosen head's val accuracy on all the rows."""
    import dataclasses

    from transferkit.config import TrainConfig

    from transferkit.training import heads

    d = np.load(npz)
    k, widths = int(d["k"]), {"last": int(d["last"])}
    if int(d["multi"]):
        widths["multi"] = int(d["multi"])
    heads.select_head(*rows_of(d, 60), k, widths, 0, last_width=widths["last"])  # imports and first calls
    out = {"sizes": {}}
    for n in sizes:
        x, y = rows_of(d, n)
        out["sizes"][n], choice = _timed(lambda: heads.select_head(x, y, k, widths, 0, last_width=widths["last"]))
        out["sizes"][n]["choice"] = [choice.features, choice.scaling, choice.weight_decay]
    x, y = d["xt"], d["yt"]
    out["all"], choice = _timed(lambda: heads.select_head(x, y, k, widths, 0, last_width=widths["last"]))
    out["all"]["rows"] = len(y)
    w = widths[choice.features]
    cfg = dataclasses.replace(TrainConfig(), weight_decay=choice.weight_decay)
    result, _ = heads.fit_logistic(cfg, k, x[:, :w], y, d["xv"][:, :w], d["yv"], None, choice.scaling)
    out["val_acc"] = result.history[-1].val_acc
    out["choice"] = [choice.features, choice.scaling, choice.weight_decay]
    return out


REPEATS = 3  # timings per size; the median is reported (a shared machine's noise: +-30% from run to run)


def _timed(fn) -> tuple[dict, object]:
    """The median wall and CPU seconds of REPEATS calls of `fn` (the same result each time), and
    its result."""
    import statistics

    walls, cpus = [], []
    for _ in range(REPEATS):
        start, cpu = time.perf_counter(), _cpu()
        result = fn()
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu() - cpu)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus)}, result


def probe(npz: str) -> float:
    from sklearn.linear_model import LogisticRegression

    d = np.load(npz)
    w = int(d["last"])
    return float(LogisticRegression(max_iter=1000).fit(d["xt"][:, :w], d["yt"]).score(d["xv"][:, :w], d["yv"]))


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def run_tree(src: Path | None, npz: str, sizes: list[int]) -> dict:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src / "src")
    out = subprocess.run([sys.executable, str(HERE), "--child", npz, "--sizes", ",".join(map(str, sizes))],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="hymenoptera_data,flower_photos_small,cifar10-png")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--baseline", help="another source tree to time beside this one (SRC/src)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.child:
        print(json.dumps(child(args.child, sizes)))
        return
    from transferkit import machine as cpu

    facts = cpu.describe()
    print(f"machine: {os.cpu_count()} cores, {facts['cpu']}, native bf16: {'yes' if facts['bf16'] else 'no'}, "
          f"AMX: {'yes' if facts['amx'] else 'no'}\n")
    work = Path(tempfile.mkdtemp(prefix="tk-head-speed-"))
    for name in args.datasets.split(","):
        ext = extract(name, work / name)
        ours = run_tree(None, ext["npz"], sizes)
        base = run_tree(Path(args.baseline), ext["npz"], sizes) if args.baseline else None
        print(f"## {name}: extraction {ext['features_s']:.1f} s for {ext['images']} images "
              f"({1000 * ext['s_per_image']:.1f} ms/image on this CPU)\n")
        print("| training rows | extraction s (n x ms/image) | choice wall s | CPU s | ratio (goal <= 0.10) |"
              + (" baseline wall s | this / baseline |" if base else "") + " chosen |")
        print("|---:|---:|---:|---:|---:|" + ("---:|---:|" if base else "") + "---|")
        rows = [(str(n), n, ours["sizes"][str(n)], base["sizes"][str(n)] if base else None) for n in sizes]
        rows.append((f"all ({ours['all']['rows']})", ours["all"]["rows"], {**ours["all"], "choice": ours["choice"]},
                     base["all"] if base else None))
        for label, n, r, b in rows:
            extraction = n * ext["s_per_image"]
            line = f"| {label} | {extraction:.1f} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['wall_s'] / extraction:.3f} |"
            if b:
                line += f" {b['wall_s']:.2f} | {r['wall_s'] / b['wall_s']:.2f}x |"
            print(line + f" {'/'.join(map(str, r['choice']))} |")
        plain = probe(ext["npz"])
        print(f"\nval accuracy, all {name} training images: chosen head {ours['val_acc']:.4f} "
              f"({'/'.join(map(str, ours['choice']))})"
              + (f", baseline {base['val_acc']:.4f} ({'/'.join(map(str, base['choice']))}),"
                 f" this - baseline {100 * (ours['val_acc'] - base['val_acc']):+.1f} pt" if base else "")
              + f"; plain probe {plain:.4f}, chosen - probe {100 * (ours['val_acc'] - plain):+.1f} pt\n")


if __name__ == "__main__":
    main()
