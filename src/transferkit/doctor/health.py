"""The checks `train` runs by itself, cheaply, on what it has anyway: the files' content hashes
(cached per image) and, for the strategies that extract them, the features. It looks for val
images that are copies or near copies of training images (the val accuracy would overstate the
model) and for one image under two labels. `transferkit doctor` does the full examination."""

from __future__ import annotations

import numpy as np

from ..cache import Cache
from ..folds import unit_rows
from . import checks, images

SHOWN_PAIRS = 50  # pairs listed in results.json (all are counted)
CHUNK = 1024  # val rows compared with every training row at once
# The near check compares at most this many val images (a seeded sample beyond it) with every
# training image: its cost then grows with the training images only (16,000 images: 7,060 val x
# 8,940 train took 1.2 s of a 11 s warm run; a million would take hours). Exact copies are
# always checked for every image.
NEAR_SAMPLE = 2000


def quick_health(split, features, cache: Cache, data: str, nearest=None) -> dict:
    """Counts and the first pairs of: exact and near copies across train/val, images with two
    labels. `features`: the run's `Features` (None for network strategies: no near check);
    `nearest`: `nearest_train(features)` where it ran already (sharded features: on every rank)."""
    paths, labels, splits = checks.samples_of(split)
    hashes, _, _ = images.read_all(paths, cache.image_facts(), with_properties=False)
    exact = [p for p in checks.exact_duplicates(hashes, labels, splits) if p["kind"] != "within class"]
    near, checked = [], 0
    if features is not None and len(split.train) and len(split.val):
        near, checked = _val_near_train(features, labels, splits, exact, len(split.train), nearest)
    pairs = exact + near
    counts = {kind: sum(p["kind"] == kind for p in pairs) for kind in ("leakage", "two labels")}
    named = [{"kind": p["kind"], "similarity": p["similarity"], "a": paths[p["a"]], "b": paths[p["b"]]} for p in pairs]
    return {"leakage": counts["leakage"], "exact_leakage": sum(p["kind"] == "leakage" for p in exact),
            "near_leakage": sum(p["kind"] == "leakage" for p in near), "two_labels": counts["two labels"],
            "near_threshold": checks.NEAR_DUPLICATE, "near_checked": checked, "num_val": len(split.val),
            "pairs": named[:SHOWN_PAIRS],
            "command": f"transferkit doctor {data}"}


def _val_near_train(features, labels, splits, exact: list[dict], n_train: int, nearest=None) -> tuple[list[dict], int]:
    """Each val image's nearest training image by the last layer's features (cosine), where at
    least NEAR_DUPLICATE and not already an exact copy, for up to NEAR_SAMPLE val images
    (`nearest_train`). Returns the pairs and how many val images were checked."""
    rows, best, sims = nearest if nearest is not None else nearest_train(features)
    same = {frozenset((p["a"], p["b"])) for p in exact}
    out = []
    for v, t, sim in zip(rows.tolist(), best.tolist(), sims.tolist()):
        a, b = int(t), n_train + int(v)
        if sim >= checks.NEAR_DUPLICATE and frozenset((a, b)) not in same:
            out.append({"a": a, "b": b, "kind": checks.kind_of_pair(a, b, labels, splits),
                        "similarity": round(min(sim, 1.0), 4)})
    return out, len(rows)


def nearest_train(features) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the val images checked: up to NEAR_SAMPLE, a seeded sample beyond it; each one's nearest
    training image; their cosine similarity), by the last layer's features. One search of val
    against train, in chunks of val rows: its cost grows with the sample x train, its memory with
    a chunk x train. Plain NumPy, so that train's process does not import scikit-learn (about 1 s)
    for it. With sharded features (#31) a collective: the sampled val rows (at most NEAR_SAMPLE,
    however large the data) go to every rank, each searches its own training rows, and the best
    per val image is taken over the ranks (the lowest training image among equals, as argmax)."""
    train, val = (unit_rows(x) for x in features.last_layer())
    n_val = len(features.split.val)
    rows = np.arange(n_val)
    if n_val > NEAR_SAMPLE:
        rows = np.sort(np.random.default_rng(0).choice(n_val, NEAR_SAMPLE, replace=False))
    index = np.arange(len(train))
    if features.sharded:
        mine = np.isin(features.val_index, rows)
        parts = features.group.all_gather((features.val_index[mine], val[mine]))
        held = np.concatenate([i for i, _ in parts])
        val = np.concatenate([v for _, v in parts])[np.argsort(held)]  # in the order of `rows`
        index = features.train_index
    else:
        val = val[rows]
    best = np.zeros(len(rows), dtype=np.int64)
    sims = np.full(len(rows), -np.inf, dtype=np.float32)
    for start in range(0, len(rows) if len(train) else 0, CHUNK):
        s = val[start:start + CHUNK] @ train.T
        t = s.argmax(1)
        best[start:start + CHUNK], sims[start:start + CHUNK] = index[t], s[np.arange(len(t)), t]
    if features.sharded:
        ranks = features.group.all_gather((sims, best))
        sims, best = ranks[0]
        for other_sims, other_best in ranks[1:]:
            better = (other_sims > sims) | ((other_sims == sims) & (other_best < best))
            sims, best = np.where(better, other_sims, sims), np.where(better, other_best, best)
    return rows, best, sims


def warnings(health: dict) -> list[str]:
    """One line per finding, with the doctor command to see more."""
    out = []
    if health["leakage"]:
        sampled = (f", among the {health['near_checked']} of {health['num_val']} val images checked for near copies"
                   if health.get("near_checked", 0) < health.get("num_val", 0) and health.get("near_checked") else "")
        out.append(f"data health: {health['leakage']} val image(s) are copies ({health['exact_leakage']}) or near copies "
                   f"({health['near_leakage']}{sampled}) of training images: the val accuracy overstates how the model does on "
                   f"new images; `{health['command']}` lists them (and --write-exclude FILE, then train --exclude FILE)")
    if health["two_labels"]:
        out.append(f"data health: {health['two_labels']} image(s) are in two classes at once; "
                   f"`{health['command']}` lists them")
    return out
