"""Which images are held out together when a measurement is made on training images (the head's
cross-validation, auto's comparison, the doctor's out-of-fold probabilities).

Near-identical images (copies, burst shots, runs of shots of one product) must never sit on both
sides of a fold: the held-out one is then recognised rather than predicted, and the estimate is
optimistic (a grocery set's CV read 94.8% against 68.4% on val). `similar_groups` links images
whose last-layer features are at least `SAME_SCENE` alike (plus any pairs a caller confirmed,
e.g. the doctor's near copies) into groups, and `group_folds` deals whole groups into
class-stratified folds (scikit-learn's StratifiedGroupKFold, fold for fold). Without any group of two or more,
`stratified_folds` does the same with singletons.

Cost: each image is compared with every other in chunks of rows (NumPy matrix products): time
n^2 x d, memory chunk x n. Callers bound n: the head's cross-validation groups only the images it
cross-validates (at most `training.heads.cv_images`), so its cost stops growing with the
dataset. No torch here.
"""

from __future__ import annotations

import numpy as np

# Cosine similarity of last-layer features from which two images are the same scene: measured
# (bench/doctor.py) on hymenoptera and flowers, distinct photos stay below it except burst shots
# of one scene, and copies made by resizing, recompression, mirroring, small crops or rotations
# mostly score 0.90-1.00 (harder copies are confirmed by `doctor.copies`).
SAME_SCENE = 0.90
CHUNK = 2048  # rows compared with all others at once


def unit_rows(x: np.ndarray) -> np.ndarray:
    """The rows of `x` scaled to length 1 (float32): their dot products are cosine similarities."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def similar_pairs(x: np.ndarray, threshold: float = SAME_SCENE) -> np.ndarray:
    """(m, 2) index pairs i < j of rows of `x` whose cosine similarity is >= `threshold`."""
    z = unit_rows(x)
    found = []
    for start in range(0, len(z), CHUNK):
        sims = z[start:start + CHUNK] @ z.T
        i, j = np.nonzero(sims >= threshold)
        i = i + start
        keep = i < j
        found.append(np.stack([i[keep], j[keep]], 1))
    return np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)


def components(n: int, pairs) -> np.ndarray:
    """The group (0..g-1) of each of `n` items, linking every pair in `pairs` (union-find)."""
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([root(i) for i in range(n)], dtype=np.int64)
    return np.unique(roots, return_inverse=True)[1]


def similar_groups(x: np.ndarray, threshold: float = SAME_SCENE, extra_pairs=()) -> np.ndarray:
    """The group of each row of `x`: linked when at least `threshold` alike, or listed in
    `extra_pairs`."""
    pairs = similar_pairs(x, threshold)
    return components(len(x), [*map(tuple, pairs), *extra_pairs])


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of each sample: each class's samples shuffled (seeded) and dealt out
    in turn, so every fold holds each class in proportion."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), dtype=np.int64)
    offset = 0
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold_of[idx] = (np.arange(len(idx)) + offset) % folds
        offset += len(idx)
    return fold_of


def stratified_sample(y: np.ndarray, size: int, seed: int) -> np.ndarray:
    """The sorted indices of about `size` samples of `y`, each class in proportion (at least one
    of each), drawn with `seed`."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        take = max(1, int(round(len(idx) * size / len(y))))
        picked.append(rng.permutation(idx)[:take])
    return np.sort(np.concatenate(picked))


def group_folds(y: np.ndarray, groups: np.ndarray | None, folds: int, seed: int) -> np.ndarray:
    """The fold of each sample, whole groups in one fold, each class spread over the folds as
    evenly as the groups allow: scikit-learn's StratifiedGroupKFold(shuffle=True,
    random_state=seed), fold for fold (tests/doctor/test_doctor.py compares them). Its greedy rule: the
    groups, shuffled, the most single-class first, each into the fold that leaves each class's
    share over the folds least spread (the mean over classes of the standard deviation over
    folds; near-ties: the fold with fewer images). Here every candidate fold of a group is scored
    in one NumPy expression, the same arithmetic: 22 ms instead of 160 ms for 1,000 CIFAR-10
    images, paid on every draw of the folds, and no scikit-learn import (0.7 s) in the run's
    process. With no group of two or more: `stratified_folds`."""
    if groups is None or len(np.unique(groups)) == len(groups):
        return stratified_folds(y, folds, seed)
    _, y_inv, y_count = np.unique(y, return_inverse=True, return_counts=True)
    _, group_of, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    members = np.zeros((len(sizes), len(y_count)))  # images of each class in each group
    np.add.at(members, (group_of, y_inv), 1)
    shuffled = np.arange(len(sizes))
    np.random.RandomState(seed).shuffle(shuffled)
    members, position = members[shuffled], np.argsort(shuffled)
    per_fold = np.zeros((folds, len(y_count)))
    into = np.eye(folds)[:, :, None]  # (candidate fold, fold, 1)
    fold_of_group = np.empty(len(sizes), dtype=np.int64)
    for g in np.argsort(-np.std(members, axis=1), kind="stable"):
        spread = np.std((per_fold[None] + into * members[g]) / y_count, axis=1).mean(1).tolist()
        images = per_fold.sum(1).tolist()
        best, least, fewest = 0, float("inf"), float("inf")
        for f in range(folds):  # (np.isclose's tolerances)
            if spread[f] < least or (abs(spread[f] - least) <= 1e-8 + 1e-5 * abs(least) and images[f] < fewest):
                best, least, fewest = f, spread[f], images[f]
        per_fold[best] += members[g]
        fold_of_group[g] = best
    return fold_of_group[position[group_of]]


def max_folds(y: np.ndarray, groups: np.ndarray | None, most: int) -> int:
    """The most folds (up to `most`) that leave every class in at least two of them: a class's
    number of groups (images, without groups) bounds it."""
    y = np.asarray(y)
    if not len(y):
        return 0
    if groups is None:
        counts = np.bincount(y)
        return int(min(most, counts[counts > 0].min()))
    per_class = [len(np.unique(groups[y == c])) for c in np.unique(y)]
    return int(min(most, min(per_class)))
