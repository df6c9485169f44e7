"""The doctor's analysis of a dataset, from what `diagnose` read (content hashes, pixel
properties, thumbnails, features): every check's findings as plain lists of indices. It runs in
the helper process (`transferkit.worker`, "transferkit.doctor.analysis:find_all") while the
doctor's own process reads the features, or in that process. No torch here."""

from __future__ import annotations

import numpy as np

from ..folds import components, max_folds
from ..task import strata_of
from . import checks

LABEL_FOLDS = 5
MAP_NEIGHBOURS = 8  # "more like this": each image's nearest images on the features


def feature_map(features: np.ndarray) -> list[list[float]]:
    """The images on a plane: the first two principal components of their features (scikit-learn's
    PCA, deterministic), scaled to [0, 1] each."""
    from sklearn.decomposition import PCA

    if len(features) < 3:
        return [[0.5, 0.5] for _ in range(len(features))]
    xy = PCA(n_components=2, svd_solver="full" if len(features) < 2000 else "randomized",
             random_state=0).fit_transform(features.astype(np.float32))
    low, span = xy.min(0), np.maximum(xy.max(0) - xy.min(0), 1e-12)
    return np.round((xy - low) / span, 4).tolist()


def find_all(last: np.ndarray, head_features: np.ndarray, labels, splits, hashes, props, thumbs,
             num_classes: int, same_scene: float, seed: int, multi_hot: np.ndarray | None = None) -> dict:
    """Every check's findings, by kind (indices into the samples). `last`: the last layer's
    features (near copies, neighbours, outliers); `head_features`: what the out-of-fold head
    reads (multi-layer where the backbone has them). `multi_hot`: multi-label data's (N, C) 0/1
    rows (`labels` then number the label sets: two copies with other sets are "two labels")."""
    labels = np.asarray(labels)
    sims, idx = checks.neighbours(last)
    found = look_and_group(sims, idx, labels, splits, hashes, props, thumbs, same_scene, multi_hot)
    if multi_hot is not None:
        return _conclude_multilabel(found, last, head_features, multi_hot, sims, idx, seed)
    opinions = None
    if found["label_folds"] >= 2:
        # three opinions of each image's class, none of which saw it (nor its copies): heads on the
        # last layer's and on the multi-layer features, and its nearest neighbours' vote. Measured
        # (bench/doctor.py, 20 flipped labels): flowers recall 0.70 -> 0.80 at precision 0.39 -> 0.57,
        # hymenoptera recall 1.00 (README, "Label errors")
        opinions = [checks.out_of_fold_probabilities(x, labels, num_classes, found["label_folds"], seed,
                                                     groups=found["group_of"])
                    for x in ([last, head_features] if head_features.shape[1] > last.shape[1] else [last])]
    return conclude(found, opinions, sims, idx, labels, num_classes, feature_map(last))


def look_and_group(sims, idx, labels, splits, hashes, props, thumbs, same_scene: float,
                   multi_hot: np.ndarray | None = None) -> dict:
    """From each image's nearest neighbours and its facts: exact and near copies, same scenes,
    image issues, the groups that keep look-alikes in one fold, and how many folds they allow."""
    exact = checks.exact_duplicates(hashes, labels, splits)
    image_issues = checks.image_issues(props)
    # blank images are all alike (and reported as blank): pairing them with each other says nothing
    blank = {f["i"] for f in image_issues.get("blank", [])}
    near, scene = checks.look_alikes(sims, idx, thumbs, labels, splits, exact, blank, same_scene)
    groups = components(len(labels), [(p["a"], p["b"]) for p in exact + near + scene])
    strata = labels if multi_hot is None else strata_of(multi_hot)  # (multi-label: each image's rarest label)
    return {"exact_duplicates": exact, "near_duplicates": near, "same_scene": scene, "image_issues": image_issues,
            "group_of": groups, "label_folds": max_folds(strata, groups, LABEL_FOLDS)}


def _conclude_multilabel(found: dict, last, head_features, y: np.ndarray, sims, idx, seed: int) -> dict:
    """`conclude` for multi-label data: the same three opinions (out-of-fold one-vs-rest heads on
    the last layer's and the multi-layer features, the neighbours' share), averaged per class, read
    by cleanlab's multi-label confident learning (`checks.multilabel_issues`)."""
    groups = found.pop("group_of")
    if found["label_folds"] >= 2:
        opinions = [checks.out_of_fold_multilabel(x, y, found["label_folds"], seed, groups=groups)
                    for x in ([last, head_features] if head_features.shape[1] > last.shape[1] else [last])]
        probs = np.mean(opinions + [checks.neighbour_share(sims, idx, y, groups)], axis=0)
        label_issues, predicted = checks.multilabel_issues(probs, y, sims, idx), probs.argmax(1).tolist()
    else:
        label_issues, predicted = [], None
    sizes = np.bincount(groups)
    return {**found, "label_issues": label_issues, "outliers": checks.outliers(sims),
            "map": {"xy": feature_map(last), "neighbours": idx[:, :MAP_NEIGHBOURS].tolist(), "predicted": predicted},
            "groups": {"groups": int(len(sizes)), "grouped_images": int((sizes > 1)[groups].sum()),
                       "largest": int(sizes.max()) if len(sizes) else 0}}


def conclude(found: dict, opinions: list | None, sims, idx, labels, num_classes: int, xy) -> dict:
    """The findings (`find_all`'s answer) from `look_and_group`'s, the out-of-fold heads'
    probabilities (None: too few images for folds) and the map's plane."""
    groups = found.pop("group_of")
    if opinions is not None:
        opinions.append(checks.neighbour_vote(sims, idx, labels, num_classes, groups))
        probs = np.mean(opinions, axis=0)
        label_issues = checks.label_issues(probs, labels, sims, idx)
        predicted = probs.argmax(1).tolist()
    else:
        label_issues, predicted = [], None
    sizes = np.bincount(groups)
    return {**found, "label_issues": label_issues, "outliers": checks.outliers(sims),
            "map": {"xy": xy, "neighbours": idx[:, :MAP_NEIGHBOURS].tolist(), "predicted": predicted},
            "groups": {"groups": int(len(sizes)), "grouped_images": int((sizes > 1)[groups].sum()),
                       "largest": int(sizes.max()) if len(sizes) else 0}}
