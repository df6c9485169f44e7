"""An honest "unknown": each image's out-of-distribution score (higher = less like the training
images) and the threshold above which a prediction is rejected. No torch here.

The kept score is the distance to the k-th nearest training image on unit-normalized features of
the backbone's last layer (Sun et al., ICML 2022: "Out-of-distribution detection with deep
nearest neighbors"), `1 - cos` in [0, 2]. It needs no labels or logits, only a bounded reference
set of the training images' normalized features (at most MAX_REFERENCE, a stratified sample),
stored with the model (model.safetensors `ood.reference`; every export computes it in its graph).
The other candidates (max softmax probability, energy, Mahalanobis) are here for the benchmark
that chose it (bench/trust.py: near and far unknowns, AUROC and FPR at 95% TPR).

The threshold `auto` keeps KEEP of the val images (their scores' KEEP quantile): a run with no
unknowns rejects about 1 - KEEP of the images like its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHOD = "knn"
MAX_REFERENCE = 2000  # training images whose features are kept (a stratified sample beyond)
KEEP = 0.95  # --reject auto: the share of the val images kept
SCORE_RANGE = (0.0, 2.0)  # 1 - cos: 0 = the image's features are a training image's, 2 = opposite
CANDIDATES = ("msp", "energy", "mahalanobis", "knn")  # measured by bench/trust.py


def reference_rows(n: int, labels: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Which of `n` training images are the reference set: all, or beyond MAX_REFERENCE a sample
    stratified by `labels` (sorted indices; the same on every process of a group)."""
    if n <= MAX_REFERENCE:
        return np.arange(n)
    from .folds import stratified_sample

    strata = np.zeros(n, dtype=np.int64) if labels is None else np.asarray(labels)
    return np.asarray(stratified_sample(strata, MAX_REFERENCE, seed))


def k_for(n: int) -> int:
    """The neighbour counted, for `n` reference images: Sun et al. use k = 50 of 50,000 CIFAR-10
    images (0.1%) and k = 1,000 of 1.28 M ImageNet ones; on a few hundred images that is the
    nearest, which one near-copy in the training set makes 0, so at least the 3rd, at most the 50th."""
    return int(np.clip(round(n / 1000), 3, 50)) if n >= 3 else max(1, n)


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32; a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_scores(reference: np.ndarray, features: np.ndarray, k: int, skip_self: bool = False) -> np.ndarray:
    """1 - the cosine similarity of each row of `features` to its k-th nearest row of `reference`
    (unit rows). `skip_self`: `features` are the reference rows themselves (leave-one-out)."""
    z = unit(features)
    out = np.empty(len(z), dtype=np.float32)
    k = min(k + skip_self, len(reference))
    for start in range(0, len(z), 1024):  # bounded memory: 1024 x N similarities at a time
        sims = z[start:start + 1024] @ reference.T
        kth = np.partition(-sims, k - 1, axis=1)[:, k - 1]
        out[start:start + 1024] = 1.0 + kth
    return np.clip(out, *SCORE_RANGE)


@dataclass(frozen=True)
class Ood:
    """A model's out-of-distribution score: `reference` (N, width) unit rows of training images'
    features (the first `width` columns of the head's input: the last layer's), the k-th
    neighbour counted, and the `threshold` --reject auto uses (None: no val image to set it)."""

    reference: np.ndarray
    k: int
    threshold: float | None = None

    @property
    def width(self) -> int:
        return int(self.reference.shape[1])

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray | None = None, seed: int = 0) -> "Ood | None":
        """From the training images' features (the last layer's columns); at most MAX_REFERENCE of
        them (`reference_rows`). None with no image."""
        features = np.asarray(features)
        if len(features) == 0:
            return None
        return cls.of_rows(features[reference_rows(len(features), labels, seed)])

    @classmethod
    def of_rows(cls, features: np.ndarray) -> "Ood":
        """From the reference images' features as they are (`reference_rows` chose them)."""
        reference = unit(features)
        return cls(reference, k_for(len(reference)))

    def scores(self, features: np.ndarray) -> np.ndarray:
        """(N, >= width) head input features -> (N,) scores; NaN rows stay NaN."""
        x = np.asarray(features, dtype=np.float32)[:, :self.width]
        bad = ~np.isfinite(x).all(1)
        out = knn_scores(self.reference, np.nan_to_num(x), self.k)
        out[bad] = np.nan
        return out

    def with_threshold(self, val_scores: np.ndarray) -> "Ood":
        """The threshold that keeps KEEP of `val_scores` (the val images'); unchanged without any."""
        finite = np.asarray(val_scores, dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        if not len(finite):
            return self
        return Ood(self.reference, self.k, float(np.quantile(finite, KEEP)))

    def to_dict(self) -> dict:
        """model.json's `ood` (the reference rows live in model.safetensors as `ood.reference`)."""
        return {"method": METHOD, "k": self.k, "width": self.width, "images": int(len(self.reference)),
                "threshold": self.threshold, "keep": KEEP, "range": list(SCORE_RANGE)}

    @classmethod
    def from_dict(cls, d: dict, reference: np.ndarray) -> "Ood":
        """Checked: a damaged record raises ValueError naming what is wrong."""
        if not isinstance(d, dict) or d.get("method") != METHOD:
            raise ValueError(f"ood.method must be {METHOD}")
        k, threshold = d.get("k"), d.get("threshold")
        reference = np.asarray(reference, dtype=np.float32)
        if reference.ndim != 2 or not len(reference) or reference.shape[1] != d.get("width"):
            raise ValueError(f"ood.reference must be ({d.get('images')}, {d.get('width')}) features")
        if not isinstance(k, int) or not 1 <= k <= len(reference):
            raise ValueError(f"ood.k must be a count of reference images (got {k!r})")
        if threshold is not None and not (isinstance(threshold, (int, float)) and
                                          SCORE_RANGE[0] <= threshold <= SCORE_RANGE[1]):
            raise ValueError(f"ood.threshold must be in {list(SCORE_RANGE)} (got {threshold!r})")
        return cls(np.ascontiguousarray(reference), k, None if threshold is None else float(threshold))


def fitted(train_x: np.ndarray, strata: np.ndarray | None, val_x: np.ndarray,
           seed: int = 0) -> tuple[Ood | None, np.ndarray | None]:
    """The kept model's score from its training images' last-layer features, its --reject auto
    threshold set on the val images' (`val_x`), and their scores (the report's); (None, None)
    without training images."""
    ood = Ood.fit(train_x, strata, seed)
    return thresholded(ood, val_x) if ood is not None else (None, None)


def thresholded(ood: Ood, val_x: np.ndarray) -> tuple[Ood, np.ndarray]:
    """`ood` with its --reject auto threshold set on the val images' features, and their scores."""
    scores = ood.scores(val_x) if len(val_x) else np.zeros(0, np.float32)
    return ood.with_threshold(scores), scores


def parse_reject(value: str | float | None) -> str | float:
    """--reject: "auto" (the model's threshold), "off", or a score in SCORE_RANGE; ValueError
    with the reason for anything else."""
    if value is None or value == "auto":
        return "auto"
    if value == "off":
        return "off"
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"--reject takes auto, off or an out-of-distribution score in "
                         f"[{SCORE_RANGE[0]:g}, {SCORE_RANGE[1]:g}] (got {value!r})") from None
    if not SCORE_RANGE[0] <= score <= SCORE_RANGE[1] or not np.isfinite(score):
        raise ValueError(f"--reject {value}: an out-of-distribution score is in [{SCORE_RANGE[0]:g}, "
                         f"{SCORE_RANGE[1]:g}] (1 - cosine similarity to the k-th nearest training image)")
    return score


def threshold_for(record: dict | None, reject: str | float) -> float | None:
    """The score above which an image is unknown, for a model whose OOD record (`Ood.to_dict`,
    model.json's or an export's `ood`) is `record`: None where nothing is rejected (off, a model
    without scores, or auto for a model without a threshold)."""
    if record is None or reject == "off":
        return None
    return record.get("threshold") if reject == "auto" else float(reject)


# ---- the candidates, for the benchmark that chose `knn` (bench/trust.py) --------------------

def candidate_scores(train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray, logits: np.ndarray,
                     temperature: float = 1.0, reference: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every candidate score of images with features `x` and logits, from the training images'
    features and labels: higher = less like the training images. `reference`: the k-NN score's
    unit rows (a model's `Ood.reference`; default a seeded sample of `train_x`)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    zmax = z.max(1, keepdims=True)
    lse = (zmax + np.log(np.exp(z - zmax).sum(1, keepdims=True)))[:, 0]
    msp = np.exp(zmax[:, 0] - lse)
    ref = reference if reference is not None else unit(
        train_x if len(train_x) <= MAX_REFERENCE else
        train_x[np.random.default_rng(0).choice(len(train_x), MAX_REFERENCE, replace=False)])
    return {"msp": -msp, "energy": -temperature * lse, "mahalanobis": mahalanobis(train_x, train_y, x),
            "knn": knn_scores(ref, x, k_for(len(ref)))}


def mahalanobis(train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The smallest Mahalanobis distance to a class mean, with one covariance shared by the
    classes (Lee et al., 2018), shrunk toward its mean variance (Ledoit-Wolf's form with a fixed
    0.1 weight: hundreds of images, a thousand features)."""
    tx, xx = unit(train_x).astype(np.float64), unit(x).astype(np.float64)
    classes = np.unique(train_y)
    means = np.stack([tx[train_y == c].mean(0) for c in classes])
    centred = tx - means[np.searchsorted(classes, train_y)]
    cov = centred.T @ centred / max(1, len(tx) - len(classes))
    cov = 0.9 * cov + 0.1 * np.trace(cov) / len(cov) * np.eye(len(cov))
    precision = np.linalg.inv(cov)
    d = np.stack([np.einsum("nd,de,ne->n", xx - m, precision, xx - m) for m in means], 1)
    return d.min(1)


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """The chance that an unknown image scores above a known one (ties count half)."""
    from scipy.stats import rankdata

    s = np.concatenate([known, unknown])
    ranks = rankdata(s)
    n0, n1 = len(known), len(unknown)
    return float((ranks[n0:].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def fpr_at_tpr(known: np.ndarray, unknown: np.ndarray, tpr: float = 0.95) -> float:
    """The share of unknown images accepted at the threshold that keeps `tpr` of the known ones
    (the literature's FPR at 95% TPR, the known images the positives)."""
    threshold = np.quantile(known, tpr)
    return float((unknown <= threshold).mean())
