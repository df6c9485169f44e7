"""The head calibrated on its out-of-fold logits of the training images (`out_of_fold`): a
temperature for single-label data (`head_temperature`), each class's threshold for multi-label
data (`head_thresholds`); never on the val images that report the calibration."""

from __future__ import annotations


import numpy as np

from ...config import TrainConfig
from ...folds import group_folds, max_folds, similar_groups, stratified_sample
from ...logistic import problem_for, standardizer
from ...task import choose_thresholds, fit_temperature, log_loss, sigmoid, strata_of
from .best import _choice_key
from .fit import LBFGS_MAX_ITER
from .select import CV_MAX_FOLDS, HeadChoice, _in_span


# The out-of-fold logits (the temperature, multi-label thresholds) come from at most this many.
OUT_OF_FOLD_MAX_IMAGES = 4000


def head_thresholds(cfg: TrainConfig, f, choice: HeadChoice) -> np.ndarray:
    """Multi-label: each class's decision threshold, F1-optimal on out-of-fold probabilities of
    the training images (`task.choose_thresholds`, `out_of_fold`)."""
    found = out_of_fold(cfg, f, choice)
    if found is None:
        return choose_thresholds(np.zeros((0, len(f.split.classes))), np.zeros((0, len(f.split.classes))))
    y, logits = found
    return choose_thresholds(y, sigmoid(logits))


def head_temperature(cfg: TrainConfig, f, choice: HeadChoice) -> float | None:
    """Single-label: the temperature that calibrates the head (`task.fit_temperature` on its
    out-of-fold logits of the training images, `out_of_fold`: never the val images that then
    report the calibration); None (no temperature) where there are too few images for folds, or
    where it lowers the out-of-fold log loss by less than TEMPERATURE_MIN_GAIN (the head, chosen
    by that log loss, is calibrated already, and so small a change is within the folds' noise:
    measured, hymenoptera T 0.96, flowers T 0.95, val ECE moving by +-0.01 either way), or where
    it would sharpen (T < 1): fold models fitted on less data than the kept head are less sure
    than it, so sharpening them would make the head more confident than its folds justify (on
    separable data the fit runs to the range's end)."""
    found = out_of_fold(cfg, f, choice)
    if found is None:
        return None
    y, logits = found
    temperature = fit_temperature(y, logits)
    before, after = log_loss(y, logits, 1.0), log_loss(y, logits, temperature)
    return temperature if temperature > 1 and before - after >= TEMPERATURE_MIN_GAIN * before else None


TEMPERATURE_MIN_GAIN = 0.02  # the share of the out-of-fold log loss a temperature must save to be kept


def out_of_fold(cfg: TrainConfig, f, choice: HeadChoice) -> tuple[np.ndarray, np.ndarray] | None:
    """(targets, logits) of the training images, each image's logits from the chosen head's
    settings fitted in `choice.folds` folds without it (near-identical images kept in one fold,
    as cross-validation keeps them; at most OUT_OF_FOLD_MAX_IMAGES images, a stratified sample); None
    where the images allow no folds. Memoized on `f` (auto, linear and LP-FT's probe ask), and
    kept in the feature cache under a digest of what it saw (a warm run reads the logits)."""
    balanced = cfg.class_weights == "auto" or cfg.balanced_sampler
    key = ("out_of_fold", OUT_OF_FOLD_VERSION, choice.features, choice.scaling, choice.weight_decay, cfg.seed, balanced)
    if key in f.memo:
        return f.memo[key]
    n, k = f.num_images, len(f.split.classes)
    x, y = f.x_train[:n, :f.widths[choice.features]], np.asarray(f.y_train[:n])
    strata = strata_of(y)
    if len(y) > OUT_OF_FOLD_MAX_IMAGES:
        sample = stratified_sample(strata, OUT_OF_FOLD_MAX_IMAGES, cfg.seed)
        x, y, strata = x[sample], y[sample], strata[sample]
    digest = _choice_key(f, key) if f.store is not None and not f.sharded else None
    stored = f.store.get(digest, "oof") if digest is not None else None
    if stored is not None and stored.shape == (len(y), k):
        f.memo[key] = (y, stored.astype(np.float64))
        return f.memo[key]
    groups = similar_groups(x[:, :f.widths["last"]]) if len(y) else None
    folds = max_folds(strata, groups, CV_MAX_FOLDS)
    if groups is not None and folds < 2:
        groups, folds = None, max_folds(strata, None, CV_MAX_FOLDS)
    found = None
    if folds >= 2:
        fold_of = group_folds(strata, groups, folds, cfg.seed)
        logits = np.zeros((len(y), k))
        xs = np.asarray(x, dtype=np.float32)
        for fold in range(folds):
            tr, te = fold_of != fold, fold_of == fold
            mean, std = standardizer(xs[tr], choice.scaling)
            zt, ze = _in_span((xs[tr] - mean) / std, (xs[te] - mean) / std)
            problem = problem_for(y)(zt, y[tr], k, choice.weight_decay, balanced)
            theta, _ = problem.fit(problem.start(), LBFGS_MAX_ITER, gtol=1e-5)
            logits[te] = problem.logits(ze, theta).astype(np.float64)
        logits = logits.astype(np.float32).astype(np.float64)  # (as the cache keeps them: cold and warm alike)
        found = (y, logits)
        if digest is not None:
            f.store.put(digest, "oof", logits.astype(np.float32))
            f.store.flush()
    f.memo[key] = found
    return found


OUT_OF_FOLD_VERSION = 1  # the out-of-fold logits kept in the feature cache (a change of how they are made: +1)
