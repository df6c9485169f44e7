"""Which unlabelled images to label next (`transferkit suggest`): the images the model is least
sure of, spread over the feature space, and those unlike anything it was trained on. No torch here.

Each image gets an **uncertainty** in [0, 1]: single-label, 1 - the margin between its two most
probable classes (calibrated probabilities: the run's temperature applied); multi-label, the
largest closeness of a class's probability to that class's threshold.

The suggestions are picked in two parts:
- **novel images** (their out-of-distribution score above the model's threshold: unlike every
  training image, perhaps a class the model does not have). The threshold lets 1 - `ood.KEEP`
  of images like the training ones through, so only the *excess* share of novel images in the
  pool says something new is there: that share of the suggestions goes to them, spread out (a
  k-center cover: the next is the novel image farthest from those picked), so a new class shows
  up as a few varied examples;
- the rest **by uncertainty, spread out** (Zhdanov 2019, "Diverse mini-batch active learning":
  the `CANDIDATES` x m most uncertain images clustered into m groups by k-means weighted by
  uncertainty, the image nearest each group's centre picked), so 100 near copies of one hard photo
  give one suggestion, and no outlier is picked for being far from everything. Best first: by
  uncertainty.

The clustering runs on the images' features (unit rows: the backbone's last layer), or, where the
model exposes none (a fine-tuned or exported model gives only its outputs), on the class
probabilities. `bench/suggest.py` measures the ranking against random picks and uncertainty alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ood import unit
from .task import Task

CANDIDATES = 10  # the most uncertain images clustered, per suggestion (Zhdanov 2019's beta)


@dataclass(frozen=True)
class Scores:
    """Per image: `uncertainty` in [0, 1], `margin` (single-label: top-1 minus top-2 probability;
    multi-label: the smallest distance of a probability to its threshold), `entropy` (nats),
    `novel` (its OOD score above the threshold)."""

    uncertainty: np.ndarray
    margin: np.ndarray
    entropy: np.ndarray
    novel: np.ndarray


def scores(probs: np.ndarray, task: Task, ood: np.ndarray | None = None, threshold: float | None = None) -> Scores:
    """The uncertainty of each row of (N, C) probabilities (`Task.probabilities`), and which rows
    are novel (`ood` above `threshold`; none without either)."""
    p = np.asarray(probs, dtype=np.float64)
    n, c = p.shape
    if task.multi:
        t = task.threshold_array(c).astype(np.float64)
        room = np.where(p >= t, 1 - t, t)  # the distance to the far end on the probability's side
        closeness = 1 - np.abs(p - t) / np.maximum(room, 1e-12)
        uncertainty = closeness.max(1) if c else np.zeros(n)
        margin = np.abs(p - t).min(1) if c else np.ones(n)
        q = np.clip(p, 1e-12, 1 - 1e-12)
        entropy = -(q * np.log(q) + (1 - q) * np.log(1 - q)).sum(1)
    else:
        top = -np.sort(-p, axis=1)
        margin = top[:, 0] - (top[:, 1] if c > 1 else 0.0)
        uncertainty = 1 - margin
        entropy = -(p * np.log(np.clip(p, 1e-12, 1))).sum(1)
    novel = np.zeros(n, dtype=bool)
    if ood is not None and threshold is not None:
        novel = np.nan_to_num(np.asarray(ood, dtype=np.float64), nan=-np.inf) > threshold
    return Scores(np.clip(uncertainty, 0, 1), margin, entropy, novel)


def novel_share(novel: np.ndarray) -> float:
    """The share of the suggestions that goes to novel images: the pool's share of them beyond
    the 1 - KEEP that images like the training ones reach anyway."""
    from .ood import KEEP

    return float(np.clip(novel.mean() - (1 - KEEP), 0, 1)) if len(novel) else 0.0


def spread(worth: np.ndarray, z: np.ndarray, n: int) -> np.ndarray:
    """`n` rows of unit features `z` (N, D), the first the worthiest, each next the one farthest
    (1 - cos) from those picked, weighed by `worth` (a k-center cover)."""
    nearest = np.full(len(z), np.inf, dtype=np.float32)
    order, taken = [], np.zeros(len(z), dtype=bool)
    for _ in range(min(n, len(z))):
        value = np.where(taken, -np.inf, worth * np.minimum(nearest, 2.0))
        i = int(np.argmax(value))
        order.append(i)
        taken[i] = True
        nearest = np.minimum(nearest, np.clip(1 - z @ z[i], 0, 2))
    return np.asarray(order, dtype=np.int64)


def diverse(uncertainty: np.ndarray, z: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """`n` rows: the CANDIDATES x n most uncertain clustered into n groups (k-means on the unit
    features `z`, weighted by uncertainty), from each the row nearest its centre; best first."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    pool = np.argsort(-uncertainty, kind="stable")[:CANDIDATES * n]
    if len(pool) <= n:
        return pool
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    x = z[pool].astype(np.float64)
    km = KMeans(n_clusters=n, n_init=1, max_iter=100, random_state=seed)
    with warnings.catch_warnings():  # (fewer distinct images than groups: the groups left empty are filled below)
        warnings.simplefilter("ignore", ConvergenceWarning)
        groups = km.fit_predict(x, sample_weight=np.maximum(uncertainty[pool], 1e-6))
    far = ((x - km.cluster_centers_[groups]) ** 2).sum(1)
    picked = [pool[np.flatnonzero(groups == g)[np.argmin(far[groups == g])]] for g in np.unique(groups)]
    picked = np.asarray(picked, dtype=np.int64)
    if len(picked) < n:  # (k-means left a group empty: the next most uncertain fill in)
        rest = pool[~np.isin(pool, picked)][:n - len(picked)]
        picked = np.concatenate([picked, rest])
    return picked[np.argsort(-uncertainty[picked], kind="stable")]


def reason(i: int, s: Scores, probs: np.ndarray, classes: list[str], task: Task, ood: np.ndarray | None,
           threshold: float | None, for_novelty: bool) -> str:
    """Why image `i` was suggested, in words."""
    if for_novelty:
        return (f"unlike every training image (out-of-distribution score {ood[i]:.2f} > {threshold:.2f}): "
                "perhaps a class the model does not have")
    p = probs[i]
    if task.multi:
        t = task.threshold_array(len(classes))
        c = int(np.argmin(np.abs(p - t)))
        return f"least sure whether it is {classes[c]} ({p[c]:.0%}, threshold {t[c]:.0%})"
    a, b = np.argsort(-p)[:2] if len(p) > 1 else (0, 0)
    text = f"least sure: {classes[a]} {p[a]:.0%} vs {classes[b]} {p[b]:.0%}"
    return text + ("; also unlike every training image" if s.novel[i] else "")


def rank(probs: np.ndarray, task: Task, classes: list[str], n: int, embeddings: np.ndarray | None = None,
         ood: np.ndarray | None = None, threshold: float | None = None, seed: int = 0) -> list[dict]:
    """The `n` images of (N, C) probabilities worth labelling first, best first: one dict per image
    with its row `index`, `rank`, the model's `guess`, its scores and the `reason`. `embeddings`:
    their features (default: the probabilities); `ood`, `threshold`: their out-of-distribution
    scores and the model's threshold (novelty)."""
    s = scores(probs, task, ood, threshold)
    z = unit(embeddings if embeddings is not None else probs)
    n = min(n, len(z))
    novel = np.flatnonzero(s.novel)
    quota = min(len(novel), int(round(n * novel_share(s.novel))))
    first = novel[spread(np.asarray(ood, np.float32)[novel], z[novel], quota)] if quota else np.zeros(0, np.int64)
    rest = np.flatnonzero(~np.isin(np.arange(len(z)), first))
    order = np.concatenate([first, rest[diverse(s.uncertainty[rest], z[rest], n - len(first), seed)]])
    novelty = set(first.tolist())
    out = []
    for r, i in enumerate(order, 1):
        p = probs[i]
        top = int(np.argmax(p))
        guess = (task.joiner.join(c for c, yes in zip(classes, task.decide(p[None])[0]) if yes)
                 if task.multi else classes[top])
        out.append({"index": int(i), "rank": r, "guess": guess, "probability": round(float(p[top]), 4),
                    "uncertainty": round(float(s.uncertainty[i]), 4), "margin": round(float(s.margin[i]), 4),
                    "entropy": round(float(s.entropy[i]), 4),
                    "ood_score": None if ood is None else round(float(ood[i]), 4), "novel": bool(s.novel[i]),
                    "reason": reason(int(i), s, probs, classes, task, ood, threshold, int(i) in novelty)})
    return out
