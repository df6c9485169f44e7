"""The default head against a plain probe where it is hardest: few images per class (#28).

    python bench/head_rule.py [--datasets hymenoptera_data,flower_photos_small,cifar10-png]
                              [--per-class 40] [--draws 20] [--json FILE]

Per dataset, the cached features of every image (the default run's: last layer and multi-layer,
ONNX Runtime fp32) are computed once; then, `--draws` times, a random subset of `--per-class`
training images per class is drawn and three heads are fitted on it and scored on the whole val
split:
- the probe: scikit-learn's `LogisticRegression()` (defaults: C=1, L-BFGS) on the last layer's
  raw features, what a user writes first;
- the default head as it chooses now (`heads.select_head`: features, scaling and weight decay by
  the lowest cross-validated log loss, folds drawn CV_REPEATS times with few images: `heads._few`);
- the default head with the previous rule (the highest cross-validated accuracy, ties to the
  lower log loss, one draw of the folds).
Prints, per dataset, each rule's mean difference to the probe in points, the worst draw, and how
many draws trail the probe by more than half a point. Not a test: numbers depend on the draws.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import shared_features  # noqa: E402


@contextlib.contextmanager
def previous_rule():
    """select_head as it chose before #28: the most accurate candidate, one draw of the folds."""
    from transferkit.training import heads

    rank, repeats = heads._rank, heads.CV_REPEATS
    heads._rank, heads.CV_REPEATS = (lambda row: (row["cv_accuracy"], -row["cv_log_loss"])), 1
    try:
        yield
    finally:
        heads._rank, heads.CV_REPEATS = rank, repeats


def default_head(x, y, xv, yv, classes: int, widths: dict, seed: int) -> float:
    from transferkit.config import TrainConfig
    from transferkit.training.heads import fit_logistic, select_head

    choice = select_head(x, y, classes, widths, seed, last_width=widths["last"])
    w = widths[choice.features]
    cfg = dataclasses.replace(TrainConfig(), weight_decay=choice.weight_decay)
    result, _ = fit_logistic(cfg, classes, x[:, :w], y, xv[:, :w], yv, None, choice.scaling)
    return result.history[-1].val_acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="hymenoptera_data,flower_photos_small,cifar10-png")
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--json", help="write every draw here")
    args = ap.parse_args()
    from sklearn.linear_model import LogisticRegression

    cache = Path(tempfile.mkdtemp(prefix="tk-head-rule-cache-"))
    rows = []
    for name in args.datasets.split(","):
        f, (x, y, xv, yv) = shared_features(name, cache)
        classes, widths, last = len(f.split.classes), dict(f.widths), f.widths["last"]
        diffs: dict[str, list[float]] = {"now": [], "previous": []}
        seconds = {"now": 0.0, "previous": 0.0}
        for draw in range(args.draws):
            rng = np.random.default_rng(draw)
            idx = np.concatenate([rng.choice(np.flatnonzero(y == c), min(args.per_class, int((y == c).sum())),
                                             replace=False) for c in range(classes)])
            probe = LogisticRegression(max_iter=5000).fit(x[idx, :last], y[idx]).score(xv[:, :last], yv)
            row = {"dataset": name, "draw": draw, "probe": probe}
            for rule in ("now", "previous"):
                start = time.perf_counter()
                with previous_rule() if rule == "previous" else contextlib.nullcontext():
                    row[rule] = default_head(x[idx], y[idx], xv, yv, classes, widths, draw)
                seconds[rule] += time.perf_counter() - start
                diffs[rule].append(100 * (row[rule] - probe))
            rows.append(row)
        one = 100 / len(yv)
        print(f"\n## {name}: {args.per_class} training images per class, {args.draws} draws, {len(yv)} val images "
              f"(one image = {one:.2f} pt)")
        print(f"{'rule':<48} {'mean vs probe':>14} {'worst':>8} {'draws < -0.5 pt':>16} {'s/draw':>7}")
        for rule, label in (("now", "now: lowest CV log loss, repeated folds"),
                            ("previous", "previous: highest CV accuracy, one draw")):
            d = np.array(diffs[rule])
            print(f"{label:<48} {d.mean():+13.2f}  {d.min():+7.2f} {int((d < -0.5 - 1e-9).sum()):>16d} "
                  f"{seconds[rule] / args.draws:7.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
