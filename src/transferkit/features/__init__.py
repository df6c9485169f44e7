"""Frozen-backbone features of images: `extract` computes them in one streaming pass with the
cache's help; `dataset` owns the cached features of a dataset, which `train` and `doctor` share."""

from .extract import FeaturePass, FeatureSet

__all__ = ["FeaturePass", "FeatureSet"]
