"""Fitting a head on cached features: the logistic regression (`fit_logistic`: scipy's L-BFGS on
scikit-learn's objective, on standardized features folded back onto the raw ones) and the
epoch-trained head (`fit_head`: dropout + linear on the training loop)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ...config import TrainConfig
from ...evaluation.metrics import EpochStats
from ...logistic import ShardedLogistic, problem_for, sharded_standardizer, standardizer
from ...task import strata_of
from ..result import FitResult, LinearHead


def fit_head(cfg: TrainConfig, num_classes: int, x_train, y_train, x_val, y_val, progress=None,
             checkpoint: Path | None = None, resume: dict | None = None) -> tuple[FitResult, LinearHead]:
    """Dropout + linear head (zero init) trained on features (NumPy arrays) in fp32 for
    `cfg.epochs`; the best epoch is kept. `checkpoint` / `resume`: as in `loop.fit`."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from ...data.datasets import train_loader
    from ...runtime import Runtime
    from .. import loop, subscribers
    from ..losses import classification_loss

    x_train, y_train, x_val, y_val = (torch.from_numpy(np.ascontiguousarray(a)) for a in (x_train, y_train, x_val, y_val))
    progress = progress or _no_progress
    torch.manual_seed(cfg.seed)
    linear = nn.Linear(x_train.shape[1], num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    head = nn.Sequential(nn.Dropout(cfg.dropout), linear)
    strata = torch.from_numpy(strata_of(y_train.numpy()))  # (multi-label: what the class-balanced sampler draws by)
    loader = train_loader(TensorDataset(x_train, y_train), strata, cfg.batch_size, cfg.seed, balanced=cfg.balanced_sampler)
    val_loader = DataLoader(TensorDataset(x_val, y_val), batch_size=1024)
    optimizer = loop.make_optimizer(cfg.optimizer, [{"params": head.parameters()}], cfg.lr, cfg.weight_decay)
    steps = cfg.epochs * len(loader)
    scheduler = loop.make_scheduler(cfg.schedule, optimizer, steps, int(cfg.warmup_epochs * len(loader)))
    bar = progress(cfg.epochs, "head")
    step = loop.Step(head, optimizer, scheduler, classification_loss(cfg, y_train, num_classes),
                     Runtime(torch.device("cpu"), torch.float32))
    follow = [subscribers.Checkpointing(checkpoint)] if checkpoint is not None else []
    result, best = loop.fit(step, loader, val_loader, cfg.epochs,
                            [*follow, subscribers.EpochEnd(lambda s: _tick(bar, s)), subscribers.EarlyStop(cfg.patience)],
                            resume=resume)
    bar.close()
    head.load_state_dict(best)
    return result, LinearHead.of(linear)


def fit_logistic(cfg: TrainConfig, num_classes: int, x_train, y_train, x_val, y_val,
                 progress=None, scaling: str = "feature", group=None) -> tuple[FitResult, LinearHead]:
    """Multinomial logistic regression, fitted full-batch by scipy's L-BFGS-B (float64) on
    standardized features (`scaling`: see `standardizer`), folded back into one `LinearHead` on
    the raw features. The objective is scikit-learn's LogisticRegression's (tested to give its
    probabilities): the mean cross-entropy plus weight_decay / 2 * |W|^2, the bias unpenalized,
    i.e. C = 1 / (weight_decay * n); with two classes one logit, as there. --class-weights auto
    and --balanced-sampler weigh each class by inverse frequency (class_weight="balanced").
    Convex: the converged model is kept, nothing is selected on the val set. The history records
    the losses every LBFGS_STEP iterations. Not scikit-learn itself: importing it costs 0.7 s,
    scipy.optimize 0.4 s (a torch optimizer imports torch._dynamo: 1.1 s).
    `group` (sharded features, #31): every rank gives its rows and the fit is data-parallel
    (`logistic.ShardedLogistic`, `sharded_standardizer`): every rank ends with the same head."""
    progress = progress or _no_progress
    xt, yt = np.asarray(x_train, dtype=np.float64), np.asarray(y_train)
    xv, yv = np.asarray(x_val, dtype=np.float64), np.asarray(y_val)
    balanced = cfg.class_weights == "auto" or cfg.balanced_sampler
    if group is not None:
        mean, std = sharded_standardizer(xt, scaling, group.sum)
        problem = ShardedLogistic((xt - mean) / std, yt, num_classes, cfg.weight_decay, balanced, group.sum)
    else:
        mean, std = standardizer(xt, scaling)
        problem = problem_for(yt)((xt - mean) / std, yt, num_classes, cfg.weight_decay, balanced)
    zv = (xv - mean) / std
    theta = problem.start()
    result, start, done = FitResult(unit="iteration"), time.perf_counter(), 0
    bar = progress(LBFGS_MAX_ITER, "head (L-BFGS)")
    while done < LBFGS_MAX_ITER:
        theta, iters = problem.fit(theta, LBFGS_STEP, LBFGS_GTOL)
        if iters == 0 and result.history:  # converged exactly at the end of the last chunk: no new row
            break
        done += iters
        seconds = time.perf_counter() - start
        row = EpochStats(done, *problem.stats(problem.z, yt, theta), *problem.stats(zv, yv, theta), 0.0,
                                seconds, seconds)
        result.history.append(row)
        _tick(bar, row, iters)
        if iters < LBFGS_STEP:  # converged
            break
    bar.close()
    result.best_epoch, result.best_val_acc = done, result.history[-1].val_acc
    coef, intercept = problem.coefficients(theta)
    coef = coef / std  # (k, d), on raw features
    intercept = intercept - coef @ mean
    return result, LinearHead(coef.astype(np.float32), intercept.astype(np.float32))

# L-BFGS runs in chunks of LBFGS_STEP iterations (one row of the history each), at most LBFGS_MAX_ITER.
LBFGS_STEP, LBFGS_MAX_ITER = 10, 1000
LBFGS_GTOL = 1e-5  # on the largest gradient component (scikit-learn's default tol: 1e-4)


def train_head(cfg: TrainConfig, num_classes: int, x_train, y_train, x_val, y_val, progress=None,
               checkpoint: Path | None = None, resume: dict | None = None) -> tuple[FitResult, LinearHead]:
    """The head on cached features: logistic regression (--optimizer lbfgs, linear's default) or
    epochs of a first-order optimizer."""
    if cfg.optimizer == "lbfgs":
        return fit_logistic(cfg, num_classes, x_train, y_train, x_val, y_val, progress)
    return fit_head(cfg, num_classes, x_train, y_train, x_val, y_val, progress, checkpoint, resume)


def _tick(bar, stats: EpochStats, n: int = 1) -> None:
    bar.update(n)
    bar.set_postfix(loss=f"{stats.train_loss:.3f}", val_acc=f"{stats.val_acc:.3f}")


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kw) -> None:
        pass

    def close(self) -> None:
        pass


def _no_progress(total: int, desc: str) -> _NoBar:
    return _NoBar()
