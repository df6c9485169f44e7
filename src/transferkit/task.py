"""The task: one label per image (single-label) or any number of them (multi-label). Every stage
asks the run's `Task` how labels become targets, how logits become probabilities and decisions,
and how it is measured; nothing else decides it. No torch here.

Single-label: a softmax over the classes, the decision its argmax. Multi-label: one sigmoid per
class (each image may have any of them, or none), the decision each class's probability against
its own threshold, chosen on out-of-fold predictions of the training images (F1-optimal:
`choose_thresholds`) and stored with the model (model.json and every export's metadata).

A run is multi-label when any image has more than one label, or when asked (`--task multilabel`);
the label cells of a table are split on `--label-delim` (a predicted set is joined by it too).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SINGLE, MULTI = "single", "multilabel"
TASKS = ("auto", SINGLE, MULTI)  # --task: auto = multi-label when any image has several labels
DEFAULT_THRESHOLD = 0.5  # where a class has no positive out-of-fold image to choose one on
DEFAULT_DELIM = " "  # how a predicted set is joined where the data gave no delimiter


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function, in `x`'s own dtype, without overflow for large |x| (tanh form)."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@dataclass(frozen=True)
class Task:
    """Single-label (`kind` SINGLE) or multi-label (MULTI, with per-class `thresholds` once
    trained, and the `delimiter` its label cells used)."""

    kind: str = SINGLE
    delimiter: str | None = None
    thresholds: tuple[float, ...] | None = None
    temperature: float = 1.0  # single-label: the logits are divided by it (calibration, `fit_temperature`)

    @property
    def multi(self) -> bool:
        return self.kind == MULTI

    @property
    def joiner(self) -> str:
        """What joins a predicted set in one cell (CSV `labels`)."""
        return self.delimiter or DEFAULT_DELIM

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """(N, C) logits -> probabilities: the softmax (rows sum to 1), or each class's sigmoid.
        Rows of NaN (unreadable images) stay NaN."""
        logits = np.asarray(logits, dtype=np.float64)
        if self.multi:
            return sigmoid(logits).astype(np.float32)
        z = logits / self.temperature
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(1, keepdims=True)).astype(np.float32)

    def mean_of_views(self, logits: np.ndarray) -> np.ndarray:
        """(N, V, C) logits of V views -> (N, C): logits whose probabilities (`probabilities`, the
        temperature applied) are the mean of the views'."""
        if logits.shape[1] == 1:
            return logits[:, 0]
        if self.multi:
            p = np.clip(sigmoid(logits.astype(np.float64)).mean(1), 1e-12, 1 - 1e-12)
            return np.log(p / (1 - p)).astype(np.float32)
        z = np.asarray(logits, dtype=np.float64) / self.temperature
        z = z - z.max(2, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(2, keepdims=True)
        return (self.temperature * np.log(probs.mean(1))).astype(np.float32)

    def threshold_array(self, num_classes: int) -> np.ndarray:
        if self.thresholds is None:
            return np.full(num_classes, DEFAULT_THRESHOLD, dtype=np.float32)
        return np.asarray(self.thresholds, dtype=np.float32)

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Multi-label: (N, C) probabilities -> (N, C) booleans, each class against its threshold."""
        return np.asarray(probs) >= self.threshold_array(np.asarray(probs).shape[1])

    def score(self, logits: np.ndarray, y: np.ndarray) -> float:
        """The figure a model is selected and compared by (the best epoch, LP-FT against its
        probe, auto's candidates, cross-validation): accuracy; multi-label, the mAP (macro over
        the classes with a positive image: threshold-free, so a model is not judged by
        thresholds it has not had chosen yet)."""
        logits, y = np.asarray(logits, dtype=np.float64), np.asarray(y)
        if not len(y):
            return 0.0
        if self.multi:
            return mean_ap(y, logits)
        return float((logits.argmax(1) == y).mean())

    def with_thresholds(self, thresholds) -> "Task":
        return Task(self.kind, self.delimiter, tuple(round(float(t), 6) for t in thresholds), self.temperature)

    def with_temperature(self, temperature: float) -> "Task":
        return Task(self.kind, self.delimiter, self.thresholds, round(float(temperature), 6))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "label_delim": self.delimiter,
                "thresholds": list(self.thresholds) if self.thresholds is not None else None,
                "temperature": self.temperature}

    @classmethod
    def from_dict(cls, d, num_classes: int) -> "Task":
        """The task a model.json or an export's metadata records (absent: single-label), checked:
        a damaged value raises ValueError naming it."""
        if d is None:
            return cls()
        if not isinstance(d, dict) or d.get("kind") not in (SINGLE, MULTI):
            raise ValueError(f"task must be {{kind: {SINGLE} | {MULTI}, ...}} (got {str(d)[:80]})")
        delim = d.get("label_delim")
        if delim is not None and not (isinstance(delim, str) and 0 < len(delim) <= 8):
            raise ValueError("task.label_delim must be a short string")
        t = d.get("thresholds")
        if t is not None:
            if not (isinstance(t, list) and len(t) == num_classes
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in t)):
                raise ValueError(f"task.thresholds must be {num_classes} numbers in [0, 1], one per class")
            t = tuple(float(v) for v in t)
        temperature = d.get("temperature", 1.0)
        if not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
                and TEMPERATURE_RANGE[0] <= temperature <= TEMPERATURE_RANGE[1]):
            raise ValueError(f"task.temperature must be a number in {list(TEMPERATURE_RANGE)}")
        return cls(d["kind"], delim, t, float(temperature))


TEMPERATURE_RANGE = (0.05, 20.0)  # the temperatures `fit_temperature` searches (and a model.json may hold)


def fit_temperature(y: np.ndarray, logits: np.ndarray) -> float:
    """The temperature T minimizing the mean log loss of softmax(logits / T) on (y, logits)
    (out-of-fold logits of the training images): Guo et al. 2017's temperature scaling. The
    loss is convex in 1 / T, so a golden-section search over TEMPERATURE_RANGE finds it."""
    y, z = np.asarray(y), np.asarray(logits, dtype=np.float64)
    if not len(y):
        return 1.0

    def loss(beta: float) -> float:
        return log_loss(y, z, 1 / beta)

    low, high = 1 / TEMPERATURE_RANGE[1], 1 / TEMPERATURE_RANGE[0]
    golden = (np.sqrt(5) - 1) / 2
    a, b = low, high
    c, d = b - golden * (b - a), a + golden * (b - a)
    for _ in range(80):
        if loss(c) < loss(d):
            b, d = d, c
            c = b - golden * (b - a)
        else:
            a, c = c, d
            d = a + golden * (b - a)
    return float(np.clip(2 / (a + b), *TEMPERATURE_RANGE))


def log_loss(y: np.ndarray, logits: np.ndarray, temperature: float = 1.0) -> float:
    """The mean log loss of softmax(logits / temperature) on the class indices `y`."""
    s = np.asarray(logits, dtype=np.float64) / temperature
    s = s - s.max(1, keepdims=True)
    return float((np.log(np.exp(s).sum(1)) - s[np.arange(len(s)), np.asarray(y)]).mean())


CALIBRATION_BINS = 15


def calibration(y: np.ndarray, probs: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """How well single-label probabilities match: ECE (the confidence-weighted gap between each
    bin's confidence and its accuracy, `bins` equal-width bins of the top probability), the mean
    log loss (NLL), the Brier score (mean squared error of the probability vector), and the bins
    (count, confidence, accuracy) for the reliability diagram."""
    y, probs = np.asarray(y), np.asarray(probs, dtype=np.float64)
    if not len(y):
        return {"ece": None, "nll": None, "brier": None, "bins": []}
    top, pred = probs.max(1), probs.argmax(1)
    right = pred == y
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(top, edges[1:-1], right=True), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            conf, acc = float(top[inside].mean()), float(right[inside].mean())
            ece += inside.mean() * abs(conf - acc)
            table.append({"low": round(float(edges[b]), 4), "high": round(float(edges[b + 1]), 4),
                          "count": int(inside.sum()), "confidence": round(conf, 4), "accuracy": round(acc, 4)})
    onehot = np.eye(probs.shape[1])[y]
    return {"ece": round(float(ece), 5), "nll": round(float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1)).mean()), 5),
            "brier": round(float(((probs - onehot) ** 2).sum(1).mean()), 5), "bins": table}


def average_precision(y: np.ndarray, scores: np.ndarray) -> float:
    """One class's average precision (scikit-learn's `average_precision_score`: the precision at
    each distinct score, weighted by the recall it adds), NumPy alone; NaN without a positive."""
    y = np.asarray(y) > 0
    positives = int(y.sum())
    if not positives:
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    s, hit = np.asarray(scores, dtype=np.float64)[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last position of each distinct score
    tp = np.cumsum(hit)[last]
    precision, recall = tp / (last + 1), tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_ap(y: np.ndarray, scores: np.ndarray) -> float:
    """The mean over classes (those with a positive image) of `average_precision`; 0 if none has one."""
    aps = [average_precision(y[:, c], scores[:, c]) for c in range(y.shape[1]) if np.asarray(y[:, c]).any()]
    return float(np.mean(aps)) if aps else 0.0


def multi_hot(sets, num_classes: int) -> np.ndarray:
    """(N, C) float32 0/1 targets of label sets (each an iterable of class indices)."""
    out = np.zeros((len(sets), num_classes), dtype=np.float32)
    for i, s in enumerate(sets):
        out[i, list(s)] = 1.0
    return out


def choose_thresholds(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per class, the threshold on its probability with the highest F1 on (y, probs) (out-of-fold
    predictions of the training images): the midpoint between the lowest probability kept and the
    next lower one, so that a slightly different model keeps the same images. A class with no
    positive image (or none predicted) keeps DEFAULT_THRESHOLD."""
    y, probs = np.asarray(y, dtype=bool), np.asarray(probs, dtype=np.float64)
    out = np.full(y.shape[1], DEFAULT_THRESHOLD)
    for c in range(y.shape[1]):
        pos = int(y[:, c].sum())
        if pos == 0:
            continue
        order = np.argsort(-probs[:, c], kind="stable")
        p, hit = probs[order, c], y[order, c]
        tp = np.cumsum(hit)
        kept = np.arange(1, len(p) + 1)
        f1 = 2 * tp / (kept + pos)
        # only cut where the next probability differs (ties are kept or dropped together)
        cut = np.append(p[1:] < p[:-1], True)
        f1 = np.where(cut, f1, -1.0)
        best = int(np.argmax(f1))
        lower = p[best + 1] if best + 1 < len(p) else 0.0
        out[c] = float(np.clip((p[best] + lower) / 2, 1e-4, 1 - 1e-4))
    return out


def stratum(sets, num_classes: int) -> np.ndarray:
    """One class index per image to stratify multi-label data by (splits, folds): its rarest
    label, or `num_classes` for an image with none. Every label keeps images on both sides of
    a split where it has two or more."""
    counts = np.zeros(num_classes + 1, dtype=np.int64)
    for s in sets:
        for c in s:
            counts[c] += 1
    return np.array([min(s, key=lambda c: (counts[c], c)) if len(s) else num_classes for s in sets], dtype=np.int64)


def strata_of(y: np.ndarray) -> np.ndarray:
    """What to stratify targets `y` by: class indices as they are; multi-label (N, C) rows, each
    image's rarest label (`stratum`)."""
    y = np.asarray(y)
    if y.ndim == 1:
        return y
    return stratum([np.flatnonzero(row) for row in y], y.shape[1])


def task_of(kind: str, sets, delimiter: str | None) -> Task:
    """The task of data whose images have the label `sets`: `kind` (--task) or, for auto,
    multi-label when any image has more than one label."""
    if kind == "auto":
        kind = MULTI if any(len(s) > 1 for s in sets) else SINGLE
    return Task(kind, delimiter if kind == MULTI else None)
