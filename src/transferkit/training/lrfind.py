"""LR range test (Smith, 2017; fastai's `lr_find`): raise the learning rate exponentially, step by
step, record the smoothed training loss, and suggest the LR where the loss falls fastest."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from torch import nn
from torch.utils.data import DataLoader

from ..runtime import Runtime
from . import loop


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]  # smoothed (bias-corrected exponential moving average)
    suggestion: float

    def to_dict(self) -> dict:
        return {"suggested_lr": self.suggestion, "lrs": self.lrs, "losses": self.losses}


def range_test(model: nn.Module, loader: DataLoader, groups: list[dict], loss_fn: nn.Module,
               runtime: Runtime, prepare, optimizer: str = "adamw", weight_decay: float = 0.0,
               start_lr: float = 1e-7, end_lr: float = 1.0, steps: int = 100) -> LRFindResult:
    """Train `model` for `steps` batches with the LR going from `start_lr` to `end_lr`
    (discriminative ratios between `groups` kept); stops early once the loss explodes.
    The model is changed: run it on a copy, or rebuild it afterwards."""
    opt = loop.make_optimizer(optimizer, groups, start_lr, weight_decay)
    top = max(g["lr"] for g in opt.param_groups)
    ratios = [g["lr"] / top for g in opt.param_groups]
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    model.train()
    lrs, losses, avg, best = [], [], 0.0, math.inf
    for i in range(steps):
        lr = start_lr * (end_lr / start_lr) ** (i / max(1, steps - 1))
        for g, r in zip(opt.param_groups, ratios):
            g["lr"] = lr * r
        inputs, targets = next(batches)
        with runtime.autocast():
            loss = loss_fn(model(prepare(inputs)).float(), targets.to(runtime.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        avg = 0.98 * avg + 0.02 * loss.item()
        smoothed = avg / (1 - 0.98 ** (i + 1))
        if not math.isfinite(smoothed) or smoothed > 4 * best:
            break
        best = min(best, smoothed)
        lrs.append(lr)
        losses.append(smoothed)
    return LRFindResult(lrs, losses, suggest(lrs, losses))


def suggest(lrs: list[float], losses: list[float]) -> float:
    """The LR of steepest loss descent (per decade of LR), ignoring the first tenth of the sweep,
    where the moving average is still settling."""
    if len(lrs) < 5:
        return lrs[int(np.argmin(losses))] if lrs else float("nan")
    skip = max(1, len(lrs) // 10)
    slope = np.gradient(np.asarray(losses), np.log10(lrs))
    return float(lrs[skip + int(np.argmin(slope[skip:]))])
