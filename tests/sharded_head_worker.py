"""Run under torchrun by test_scale.py: the data-parallel logistic head on synthetic rows, each
process with its share; the primary saves what it fitted to the file named on the command line."""

from __future__ import annotations

import sys

import numpy as np


def synthetic(n: int = 3000, d: int = 48, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows from k class-conditional Gaussians (imbalanced classes), float64."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 0.6, (k, d))
    y = rng.choice(k, n, p=np.linspace(1, 2, k) / np.linspace(1, 2, k).sum())
    return means[y] + rng.normal(0, 1, (n, d)) * rng.uniform(0.5, 2, d), y


def fit(x, y, k: int, allreduce, rows, balanced: bool = True):
    from transferkit.logistic import ShardedLogistic, sharded_standardizer

    mean, std = sharded_standardizer(x[rows], "feature", allreduce)
    problem = ShardedLogistic((x[rows] - mean) / std, y[rows], k, 0.01, balanced, allreduce)
    theta, iters = problem.fit(problem.start(), 500, 1e-6)
    return theta, mean, std, problem.stats(problem.z, problem.y, theta), iters


if __name__ == "__main__":
    from transferkit.distributed import joined

    x, y = synthetic()
    with joined("cpu") as group:
        theta, mean, std, (loss, acc), iters = fit(x, y, 4, group.sum, np.array(group.share(len(x))))
        if group.primary:
            np.savez(sys.argv[1], theta=theta, mean=mean, std=std, loss=loss, acc=acc, iters=iters,
                     world=group.world)
