"""The checks `train` runs by itself, cheaply, on what it has anyway: the files' content hashes
(cached per image) and, for the strategies that extract them, the features. It looks for val
images that are copies or near copies of training images (the val accuracy would overstate the
model) and for one image under two labels. `transferkit doctor` does the full examination."""

from __future__ import annotations

import numpy as np

from ..cache import Cache
from . import checks, images

SHOWN_PAIRS = 50  # pairs listed in results.json (all are counted)


def quick_health(split, features, cache: Cache, data: str) -> dict:
    """Counts and the first pairs of: exact and near copies across train/val, images with two
    labels. `features`: the run's `Features` (None for network strategies: no near check)."""
    samples = split.train + split.val
    paths = [s.path for s in samples]
    labels = np.array([s.label for s in samples])
    splits = np.array(["train"] * len(split.train) + ["val"] * len(split.val))
    hashes, _ = images.read_all(paths, cache.image_facts(), with_properties=False)
    exact = [p for p in checks.exact_duplicates(hashes, labels, splits) if p["kind"] != "within class"]
    near = []
    if features is not None and len(split.train) and len(split.val):
        near = _val_near_train(features, labels, splits, exact, len(split.train))
    pairs = exact + near
    counts = {kind: sum(p["kind"] == kind for p in pairs) for kind in ("leakage", "two labels")}
    named = [{"kind": p["kind"], "similarity": p["similarity"], "a": paths[p["a"]], "b": paths[p["b"]]} for p in pairs]
    return {"leakage": counts["leakage"], "exact_leakage": sum(p["kind"] == "leakage" for p in exact),
            "near_leakage": sum(p["kind"] == "leakage" for p in near), "two_labels": counts["two labels"],
            "near_threshold": checks.NEAR_DUPLICATE, "pairs": named[:SHOWN_PAIRS],
            "command": f"transferkit doctor {data}"}


def _val_near_train(features, labels, splits, exact: list[dict], n_train: int) -> list[dict]:
    """Each val image's nearest training image by the last layer's features (cosine), where at
    least NEAR_DUPLICATE and not already an exact copy. One search of val against train: its
    cost grows with val x train, not with the square of the dataset."""
    from sklearn.neighbors import NearestNeighbors

    last = features.widths.get("last", features.x_train.shape[1])
    train = features.x_train[:n_train, :last].numpy().astype(np.float32)
    val = features.x_val[:, :last].numpy().astype(np.float32)
    train /= np.maximum(np.linalg.norm(train, axis=1, keepdims=True), 1e-12)
    val /= np.maximum(np.linalg.norm(val, axis=1, keepdims=True), 1e-12)
    dist, idx = NearestNeighbors(n_neighbors=1, metric="cosine", algorithm="brute").fit(train).kneighbors(val)
    same = {frozenset((p["a"], p["b"])) for p in exact}
    out = []
    for v, (d, t) in enumerate(zip(dist[:, 0], idx[:, 0])):
        a, b = int(t), n_train + v
        if 1 - d >= checks.NEAR_DUPLICATE and frozenset((a, b)) not in same:
            out.append({"a": a, "b": b, "kind": checks.kind_of_pair(a, b, labels, splits),
                        "similarity": round(float(1 - d), 4)})
    return out


def warnings(health: dict) -> list[str]:
    """One line per finding, with the doctor command to see more."""
    out = []
    if health["leakage"]:
        out.append(f"data health: {health['leakage']} val image(s) are copies ({health['exact_leakage']}) or near copies "
                   f"({health['near_leakage']}) of training images: the val accuracy overstates how the model does on "
                   f"new images; `{health['command']}` lists them (and --write-exclude FILE, then train --exclude FILE)")
    if health["two_labels"]:
        out.append(f"data health: {health['two_labels']} image(s) are in two classes at once; "
                   f"`{health['command']}` lists them")
    return out
