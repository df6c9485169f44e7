"""The problems, found from content hashes, image properties and feature vectors. Each check
returns plain lists and dicts (written to doctor.json as they are). No torch here.

Samples are described by three parallel sequences: `paths`, `labels` (class index) and
`splits` ("train" or "val")."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..folds import SAME_SCENE, group_folds, unit_rows
from . import copies

# Cosine similarity of the backbone's last-layer features from which two images are the same
# scene (a near copy, or another shot of it); near copies are confirmed by comparing the images
# (`copies`), down to copies.CANDIDATE. Measured: README, "The doctor's thresholds".
NEAR_DUPLICATE = SAME_SCENE
NEIGHBOURS = 10  # nearest neighbours looked at per image (near duplicates and outliers)
OUTLIER_Z = 5.0  # robust z-score of the mean distance to the nearest neighbours past which an image is an outlier
SMALL_CLASS = 10  # fewer images than this: a 20% val split holds one or none of them
IMBALANCE = 3.0  # largest / smallest class past which the remedies are suggested


def samples_of(split) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(paths, labels, splits) of a `DatasetSplit`'s images: its train images, then its val images.
    Multi-label data: an image's label is its set's number (images with the same set, the same
    number: two copies are "two labels" when their sets differ)."""
    samples = split.train + split.val
    if split.task.multi:
        sets = {key: i for i, key in enumerate(sorted({s.labels for s in samples}))}
        labels = np.array([sets[s.labels] for s in samples])
    else:
        labels = np.array([s.label for s in samples])
    return ([s.path for s in samples], labels,
            np.array(["train"] * len(split.train) + ["val"] * len(split.val)))


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


def look_alikes(sims: np.ndarray, idx: np.ndarray, thumbs, labels, splits, exact: list[dict], skip: set[int],
                same_scene: float = SAME_SCENE) -> tuple[list[dict], list[dict]]:
    """(near copies, same-scene pairs) among each image's nearest neighbours (`neighbours`), most
    similar first. A pair at or above copies.CANDIDATE cosine is a near copy when the images
    themselves match (`copies.is_copy` on their thumbnails); otherwise, from `same_scene`
    cosine on, the same scene. Byte-identical pairs (`exact`) and images in `skip` (blank ones:
    all alike) are left out."""
    same = {frozenset((p["a"], p["b"])) for p in exact}
    found: dict[tuple[int, int], float] = {}
    for i, j in zip(*np.nonzero(sims >= min(copies.CANDIDATE, same_scene))):
        a, b = sorted((int(i), int(idx[i, j])))
        if a != b and a not in skip and b not in skip and frozenset((a, b)) not in same:
            found[(a, b)] = max(found.get((a, b), -1.0), min(float(sims[i, j]), 1.0))
    pairs = list(found)
    match = copies.match_scores(thumbs, np.array(pairs).reshape(-1, 2)) if pairs else np.zeros(0)
    near, scene = [], []
    for (a, b), m in zip(pairs, match):
        cos = found[(a, b)]
        item = {"a": a, "b": b, "kind": kind_of_pair(a, b, labels, splits), "similarity": round(cos, 4),
                "match": None if np.isnan(m) else round(float(m), 4)}
        if not np.isnan(m) and copies.is_copy(float(m), cos):
            near.append(item)
        elif cos >= same_scene:
            scene.append(item)
    order = lambda p: (-(p["match"] or 0.0) - p["similarity"], p["a"], p["b"])  # noqa: E731
    return sorted(near, key=order), sorted(scene, key=order)


def out_of_fold_probabilities(x: np.ndarray, y: np.ndarray, num_classes: int, folds: int = 5,
                              seed: int = 0, weight_decay: float = 0.1, groups: np.ndarray | None = None) -> np.ndarray:
    """Each image's class probabilities from a logistic-regression head fitted without it (nor
    anything in its group: `folds.group_folds`), features standardized on the training folds."""
    from ..logistic import Logistic, standardizer

    fold_of = group_folds(y, groups, folds, seed)
    probs = np.zeros((len(y), num_classes))
    for f in range(folds):
        train, test = fold_of != f, fold_of == f
        if not test.any():
            continue
        mean, scale = standardizer(x[train])
        head = Logistic(((x[train] - mean) / scale).astype(np.float32), y[train], num_classes, weight_decay)
        theta, _ = head.fit(head.start(), 500)
        probs[test] = np.exp(head.log_probs(((x[test] - mean) / scale).astype(np.float32), theta))
    return probs


def out_of_fold_multilabel(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0, weight_decay: float = 0.1,
                           groups: np.ndarray | None = None) -> np.ndarray:
    """Multi-label: each image's per-class probabilities (sigmoids) from one-vs-rest logistic
    heads fitted without it (nor its group), folds stratified by each image's rarest label."""
    from ..logistic import MultiLogistic, standardizer
    from ..task import sigmoid, strata_of

    fold_of = group_folds(strata_of(y), groups, folds, seed)
    probs = np.zeros(y.shape)
    for f in range(folds):
        train, test = fold_of != f, fold_of == f
        if not test.any():
            continue
        mean, scale = standardizer(x[train])
        head = MultiLogistic(((x[train] - mean) / scale).astype(np.float32), y[train], y.shape[1], weight_decay)
        theta, _ = head.fit(head.start(), 500)
        probs[test] = sigmoid(head.logits(((x[test] - mean) / scale).astype(np.float32), theta).astype(np.float64))
    return probs


def neighbour_share(sims: np.ndarray, idx: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Multi-label: each image's per-class probabilities from its nearest neighbours' label sets
    (the share of them, weighted by cosine similarity, that have the class; pulled toward the
    class's frequency by KNN_SMOOTHING pseudo-votes); copies of the image do not vote."""
    w = np.clip(sims, 0, None)
    if groups is not None:
        w = np.where(groups[idx] == groups[:, None], 0.0, w)
    prior = y.mean(0)
    votes = np.einsum("nk,nkc->nc", w, y[idx])
    return (votes + KNN_SMOOTHING * prior) / (w.sum(1, keepdims=True) + KNN_SMOOTHING)


def multilabel_issues(probs: np.ndarray, y: np.ndarray, sims: np.ndarray | None = None,
                      idx: np.ndarray | None = None) -> list[dict]:
    """Multi-label: likely label errors by cleanlab's multi-label confident learning, worst first:
    each with the labels it likely lacks (`missing`: probable, not given) and likely should not
    have (`extra`: given, improbable), the set suggested, cleanlab's score, and as evidence its
    nearest images that have the missing labels and are not suspects themselves."""
    from cleanlab.multilabel_classification.filter import find_label_issues
    from cleanlab.multilabel_classification.rank import get_label_quality_scores

    given = [np.flatnonzero(row).tolist() for row in y]
    issues = find_label_issues(given, probs, return_indices_ranked_by="self_confidence")
    scores = get_label_quality_scores(given, probs)
    suspects = set(int(i) for i in issues)
    out = []
    for i in issues:
        said, likely = y[i] > 0, probs[i] >= 0.5
        missing, extra = np.flatnonzero(likely & ~said).tolist(), np.flatnonzero(said & ~likely).tolist()
        evidence = []
        if idx is not None and missing:
            evidence = [{"i": int(j), "similarity": round(float(s), 4)} for j, s in zip(idx[i], sims[i])
                        if y[j, missing].all() and int(j) not in suspects][:EVIDENCE]
        out.append({"i": int(i), "suggested": np.flatnonzero(likely).tolist(), "missing": missing, "extra": extra,
                    "score": round(float(scores[i]), 4), "evidence": evidence})
    return out


KNN_SMOOTHING = 1.0  # pseudo-votes spread evenly over the classes


def neighbour_vote(sims: np.ndarray, idx: np.ndarray, y: np.ndarray, num_classes: int,
                   groups: np.ndarray | None = None) -> np.ndarray:
    """Each image's class probabilities from its nearest neighbours' labels, weighted by their
    cosine similarity; neighbours in the image's own group (copies of it) do not vote."""
    w = np.clip(sims, 0, None)
    if groups is not None:
        w = np.where(groups[idx] == groups[:, None], 0.0, w)
    votes = np.zeros((len(y), num_classes))
    np.add.at(votes, (np.repeat(np.arange(len(y)), idx.shape[1]), y[idx].ravel()), w.ravel())
    return (votes + KNN_SMOOTHING / num_classes) / (votes.sum(1, keepdims=True) + KNN_SMOOTHING)


EVIDENCE = 3  # nearest images of the suggested class shown beside a suspect


def label_issues(probs: np.ndarray, y: np.ndarray, sims: np.ndarray | None = None,
                 idx: np.ndarray | None = None) -> list[dict]:
    """Likely label errors by confident learning (cleanlab), worst first: each with its given
    and suggested class, cleanlab's label-quality score (low: likely wrong) and, as evidence,
    its nearest images labelled with the suggested class that are not suspects themselves."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    issues = find_label_issues(y, probs, return_indices_ranked_by="self_confidence")
    scores = get_label_quality_scores(y, probs)
    suspects = set(int(i) for i in issues)
    out = []
    for i in issues:
        suggested = int(np.argmax(probs[i]))
        evidence = []
        if idx is not None:
            evidence = [{"i": int(j), "similarity": round(float(s), 4)} for j, s in zip(idx[i], sims[i])
                        if y[j] == suggested and int(j) not in suspects][:EVIDENCE]
        out.append({"i": int(i), "given": int(y[i]), "suggested": suggested, "score": round(float(scores[i]), 4),
                    "evidence": evidence})
    return out


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
    return _balance(np.bincount(labels[splits == "train"], minlength=k), np.bincount(labels[splits == "val"], minlength=k),
                    classes, "train with --class-weights auto (or --balanced-sampler), and read the balanced accuracy "
                             "and per-class recall rather than the accuracy", "val accuracy")


def balance_multilabel(y: np.ndarray, splits, classes: list[str]) -> dict:
    """`balance` of multi-label data: images that have each class (train, val, all), the same
    ratio, small classes and remedies, plus the images with no label and the label co-occurrence
    (images with both labels; the diagonal is each label's count)."""
    y, splits = np.asarray(y) > 0, np.asarray(splits)
    out = _balance(y[splits == "train"].sum(0), y[splits == "val"].sum(0), classes,
                   "train with --class-weights auto (each class's positives weigh as much as its negatives), and read "
                   "the per-class AP and the macro mAP rather than the micro figures", "AP")
    ints = y.astype(np.int64)
    return {**out, "images_without_labels": int((~y.any(1)).sum()), "cooccurrence": (ints.T @ ints).tolist()}


def _balance(train: np.ndarray, val: np.ndarray, classes: list[str], reweigh: str, measure: str) -> dict:
    total = train + val
    ratio = float(total.max() / max(total.min(), 1))
    small = [classes[c] for c in range(len(classes)) if total[c] < SMALL_CLASS]
    remedies = [reweigh] if ratio > IMBALANCE else []
    if small:
        remedies.append(f"add images to {', '.join(small)}: with under {SMALL_CLASS} images, a class's {measure} "
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
