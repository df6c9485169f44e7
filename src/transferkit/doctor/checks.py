"""The problems, found from content hashes, image properties and feature vectors. Each check
returns plain lists and dicts (written to doctor.json as they are). No torch here.

Samples are described by three parallel sequences: `paths`, `labels` (class index) and
`splits` ("train" or "val")."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

# Cosine similarity of the backbone's last-layer features at or above which two images are near
# duplicates. Chosen by measurement (bench/doctor.py on hymenoptera and flowers: copies re-saved
# at JPEG quality 50, resized to 0.7x, cropped to 90% or mirrored mostly score 0.92-0.99; distinct
# photos never reach it in hymenoptera; in flowers only burst shots of one scene do): see the README.
NEAR_DUPLICATE = 0.90
NEIGHBOURS = 10  # nearest neighbours looked at per image (near duplicates and outliers)
OUTLIER_Z = 5.0  # robust z-score of the mean distance to the nearest neighbours past which an image is an outlier
SMALL_CLASS = 10  # fewer images than this: a 20% val split holds one or none of them
IMBALANCE = 3.0  # largest / smallest class past which the remedies are suggested


def samples_of(split) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(paths, labels, splits) of a `DatasetSplit`'s images: its train images, then its val images."""
    samples = split.train + split.val
    return ([s.path for s in samples], np.array([s.label for s in samples]),
            np.array(["train"] * len(split.train) + ["val"] * len(split.val)))


def unit_rows(x: np.ndarray) -> np.ndarray:
    """The rows of `x` scaled to length 1 (float32): their dot products are cosine similarities."""
    x = x.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def kind_of_pair(i: int, j: int, labels, splits) -> str:
    """"two labels" (one image in two classes), "leakage" (in train and val, same class) or
    "within class"."""
    if labels[i] != labels[j]:
        return "two labels"
    if splits[i] != splits[j]:
        return "leakage"
    return "within class"


def exact_duplicates(hashes: list[bytes | None], labels, splits) -> list[dict]:
    """Pairs of files with the same bytes: each file of a group paired with the group's first."""
    groups: dict[bytes, list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        if h is not None:
            groups[h].append(i)
    pairs = []
    for members in groups.values():
        for j in members[1:]:
            pairs.append({"a": members[0], "b": j, "kind": kind_of_pair(members[0], j, labels, splits),
                          "similarity": 1.0})
    return pairs


def neighbours(embeddings: np.ndarray, k: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """(cosine similarities, indices) of each row's k nearest other rows. scikit-learn's brute
    search works through the rows in chunks: memory grows with rows x chunk, not rows^2."""
    from sklearn.neighbors import NearestNeighbors

    z = unit_rows(embeddings)
    k = min(k + 1, len(z))
    dist, idx = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(z).kneighbors(z)
    # drop each row itself (normally the first; with exact copies it may come later)
    keep = idx != np.arange(len(z))[:, None]
    keep[keep.sum(1) == k, -1] = False  # the row was not among its neighbours: drop the farthest
    sims = (1 - dist)[keep].reshape(len(z), k - 1)
    return sims, idx[keep].reshape(len(z), k - 1)


def near_duplicates(sims: np.ndarray, idx: np.ndarray, labels, splits, exact: list[dict],
                    threshold: float = NEAR_DUPLICATE) -> list[dict]:
    """Pairs at or above `threshold` cosine similarity that are not byte-identical, most similar
    first."""
    same = {frozenset((p["a"], p["b"])) for p in exact}
    found: dict[frozenset, float] = {}
    for i, j in zip(*np.nonzero(sims >= threshold)):
        pair = frozenset((i, int(idx[i, j])))
        if len(pair) == 2 and pair not in same:
            found[pair] = max(found.get(pair, 0.0), float(sims[i, j]))
    out = []
    for pair, sim in sorted(found.items(), key=lambda kv: -kv[1]):
        a, b = sorted(pair)
        out.append({"a": int(a), "b": int(b), "kind": kind_of_pair(a, b, labels, splits), "similarity": round(sim, 4)})
    return out


def out_of_fold_probabilities(x: np.ndarray, y: np.ndarray, num_classes: int, folds: int = 5,
                              seed: int = 0, weight_decay: float = 0.1) -> np.ndarray:
    """Each image's class probabilities from a logistic-regression head fitted without it
    (stratified K-fold, features standardized on the training folds)."""
    from ..training.logistic import Logistic, standardizer, stratified_folds

    fold_of = stratified_folds(y, folds, seed)
    probs = np.zeros((len(y), num_classes))
    for f in range(folds):
        train, test = fold_of != f, fold_of == f
        mean, scale = standardizer(x[train])
        head = Logistic(((x[train] - mean) / scale).astype(np.float32), y[train], num_classes, weight_decay)
        theta, _ = head.fit(head.start(), 500)
        probs[test] = np.exp(head.log_probs(((x[test] - mean) / scale).astype(np.float32), theta))
    return probs


def label_issues(probs: np.ndarray, y: np.ndarray) -> list[dict]:
    """Likely label errors by confident learning (cleanlab), worst first: each with its given
    and suggested class and cleanlab's label-quality score (low: likely wrong)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    issues = find_label_issues(y, probs, return_indices_ranked_by="self_confidence")
    scores = get_label_quality_scores(y, probs)
    return [{"i": int(i), "given": int(y[i]), "suggested": int(np.argmax(probs[i])), "score": round(float(scores[i]), 4)}
            for i in issues]


def outliers(sims: np.ndarray, z: float = OUTLIER_Z) -> list[dict]:
    """Images far from all others: the mean cosine distance to their nearest neighbours, as a
    robust z-score (median and MAD over the dataset) past `z`; farthest first."""
    distance = 1 - sims.mean(1)
    median = np.median(distance)
    mad = 1.4826 * np.median(np.abs(distance - median)) + 1e-9
    scores = (distance - median) / mad
    order = np.argsort(-scores)
    return [{"i": int(i), "distance": round(float(distance[i]), 4), "z": round(float(scores[i]), 2)}
            for i in order if scores[i] > z]


def balance(labels, splits, classes: list[str]) -> dict:
    """Images per class (train, val, all), the largest/smallest ratio, the classes too small for
    a reliable val split, and what to do."""
    labels, splits = np.asarray(labels), np.asarray(splits)
    k = len(classes)
    train = np.bincount(labels[splits == "train"], minlength=k)
    val = np.bincount(labels[splits == "val"], minlength=k)
    total = train + val
    ratio = float(total.max() / max(total.min(), 1))
    small = [classes[c] for c in range(k) if total[c] < SMALL_CLASS]
    remedies = []
    if ratio > IMBALANCE:
        remedies.append("train with --class-weights auto (or --balanced-sampler), and read the balanced accuracy "
                        "and per-class recall rather than the accuracy")
    if small:
        remedies.append(f"add images to {', '.join(small)}: with under {SMALL_CLASS} images, a class's val accuracy "
                        "rests on one or two images")
    return {"per_class": {c: {"train": int(train[i]), "val": int(val[i]), "total": int(total[i])}
                          for i, c in enumerate(classes)},
            "max_min_ratio": round(ratio, 2), "small_classes": small, "remedies": remedies}


def image_issues(props: list[np.ndarray | None]) -> dict[str, list[dict]]:
    """Tiny, blank (nearly constant), very dark, very bright, extreme aspect ratio, and greyscale
    among colour images. Thresholds are on 0-255 luma; "tiny" is relative to the dataset."""
    ok = [i for i, p in enumerate(props) if p is not None]
    if not ok:
        return {}
    a = np.stack([props[i] for i in ok])
    short = np.minimum(a[:, 0], a[:, 1])
    aspect = np.maximum(a[:, 0], a[:, 1]) / np.maximum(short, 1)
    typical_short = float(np.median(short))
    greyish = (a[:, 4] < 1.0) | (a[:, 5] == 1)
    colour_dataset = greyish.mean() < 0.1  # greyscale is worth a word only where most images have colour
    blank = a[:, 3] < 4.0
    rules = {
        "blank": (blank, lambda r: f"nearly constant (luma std {r[3]:.1f})"),
        "dark": (~blank & (a[:, 2] < 20), lambda r: f"very dark (mean luma {r[2]:.0f} of 255)"),
        "bright": (~blank & (a[:, 2] > 240), lambda r: f"very bright (mean luma {r[2]:.0f} of 255)"),
        "tiny": ((short < 32) | (short < typical_short / 4), lambda r: f"{r[0]:.0f}x{r[1]:.0f} px "
                 f"(the typical short side is {typical_short:.0f})"),
        "extreme_aspect": (aspect > 4, lambda r: f"{r[0]:.0f}x{r[1]:.0f} px, aspect {max(r[0], r[1]) / max(min(r[0], r[1]), 1):.1f}:1"),
        "greyscale": (greyish & colour_dataset & ~blank, lambda r: "greyscale among colour images"),
    }
    return {kind: [{"i": ok[j], "detail": describe(a[j])} for j in np.flatnonzero(mask)]
            for kind, (mask, describe) in rules.items()}
