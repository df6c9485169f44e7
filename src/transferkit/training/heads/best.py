"""The head that linear, auto and LP-FT's probe fit (`fit_best_head`): the settings' choice
(`head_choice`, memoized) and the fit, each kept in the feature cache under a digest of what it
saw, so a warm run on the same images reads them instead of computing them again."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ...config import TrainConfig
from ...evaluation.metrics import EpochStats
from ...features.dataset import labels_of
from ..result import FitResult, LinearHead
from .fit import LBFGS_GTOL, LBFGS_MAX_ITER, LBFGS_STEP, fit_head, fit_logistic
from .select import HeadChoice, Shards, select_head


def fit_best_head(cfg: TrainConfig, f, progress=None, checkpoint: Path | None = None,
                  resume: dict | None = None) -> tuple[FitResult, LinearHead, HeadChoice]:
    """The head on the cached features `f` (`context.Features`), as linear and LP-FT's probe fit
    it. The logistic regression (--optimizer lbfgs): the feature set (--features auto: last or
    multi), the scaling and the weight decay (unless given) chosen by `select_head` on the
    training images, then fitted on all training rows. An epoch-trained head: on the last layer's
    features unless --features multi (`checkpoint` / `resume`: as in `loop.fit`). The head reads the first `widths[choice.features]` columns."""
    if cfg.optimizer != "lbfgs":
        name = "multi" if cfg.features == "multi" and "multi" in f.widths else "last"
        choice = HeadChoice(name, "feature", cfg.weight_decay, None, 0, 0.0)
        result, linear = fit_head(cfg, len(f.split.classes), f.x_train[:, :f.widths[name]], f.y_train,
                                  f.x_val[:, :f.widths[name]], f.y_val, progress, checkpoint, resume)
        return result, linear, choice
    choice = head_choice(cfg, f)
    w = f.widths[choice.features]
    fit_cfg = dataclasses.replace(cfg, weight_decay=choice.weight_decay)
    args = (len(f.split.classes), f.x_train[:, :w], f.y_train, f.x_val[:, :w], f.y_val)
    key = _fit_key(fit_cfg, choice, f, *args) if f.store is not None else None
    stored = _stored_fit(f.store, key) if key is not None else None
    if f.sharded:  # each rank reads its own cache: the fit is read only where every rank has it
        stored = stored if all(f.group.all_gather(stored is not None)) else None
    if stored is not None:
        return *stored, choice
    result, linear = fit_logistic(fit_cfg, *args, progress, choice.scaling, f.group if f.sharded else None)
    if key is not None and (not f.sharded or f.group.writes_cache):  # (sharded: one rank per node)
        _store_fit(f.store, key, result, linear)
    return result, linear, choice


# The fitted logistic head is kept in the feature cache too, under a digest of what it was fitted
# on (every feature row, the labels, the val rows its history measured, the settings): the fit is
# deterministic, so a warm run on the same images reads it instead of refitting (16,000 images:
# 100 s of L-BFGS).
HEAD_FIT_VERSION = 1


def _fit_key(cfg: TrainConfig, choice: HeadChoice, f, num_classes: int, *arrays: np.ndarray) -> str:
    import hashlib

    ident = (HEAD_FIT_VERSION, num_classes, choice.scaling, cfg.weight_decay, cfg.class_weights, cfg.balanced_sampler,
             LBFGS_STEP, LBFGS_MAX_ITER, LBFGS_GTOL)
    h = hashlib.sha256(repr(ident).encode())
    for a in arrays:
        h.update(repr(tuple(a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return _over_group(f, h.hexdigest())


def _over_group(f, digest: str) -> str:
    """A digest of what this rank holds made a digest of what the group holds (sharded: every
    rank's in rank order, the same on every rank, and another than one process's)."""
    if not f.sharded:
        return digest
    import hashlib

    return hashlib.sha256(repr(("sharded", f.group.all_gather(digest))).encode()).hexdigest()


def _stored_fit(store, key: str) -> tuple[FitResult, LinearHead] | None:
    import json

    params, meta = store.get(key, "fitp"), store.get(key, "fith")
    if params is None or meta is None:
        return None
    try:
        d = json.loads(meta.tobytes().decode())
        result = FitResult([EpochStats(**h) for h in d["history"]], d["best_epoch"], d["best_val_acc"],
                           unit="iteration")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    return result, LinearHead(np.ascontiguousarray(params[:, :-1], dtype=np.float32),
                              np.ascontiguousarray(params[:, -1], dtype=np.float32))


def _store_fit(store, key: str, result: FitResult, linear: LinearHead) -> None:
    import json

    meta = {"history": [dataclasses.asdict(h) for h in result.history], "best_epoch": result.best_epoch,
            "best_val_acc": result.best_val_acc}
    params = np.concatenate([linear.weight, linear.bias[:, None]], 1).astype(np.float32)
    store.put(key, "fitp", params)
    store.put(key, "fith", np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    store.flush()


def head_choice(cfg: TrainConfig, f) -> HeadChoice:
    """`select_head` on the training images of `f` for the options `cfg`, computed once per run
    (memoized on `f`: auto, linear and LP-FT's probe ask for the same)."""
    widths = _wanted_widths(cfg, f)
    n, balanced = f.num_images, cfg.class_weights == "auto" or cfg.balanced_sampler
    key = ("select_head", tuple(widths.items()), cfg.seed, cfg.weight_decay, balanced)
    if key not in f.memo:
        stored = _stored_choice(f, key)
        if f.sharded:  # each rank reads its own cache: the primary's record, if every rank has one
            stored = f.group.broadcast(stored) if all(f.group.all_gather(stored is not None)) else None
        shards = Shards(f.group, f.train_index, labels_of(f.split.train)) if f.sharded else None
        f.memo[key] = stored or select_head(
            f.x_train[:n], f.y_train[:n], len(f.split.classes), widths, cfg.seed, cfg.weight_decay, balanced,
            f.widths["last"], shards)
        _store_choice(f, key, f.memo[key])
    return f.memo[key]


# The cross-validation's result is kept in the feature cache under a digest of exactly what it
# saw (the features, labels, options and this version), so a warm run with the same images does
# not cross-validate again.
# 3: folds keep near-identical images together; 4: chosen by log loss, repeated folds; 5: all folds as
# one problem standardized with all rows' statistics, further draws for the contenders only (#41)
# 6: a sample of `cv_images` (1,000 for up to 25 classes) instead of 4,000 (#41)
HEAD_CHOICE_VERSION = 6


def _choice_key(f, key: tuple) -> str:
    import hashlib

    n = f.num_images
    h = hashlib.sha256(repr((HEAD_CHOICE_VERSION, key)).encode())
    h.update(np.ascontiguousarray(f.x_train[:n]).tobytes())
    h.update(np.ascontiguousarray(f.y_train[:n]).tobytes())
    return _over_group(f, h.hexdigest())


def _stored_choice(f, key: tuple) -> HeadChoice | None:
    import json

    if f.store is None:
        return None
    data = f.store.get(_choice_key(f, key), "head")
    if data is None:
        return None
    try:
        d = json.loads(data.tobytes().decode())
        return HeadChoice(d["features"], d["scaling"], float(d["weight_decay"]), d["cv_accuracy"], int(d["folds"]),
                          0.0, d["candidates"], cached=True, images=d.get("cv_images"), groups=d.get("cv_groups"),
                          grouped_images=d.get("cv_grouped_images", 0), repeats=d.get("cv_repeats", 1))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def _store_choice(f, key: tuple, choice: HeadChoice) -> None:
    import json

    if f.store is None or choice.cached or choice.cv_accuracy is None:
        return
    digest = _choice_key(f, key)  # (sharded: a collective, so every rank computes it)
    if not f.sharded or f.group.writes_cache:  # one rank per node writes
        f.store.put(digest, "head", np.frombuffer(json.dumps(choice.to_dict()).encode(), dtype=np.uint8))
        f.store.flush()


def _wanted_widths(cfg: TrainConfig, f) -> dict[str, int]:
    wanted = cfg.features or "auto"
    return {wanted: f.widths[wanted]} if wanted != "auto" and wanted in f.widths else dict(f.widths)
