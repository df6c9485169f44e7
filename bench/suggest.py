"""Simulated labelling (#42): which images to label next, `transferkit suggest` against random
picks (and against the plain uncertainty ranking), side by side in one run.

    python bench/suggest.py [--datasets cifar10-png] [--start 10] [--step 50] [--rounds 5] [--seeds 3]

Per dataset the default run's cached features of every image are computed once (ONNX Runtime
fp32, as `train` extracts them). The training split is the unlabelled pool, the val split the test.
Each seed starts from `--start` labels per class drawn at random; then, `--rounds` times, the
default head (`heads.select_head` + `fit_logistic`, what `train` fits) is fitted on the labels so
far and each policy adds `--step` labels from the pool:
- random: drawn at random;
- margin: the smallest margin between the two most probable classes (uncertainty alone);
- activelab: cleanlab's active-learning score of unlabelled images (`get_active_learning_scores`;
  with one annotator, the top probability shrunk toward 1/K: least confidence);
- suggest: `suggest.rank`, what the command ranks by (novel images beyond the expected share, then
  the most uncertain spread by weighted k-means), the labelled images as the OOD reference set and
  the novelty threshold set as the model's is (the 95% quantile of the labelled images' own scores).
Prints the val accuracy per round and policy (mean over seeds), and how many labels each policy
needs to reach random's final accuracy (interpolated between rounds), as a share of random's.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import shared_features  # noqa: E402

POLICIES = ("random", "margin", "activelab", "suggest")


def fit(x, y, xv, classes: int, widths: dict, seed: int):
    """The default head on (x, y): its probabilities on `x` (pool rows passed in) and val rows."""
    from transferkit.config import TrainConfig
    from transferkit.task import Task
    from transferkit.training.heads import fit_logistic, select_head

    choice = select_head(x, y, classes, widths, seed, last_width=widths["last"])
    w = widths[choice.features]
    cfg = dataclasses.replace(TrainConfig(), weight_decay=choice.weight_decay)
    _, head = fit_logistic(cfg, classes, x[:, :w], y, x[:, :w][:0], y[:0], None, choice.scaling)
    return lambda rows: Task().probabilities(np.asarray(head(rows[:, :w]), dtype=np.float64))


def choose(policy: str, probs: np.ndarray, pool: np.ndarray, labelled: np.ndarray, step: int, rng,
           classes: list[str]) -> np.ndarray:
    """`step` rows of the pool (indices into it) by `policy`."""
    from transferkit import ood, suggest
    from transferkit.task import Task

    if policy == "random":
        return rng.choice(len(pool), step, replace=False)
    if policy == "margin":
        return np.argsort(suggest.scores(probs, Task()).margin, kind="stable")[:step]
    if policy == "activelab":  # cleanlab's ActiveLab score of unlabelled images: low = label first
        from cleanlab.multiannotator import get_active_learning_scores

        return np.argsort(get_active_learning_scores(pred_probs_unlabeled=probs)[1], kind="stable")[:step]
    reference = ood.Ood.of_rows(labelled)
    own = ood.knn_scores(reference.reference, labelled, reference.k, skip_self=True)
    threshold = float(np.quantile(own, ood.KEEP))
    scores = reference.scores(pool)
    picked = suggest.rank(probs, Task(), classes, step, embeddings=pool, ood=scores, threshold=threshold)
    return np.asarray([p["index"] for p in picked])


def simulate(x, y, xv, yv, classes: list[str], widths: dict, args, seed: int) -> dict[str, list[tuple[int, float]]]:
    last = widths["last"]
    out = {}
    for policy in POLICIES:
        rng = np.random.default_rng(seed)
        start = np.concatenate([rng.choice(np.flatnonzero(y == c), args.start, replace=False)
                                for c in range(len(classes))])
        labelled = np.zeros(len(y), dtype=bool)
        labelled[start] = True
        curve = []
        for r in range(args.rounds + 1):
            idx = np.flatnonzero(labelled)
            probs_of = fit(x[idx], y[idx], xv, len(classes), widths, seed)
            acc = float((probs_of(xv).argmax(1) == yv).mean())
            curve.append((int(labelled.sum()), acc))
            if r == args.rounds:
                break
            pool = np.flatnonzero(~labelled)
            new = choose(policy, probs_of(x[pool]), x[pool, :last], x[idx, :last], args.step, rng, classes)
            labelled[pool[new]] = True
        out[policy] = curve
    return out


def labels_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """The label count where the curve first reaches `target` (linear between rounds), None if never."""
    for (n0, a0), (n1, a1) in zip([(None, None)] + curve[:-1], curve):
        if a1 >= target - 1e-12:
            if n0 is None or a1 == a0:
                return float(n1)
            return n0 + (target - a0) / (a1 - a0) * (n1 - n0)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="cifar10-png")
    ap.add_argument("--start", type=int, default=10, help="labels per class to start from")
    ap.add_argument("--step", type=int, default=50, help="labels added per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cache", help="feature cache folder (default: a new temporary one)")
    args = ap.parse_args()
    cache = Path(args.cache or tempfile.mkdtemp(prefix="tk-suggest-cache-"))
    for name in args.datasets.split(","):
        f, (x, y, xv, yv) = shared_features(name, cache)
        classes, widths = list(f.split.classes), dict(f.widths)
        started = time.perf_counter()
        runs = [simulate(x, y, xv, yv, classes, widths, args, seed) for seed in range(args.seeds)]
        mean = {p: [(runs[0][p][r][0], float(np.mean([run[p][r][1] for run in runs])))
                    for r in range(args.rounds + 1)] for p in POLICIES}
        print(f"\n{name}: pool {len(y)} images, test {len(yv)}, {len(classes)} classes; start {args.start}/class, "
              f"+{args.step} a round, {args.seeds} seeds ({time.perf_counter() - started:.0f} s)")
        print(f"{'labels':>7} " + " ".join(f"{p:>8}" for p in POLICIES))
        for r in range(args.rounds + 1):
            print(f"{mean['random'][r][0]:>7} " + " ".join(f"{100 * mean[p][r][1]:>7.1f}%" for p in POLICIES))
        target = mean["random"][-1][1]
        need = {p: labels_to_reach(mean[p], target) for p in POLICIES}
        for p in POLICIES[1:]:
            n = need[p]
            print(f"{p} reaches random's final {100 * target:.1f}% with {n:.0f} labels = {n / need['random']:.2f}x "
                  f"random's {need['random']:.0f}" if n is not None
                  else f"{p} does not reach random's final {100 * target:.1f}% within the rounds")


if __name__ == "__main__":
    main()
