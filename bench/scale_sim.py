"""The data-parallel head at 10^5-10^7 rows, simulated on this machine (#31).

    python bench/scale_sim.py [--rows 100000,1000000] [--procs 1,2] [--dim 1280] [--classes 10]
    python bench/scale_sim.py --rows 10000000 --storage int8      # 10^7 rows: 51 GB as float32

No image is decoded: each process draws its share of synthetic feature rows from
class-conditional Gaussians with a known best classifier (equal priors and one covariance: the
nearest class mean is Bayes-optimal) and runs what `train` runs on sharded features under
torchrun (gloo, one thread per process: a process stands for a node): the head's
cross-validation (`heads.select_head` with `Shards`: a stratified sample of at most `heads.cv_images` rows,
near-copy groups found by passing each rank's rows round, data-parallel fold fits), the
standardization statistics summed over the group, the fit of the real logistic-regression head
(`logistic.ShardedLogistic`: each process its rows, loss and gradient all-reduced, the same
L-BFGS on every process) with the weight decay the cross-validation chose, and the evaluation.
The rows are drawn in fixed blocks, so 1 and 2 processes fit the same rows.

--storage int8 (for 10^7 rows, which do not fit this machine's 24 GB as float32 in one or two
processes) keeps each process's rows as int8 (x = q / 24: a step of 0.04 on features of unit
spread; the rounding adds a variance of 1.4e-4) and the head reads them a chunk at a time,
dequantized and standardized on the fly: memory is the int8 rows plus a chunk.

Prints per process peak RSS, seconds per L-BFGS iteration, the cross-validation's seconds and
choice, and the validation accuracy against the nearest-true-mean rule's, and the 2-process /
1-process ratios. Not a test: the numbers depend on the machine.
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

import numpy as np

BLOCK = 10_000  # rows drawn together, from their own seed: the same rows for any number of processes
SPREAD = 0.065  # the class means' scale: their distance makes the best accuracy about 0.9 at 1280 dims


def means(dim: int, classes: int) -> np.ndarray:
    return np.random.default_rng(12345).normal(0, SPREAD, (classes, dim)).astype(np.float32)


def block(index: int, mu: np.ndarray, split: int, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of block `index` (split 0: training, 1: validation): labels uniform, x = mean + N(0, I),
    drawn into `out` (BLOCK x dim float32) where given: no temporary the size of the block."""
    rng = np.random.default_rng([split, index])
    y = rng.integers(0, len(mu), BLOCK)
    x = out if out is not None else np.empty((BLOCK, mu.shape[1]), dtype=np.float32)
    rng.standard_normal(dtype=np.float32, out=x)
    for start in range(0, BLOCK, 1000):
        x[start:start + 1000] += mu[y[start:start + 1000]]
    return x, y


def labels(rows: int, classes: int, split: int) -> np.ndarray:
    """Every block's labels (drawn first from each block's seed: no row is drawn for them)."""
    return np.concatenate([np.random.default_rng([split, b]).integers(0, classes, BLOCK)
                           for b in range(-(-rows // BLOCK))]).astype(np.int64)


SCALE = 24.0  # int8 storage: x = q / SCALE


class Int8Rows:
    """Rows kept as int8, read as float32 (standardized by `mean` and `std` when given) a slice or
    a selection at a time: what the head's chunked objective and the statistics read."""

    dtype = np.dtype(np.float32)

    def __init__(self, q: np.ndarray, mean=None, std=None):
        self.q, self.mean, self.std = q, mean, std
        self.shape = q.shape

    def __len__(self) -> int:
        return len(self.q)

    def __getitem__(self, index):
        x = self.q[index].astype(np.float32)
        x /= SCALE
        if self.mean is not None:
            x -= self.mean
            x /= self.std
        return x

    def standardized(self, mean, std) -> "Int8Rows":
        return Int8Rows(self.q, mean.astype(np.float32), std.astype(np.float32))


def shard(rows: int, mu: np.ndarray, split: int, rank: int, world: int, storage: str = "float32"):
    """This rank's blocks (every world-th), written into one preallocated array (int8: quantized
    a block at a time); (rows, labels, the rows' positions among all)."""
    mine = list(range(rank, -(-rows // BLOCK), world))
    dtype = np.int8 if storage == "int8" else np.float32
    x = np.empty((len(mine) * BLOCK, mu.shape[1]), dtype=dtype)
    y = np.empty(len(mine) * BLOCK, dtype=np.int64)
    buffer = np.empty((BLOCK, mu.shape[1]), dtype=np.float32) if storage == "int8" else None
    for j, b in enumerate(mine):
        rows = slice(j * BLOCK, (j + 1) * BLOCK)
        xb, y[rows] = block(b, mu, split, buffer if storage == "int8" else x[rows])
        if storage == "int8":
            xb *= SCALE
            np.clip(np.rint(xb, out=xb), -127, 127, out=xb)
            x[rows] = xb
    index = (np.array(mine)[:, None] * BLOCK + np.arange(BLOCK)).ravel()
    return (Int8Rows(x) if storage == "int8" else x), y, index


def worker(args) -> None:
    from transferkit.distributed import joined
    from transferkit.logistic import ShardedLogistic, sharded_standardizer
    from transferkit.training.heads import Shards, select_head

    mu = means(args.dim, args.classes)

    def peak() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MB, so far

    with joined("cpu") as group:
        stages = {"started": peak()}
        start = time.perf_counter()
        x, y, index = shard(args.rows, mu, 0, group.rank, group.world, args.storage)
        xv, yv, _ = shard(args.val_rows, mu, 1, group.rank, group.world)
        made = time.perf_counter() - start
        stages["rows"] = peak()
        # the best accuracy: the nearest true mean (|x - mu|^2 = |x|^2 - 2 x.mu + |mu|^2)
        nearest = np.argmin(xv @ (-2 * mu.T) + (mu * mu).sum(1), axis=1)
        best = group.sum(np.array([(nearest == yv).sum(), len(yv)], dtype=np.float64))
        start = time.perf_counter()
        choice = select_head(x, y, args.classes, {"last": args.dim}, 0, None, False, args.dim,
                             Shards(group, index, labels(args.rows, args.classes, 0)))
        cv_s = time.perf_counter() - start
        stages["cv"] = peak()
        weight_decay = args.weight_decay if args.weight_decay is not None else choice.weight_decay
        start = time.perf_counter()
        mean, std = sharded_standardizer(x, choice.scaling, group.sum)
        if args.storage == "int8":
            x = x.standardized(mean, std)  # standardized as each chunk is read
        else:
            x -= mean  # in place: no second copy of the rows
            x /= std
        xv -= mean
        xv /= std
        stats_s = time.perf_counter() - start
        stages["statistics"] = peak()
        problem = ShardedLogistic(x, y, args.classes, weight_decay, False, group.sum)
        calls = [0]
        objective = problem.objective

        def counted(theta):
            calls[0] += 1
            return objective(theta)

        problem.objective = counted
        start = time.perf_counter()
        theta, iters = problem.fit(problem.start(), args.max_iter, args.gtol)
        fit_s = time.perf_counter() - start
        stages["fit"] = peak()
        _, acc = problem.stats(xv, yv, theta)
        stages["evaluation"] = peak()
        rss = np.zeros(group.world)
        rss[group.rank] = peak()
        rss = group.sum(rss)
        # each stage's peak so far, the largest over the processes
        staged = group.sum(np.array([[v if r == group.rank else 0.0 for v in stages.values()]
                                     for r in range(group.world)])).max(0)
        if group.primary:
            print(json.dumps({"rows": args.rows, "procs": group.world, "rows_per_proc": len(y), "made_s": made,
                              "storage": args.storage, "cv_s": cv_s, "cv_weight_decay": choice.weight_decay,
                              "cv_scaling": choice.scaling, "cv_accuracy": choice.cv_accuracy,
                              "cv_images": choice.images, "weight_decay": weight_decay,
                              "stats_s": stats_s, "fit_s": fit_s, "iterations": iters, "evaluations": calls[0],
                              "s_per_iteration": fit_s / max(1, iters), "val_acc": acc,
                              "best_acc": float(best[0] / best[1]), "peak_rss_mb": rss.tolist(),
                              "peak_rss_mb_after": dict(zip(stages, staged.round(1).tolist()))}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="100000,1000000")
    ap.add_argument("--procs", default="1,2")
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--val-rows", type=int, default=100_000)
    ap.add_argument("--weight-decay", type=float, default=None,
                    help="the head's (default: what the cross-validation chose)")
    ap.add_argument("--storage", choices=("float32", "int8"), default="float32",
                    help="how each process keeps its rows (int8: for 10^7 rows on this machine)")
    ap.add_argument("--max-iter", type=int, default=100)
    ap.add_argument("--gtol", type=float, default=1e-5)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="write every row here")
    args = ap.parse_args()
    if args.worker:
        args.rows = int(float(args.rows))
        return worker(args)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    results = []
    for rows in [int(float(r)) for r in args.rows.split(",")]:
        for procs in [int(p) for p in args.procs.split(",")]:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
                   __file__, "--worker", "--rows", str(rows), "--dim", str(args.dim), "--classes", str(args.classes),
                   "--val-rows", str(args.val_rows), "--storage", args.storage,
                   "--max-iter", str(args.max_iter), "--gtol", str(args.gtol)]
            if args.weight_decay is not None:
                cmd += ["--weight-decay", str(args.weight_decay)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode != 0 or not lines:
                sys.exit(f"{rows} rows, {procs} processes failed:\n{proc.stderr[-3000:]}")
            row = json.loads(lines[-1])
            results.append(row)
            print(f"{rows:>9} rows  {procs} proc  peak RSS/proc {max(row['peak_rss_mb']):7.0f} MB  "
                  f"{row['s_per_iteration']:6.3f} s/iter ({row['iterations']} iters)  "
                  f"val acc {row['val_acc']:.4f}  best {row['best_acc']:.4f}  "
                  f"(rows made {row['made_s']:.1f} s, CV {row['cv_s']:.1f} s on {row['cv_images']} rows: "
                  f"{row['cv_scaling']} scaling, weight decay {row['weight_decay']:.3g}, "
                  f"statistics {row['stats_s']:.1f} s)", flush=True)
    print("\nratios, 2 processes / 1 process:")
    for rows in sorted({r["rows"] for r in results}):
        one = next((r for r in results if r["rows"] == rows and r["procs"] == 1), None)
        two = next((r for r in results if r["rows"] == rows and r["procs"] == 2), None)
        if one and two:
            print(f"{rows:>9} rows: peak RSS per process {max(two['peak_rss_mb']) / max(one['peak_rss_mb']):.2f}x, "
                  f"time per iteration {two['s_per_iteration'] / one['s_per_iteration']:.2f}x, "
                  f"val accuracy {100 * (two['val_acc'] - one['val_acc']):+.2f} pt "
                  f"(best possible {100 * one['best_acc']:.2f}%, fit {100 * one['val_acc']:.2f}%)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
