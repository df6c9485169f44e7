"""The doctor's analysis of a dataset, from what `diagnose` read (content hashes, pixel
properties, thumbnails, features): every check's findings as plain lists of indices. It runs in
the helper process (`transferkit.worker`, "transferkit.doctor.analysis:find_all") while the
doctor's own process reads the features, or in that process. No torch here."""

from __future__ import annotations

import numpy as np

from ..folds import components, max_folds
from ..task import strata_of
from . import checks, kinds

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
        return _conclude_multilabel(found, last, head_features, labels, multi_hot, sims, idx, seed)
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
    """From each image's nearest neighbours and its facts: every kind of the "look" phase (exact
    and near copies, same scenes, image issues: `kinds`), the groups that keep look-alikes in one
    fold, and how many folds they allow."""
    evidence = kinds.Evidence(sims, idx, labels, splits, hashes, props, thumbs, same_scene, multi_hot)
    found = kinds.find(evidence, "look")
    groups = components(len(labels), kinds.pairs_found(found))
    strata = labels if multi_hot is None else strata_of(multi_hot)  # (multi-label: each image's rarest label)
    return {**found, "group_of": groups, "label_folds": max_folds(strata, groups, LABEL_FOLDS)}


def _conclude_multilabel(found: dict, last, head_features, labels, y: np.ndarray, sims, idx, seed: int) -> dict:
    """`conclude` for multi-label data: the same three opinions (out-of-fold one-vs-rest heads on
    the last layer's and the multi-layer features, the neighbours' share), averaged per class, read
    by cleanlab's multi-label confident learning (`checks.multilabel_issues`)."""
    probs = None
    if found["label_folds"] >= 2:
        opinions = [checks.out_of_fold_multilabel(x, y, found["label_folds"], seed, groups=found["group_of"])
                    for x in ([last, head_features] if head_features.shape[1] > last.shape[1] else [last])]
        probs = np.mean(opinions + [checks.neighbour_share(sims, idx, y, found["group_of"])], axis=0)
    return _concluded(found, kinds.Evidence(sims, idx, labels, multi_hot=y, probs=probs),
                      feature_map(last))


def conclude(found: dict, opinions: list | None, sims, idx, labels, num_classes: int, xy) -> dict:
    """The findings (`find_all`'s answer) from `look_and_group`'s, the out-of-fold heads'
    probabilities (None: too few images for folds) and the map's plane."""
    probs = None
    if opinions is not None:
        opinions.append(checks.neighbour_vote(sims, idx, labels, num_classes, found["group_of"]))
        probs = np.mean(opinions, axis=0)
    return _concluded(found, kinds.Evidence(sims, idx, labels, probs=probs), xy)


def _concluded(found: dict, evidence: kinds.Evidence, xy) -> dict:
    """Every kind of the "conclude" phase found from `evidence`, the map and the groups' sizes."""
    groups = found.pop("group_of")
    concluded = kinds.find(evidence, "conclude")
    predicted = evidence.probs.argmax(1).tolist() if evidence.probs is not None else None
    sizes = np.bincount(groups)
    return {**found, **concluded,
            "map": {"xy": xy, "neighbours": evidence.idx[:, :MAP_NEIGHBOURS].tolist(), "predicted": predicted},
            "groups": {"groups": int(len(sizes)), "grouped_images": int((sizes > 1)[groups].sum()),
                       "largest": int(sizes.max()) if len(sizes) else 0}}
