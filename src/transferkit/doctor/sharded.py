"""The doctor's analysis over features spread across a torchrun group (#31): each process holds
its share of the images' features (`features.FeaturePass(sharded=True)`) and none ever holds them
all. What needs every pair of images (each image's nearest neighbours, from which the near copies,
same scenes, outliers and the neighbours' vote follow) passes each process's rows round the group,
one process's at a time (`Group.blocks`); the out-of-fold heads are data-parallel
(`logistic.ShardedLogistic`); the map's plane comes from the covariance summed over the group.
The primary gathers per-image results only (neighbours, probabilities, the plane's coordinates),
decides what needs the images' own facts (content hashes, thumbnails), and concludes as
`analysis.find_all` does. No torch here (the group's collectives import it)."""

from __future__ import annotations

import numpy as np

from ..folds import group_folds, unit_rows
from ..logistic import ShardedLogistic, sharded_standardizer
from . import analysis, checks

CHUNK = 1024  # rows of this process compared with another's at once


def find_all(last: np.ndarray, head_features: np.ndarray, here: np.ndarray, labels, splits, facts,
             num_classes: int, same_scene: float, seed: int, group) -> dict | None:
    """`analysis.find_all` on rows spread over `group`: this process's `last` and `head_features`
    are the images at `here` (positions among all); `facts` (hashes, properties, thumbnails of
    every image) on the primary, None elsewhere. The findings on the primary, None elsewhere."""
    labels = np.asarray(labels)
    sims, idx = neighbours(last, here, len(labels), group)  # on the primary
    found = group.decide(lambda: analysis.look_and_group(sims, idx, labels, splits, *facts, same_scene))
    opinions = None
    if found["label_folds"] >= 2:
        sets = [last, head_features] if head_features.shape[1] > last.shape[1] else [last]
        opinions = [out_of_fold(x, here, labels, num_classes, found["label_folds"], seed, found["group_of"], group)
                    for x in sets]
    xy = feature_map(last, here, len(labels), group)
    if not group.primary:
        return None
    return analysis.conclude(found, opinions, sims, idx, labels, num_classes, xy)


def neighbours(x: np.ndarray, here: np.ndarray, n: int, group, k: int = checks.NEIGHBOURS):
    """`checks.neighbours` of the n rows spread over `group` (this process's `x` are rows `here`):
    (cosine similarities, indices) of each row's k nearest other rows, in order, on the primary
    (None elsewhere). Each process keeps its rows' best k so far while every process's rows go
    round; memory: this process's rows x k, and a chunk x another process's rows."""
    z = unit_rows(x)
    k = min(k, n - 1)
    best_sims = np.full((len(z), k), -np.inf, dtype=np.float32)
    best_idx = np.zeros((len(z), k), dtype=np.int64)
    for other_here, other in group.blocks((here, z)):
        for start in range(0, len(z) if len(other) else 0, CHUNK):
            rows = slice(start, start + CHUNK)
            s = z[rows] @ other.T
            s[here[rows, None] == other_here[None, :]] = -np.inf  # not itself
            cand_sims = np.concatenate([best_sims[rows], s], 1)
            cand_idx = np.concatenate([best_idx[rows], np.broadcast_to(other_here, s.shape)], 1)
            top = np.argpartition(-cand_sims, k - 1, axis=1)[:, :k] if cand_sims.shape[1] > k else \
                np.arange(cand_sims.shape[1])[None].repeat(len(s), 0)
            best_sims[rows] = np.take_along_axis(cand_sims, top, 1)
            best_idx[rows] = np.take_along_axis(cand_idx, top, 1)
    # nearest first; among equals the lower index
    order = np.lexsort((best_idx, -best_sims), axis=1) if len(z) else np.zeros((0, k), dtype=np.int64)
    best_sims, best_idx = np.take_along_axis(best_sims, order, 1), np.take_along_axis(best_idx, order, 1)
    return _on_primary([(here, best_sims), (here, best_idx)], n, group)


def out_of_fold(x: np.ndarray, here: np.ndarray, labels: np.ndarray, num_classes: int, folds: int, seed: int,
                groups: np.ndarray, group, weight_decay: float = 0.1) -> np.ndarray | None:
    """`checks.out_of_fold_probabilities` with the rows spread over `group`: the folds drawn from
    every label and group (the same on every process), each fold's head fitted by the group
    together on its training rows. Every image's probabilities on the primary, None elsewhere."""
    fold_of = group_folds(labels, groups, folds, seed)[here]
    y = labels[here]
    probs = np.zeros((len(here), num_classes))
    for f in range(folds):
        train, test = fold_of != f, fold_of == f
        mean, scale = sharded_standardizer(x[train], "feature", group.sum)
        head = ShardedLogistic(((x[train] - mean) / scale).astype(np.float32), y[train], num_classes, weight_decay,
                               allreduce=group.sum)
        theta, _ = head.fit(head.start(), 500)
        if test.any():
            probs[test] = np.exp(head.log_probs(((x[test] - mean) / scale).astype(np.float32), theta))
    return _on_primary([(here, probs)], len(labels), group)[0]


def feature_map(x: np.ndarray, here: np.ndarray, n: int, group) -> list[list[float]] | None:
    """`analysis.feature_map` with the rows spread over `group`: the first two principal
    components from the covariance summed over the group (D x D, float64), each process
    projecting its rows; each axis's sign set so that its largest loading is positive. The plane
    on the primary, None elsewhere."""
    if n < 3:
        return [[0.5, 0.5] for _ in range(n)] if group.primary else None
    x = np.asarray(x, dtype=np.float64)
    mean = group.sum(x.sum(0)) / n
    centred = x - mean
    cov = group.sum(centred.T @ centred) / max(1, n - 1)
    _, vectors = np.linalg.eigh(cov)
    axes = vectors[:, ::-1][:, :2]
    axes *= np.sign(axes[np.abs(axes).argmax(0), [0, 1]])
    (xy,) = _on_primary([(here, centred @ axes)], n, group)
    if xy is None:
        return None
    low, span = xy.min(0), np.maximum(xy.max(0) - xy.min(0), 1e-12)
    return np.round((xy - low) / span, 4).tolist()


def _on_primary(parts: list[tuple[np.ndarray, np.ndarray]], n: int, group) -> list:
    """Each (positions, per-row values) of every process, put in place in arrays of n rows, on
    the primary (None elsewhere): per-image results, never the features."""
    gathered = group.gather(parts)
    if gathered is None:
        return [None] * len(parts)
    out = []
    for j, (_, values) in enumerate(parts):
        full = np.zeros((n, *values.shape[1:]), dtype=values.dtype)
        for rank_parts in gathered:
            where, part = rank_parts[j]
            full[where] = part
        out.append(full)
    return out
