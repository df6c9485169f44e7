"""Heads on cached features: the logistic regression (scipy's L-BFGS on scikit-learn's
objective), the epoch-trained head, and the cross-validated probe accuracy auto measures."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..config import TrainConfig
from ..data.datasets import train_loader
from ..runtime import Runtime
from . import engine
from .losses import classification_loss


def fit_head(cfg: TrainConfig, num_classes: int, x_train, y_train, x_val, y_val, progress=None,
             checkpoint: Path | None = None, resume: dict | None = None) -> tuple[engine.FitResult, nn.Linear]:
    """Dropout + linear head (zero init) trained on features in fp32 for `cfg.epochs`; the best
    epoch is kept. `checkpoint` / `resume`: as in `engine.fit`."""
    progress = progress or _no_progress
    torch.manual_seed(cfg.seed)
    linear = nn.Linear(x_train.shape[1], num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    head = nn.Sequential(nn.Dropout(cfg.dropout), linear)
    loader = train_loader(TensorDataset(x_train, y_train), y_train, cfg.batch_size, cfg.seed, balanced=cfg.balanced_sampler)
    val_loader = DataLoader(TensorDataset(x_val, y_val), batch_size=1024)
    optimizer = engine.make_optimizer(cfg.optimizer, [{"params": head.parameters()}], cfg.lr, cfg.weight_decay)
    steps = cfg.epochs * len(loader)
    scheduler = engine.make_scheduler(cfg.schedule, optimizer, steps, int(cfg.warmup_epochs * len(loader)))
    bar = progress(cfg.epochs, "head")
    result, best = engine.fit(
        head, loader, val_loader, optimizer, scheduler, classification_loss(cfg, y_train, num_classes),
        Runtime(torch.device("cpu"), torch.float32), lambda x: x, cfg.epochs, cfg.patience,
        on_epoch=lambda s: _tick(bar, s), checkpoint=checkpoint, resume=resume,
    )
    bar.close()
    head.load_state_dict(best)
    return result, linear.eval()


def fit_logistic(cfg: TrainConfig, num_classes: int, x_train, y_train, x_val, y_val,
                 progress=None) -> tuple[engine.FitResult, nn.Linear]:
    """Multinomial logistic regression, fitted full-batch by scipy's L-BFGS-B (float64) on
    standardized features (`scale`: the std with a floor), folded back into one `nn.Linear` on the
    raw features. The objective is scikit-learn's LogisticRegression's (tested to give its
    probabilities): the mean cross-entropy plus weight_decay / 2 * |W|^2, the bias unpenalized,
    i.e. C = 1 / (weight_decay * n); with two classes one logit, as there. --class-weights auto
    and --balanced-sampler weigh each class by inverse frequency (class_weight="balanced").
    Convex: the converged model is kept, nothing is selected on the val set. The history records
    the losses every LBFGS_STEP iterations. Not scikit-learn itself: importing it costs 0.7 s,
    scipy.optimize 0.4 s (a torch optimizer imports torch._dynamo: 1.1 s)."""
    from scipy.optimize import minimize

    k, progress = num_classes, progress or _no_progress
    xt, yt = x_train.double().numpy(), y_train.numpy()
    xv, yv = x_val.double().numpy(), y_val.numpy()
    mean, std = xt.mean(0), scale(xt)
    zt, zv = (xt - mean) / std, (xv - mean) / std
    balanced = cfg.class_weights == "auto" or cfg.balanced_sampler
    counts = np.maximum(np.bincount(yt, minlength=k), 1)
    weights = (len(yt) / (k * counts))[yt] if balanced else np.ones(len(yt))
    weights = weights / weights.sum()
    # logits = (z @ W + b) @ to_logits: one column and logits (-z/2, z/2) for two classes
    to_logits = np.array([[-0.5, 0.5]]) if k == 2 else np.eye(k)
    d, m = zt.shape[1], to_logits.shape[0]
    onehot = np.eye(k)[yt]

    def log_probs(z: np.ndarray, theta: np.ndarray) -> np.ndarray:
        logits = (z @ theta[:-m].reshape(d, m) + theta[-m:]) @ to_logits
        logits -= logits.max(1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(1, keepdims=True))

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, lp = theta[:-m].reshape(d, m), log_probs(zt, theta)
        loss = -(weights * lp[np.arange(len(yt)), yt]).sum() + cfg.weight_decay / 2 * (w * w).sum()
        g = ((np.exp(lp) - onehot) * weights[:, None]) @ to_logits.T  # d loss / d (z @ W + b)
        return loss, np.concatenate([(zt.T @ g + cfg.weight_decay * w).ravel(), g.sum(0)])

    def stats(z: np.ndarray, y: np.ndarray, theta: np.ndarray) -> tuple[float, float]:
        if not len(y):
            return 0.0, 0.0
        lp = log_probs(z, theta)
        return float(-lp[np.arange(len(y)), y].mean()), float((lp.argmax(1) == y).mean())

    theta = np.zeros(d * m + m)
    result, start, done = engine.FitResult(unit="iteration"), time.perf_counter(), 0
    bar = progress(LBFGS_MAX_ITER, "head (L-BFGS)")
    while done < LBFGS_MAX_ITER:
        fit = minimize(objective, theta, jac=True, method="L-BFGS-B",
                       options={"maxiter": LBFGS_STEP, "gtol": 1e-6, "ftol": 64 * np.finfo(float).eps})
        theta, iters = fit.x, int(fit.nit)
        if iters == 0 and result.history:  # converged exactly at the end of the last chunk: no new row
            break
        done += iters
        seconds = time.perf_counter() - start
        row = engine.EpochStats(done, *stats(zt, yt, theta), *stats(zv, yv, theta), 0.0, seconds, seconds)
        result.history.append(row)
        _tick(bar, row, iters)
        if iters < LBFGS_STEP:  # converged
            break
    bar.close()
    result.best_epoch, result.best_val_acc = done, result.history[-1].val_acc
    coef = (theta[:-m].reshape(d, m) @ to_logits).T / std  # (k, d), on raw features
    intercept = theta[-m:] @ to_logits - coef @ mean
    linear = nn.Linear(x_train.shape[1], k)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(coef))
        linear.bias.copy_(torch.from_numpy(intercept))
    return result, linear.eval()


STD_FLOOR_PERCENTILE = 10


def scale(x: np.ndarray) -> np.ndarray:
    """Per-feature scale for standardizing: the standard deviation, floored at its 10th
    percentile over features. Plain standardization blows up near-constant features (std ~0.01
    where the median is ~0.3): on small data the fit leans on them with huge raw weights (78 on the
    80-image ants/bees sample), which tiny input changes (INT8, another decoder) flip. Measured with
    the floor, Lite0: sample 91.3 -> 95.0%, hymenoptera 94.8 -> 95.4%, flowers 84.0 -> 84.0%, and
    INT8 export no longer loses accuracy on the sample."""
    std = x.std(0)
    return np.maximum(std, np.percentile(std, STD_FLOOR_PERCENTILE)) + 1e-6


# L-BFGS runs in chunks of LBFGS_STEP iterations (one row of the history each), at most LBFGS_MAX_ITER.
LBFGS_STEP, LBFGS_MAX_ITER = 10, 1000


def train_head(cfg: TrainConfig, num_classes: int, x_train, y_train, x_val, y_val, progress=None,
               checkpoint: Path | None = None, resume: dict | None = None) -> tuple[engine.FitResult, nn.Linear]:
    """The head on cached features: logistic regression (--optimizer lbfgs, linear's default) or
    epochs of a first-order optimizer."""
    if cfg.optimizer == "lbfgs":
        return fit_logistic(cfg, num_classes, x_train, y_train, x_val, y_val, progress)
    return fit_head(cfg, num_classes, x_train, y_train, x_val, y_val, progress, checkpoint, resume)


def _tick(bar, stats: engine.EpochStats, n: int = 1) -> None:
    bar.update(n)
    bar.set_postfix(loss=f"{stats.train_loss:.3f}", val_acc=f"{stats.val_acc:.3f}")


def probe_accuracy(x: torch.Tensor, y: torch.Tensor, weight_decay: float, seed: int) -> float | None:
    """Cross-validated (up to 3 stratified folds, training images only) accuracy of the logistic
    regression probe: how well the frozen features separate the classes (a domain-gap signal).
    None when a class has fewer than 2 images."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(3, int(torch.bincount(y).min()))
    if folds < 2:
        return None
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0 / (weight_decay * len(y) * (folds - 1) / folds)))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(clf, x.double().numpy(), y.numpy(), cv=cv).mean())


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kw) -> None:
        pass

    def close(self) -> None:
        pass


def _no_progress(total: int, desc: str) -> _NoBar:
    return _NoBar()
