"""Heads on cached features, one job per module: `fit` (the logistic regression on scipy's
L-BFGS, scikit-learn's objective; the epoch-trained head), `select` (its settings chosen by
cross-validation), `calibrate` (a temperature or per-class thresholds from out-of-fold logits)
and `best` (the head linear, auto and LP-FT's probe fit: the choice and the fit, kept in the
feature cache). What the rest of training uses is named here."""

from .best import fit_best_head, head_choice
from .calibrate import TEMPERATURE_MIN_GAIN, head_temperature, head_thresholds, out_of_fold
from .fit import fit_head, fit_logistic, train_head
from .select import CV_FEWER_FOLDS_FROM, CV_REPEATS, DEFAULT_WEIGHT_DECAY, HeadChoice, Shards, cv_images, select_head

__all__ = ["CV_FEWER_FOLDS_FROM", "CV_REPEATS", "DEFAULT_WEIGHT_DECAY", "TEMPERATURE_MIN_GAIN", "HeadChoice", "Shards",
           "cv_images", "fit_best_head", "fit_head", "fit_logistic", "head_choice", "head_temperature",
           "head_thresholds", "out_of_fold", "select_head", "train_head"]
