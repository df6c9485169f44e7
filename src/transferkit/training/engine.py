"""The training loop: `train_one_epoch`, `validate` and `fit` (best epoch, early stop, Ctrl-C,
a checkpoint per epoch).

The loop only sees a module, loaders and a `prepare` function turning a loader batch into model
input, so the same code trains a head on cached features and a whole network on images. In a
group of processes (torchrun, `distributed.Group`) each trains the module `replicate` gives
(DDP) on its share of every batch; `measure` returns the same val accuracy on every rank (the
caller gathers the val logits), so every rank keeps the same best epoch and stops at the same
time; the primary alone writes the checkpoint, holding every rank's random state.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..evaluation.metrics import EpochStats
from ..errors import Terminated, UserError
from ..distributed import Group
from ..runtime import Runtime
from .checkpoint import save_checkpoint
from .recipe import Mixer, WeightAverage, hard_labels
from .result import FitResult

Prepare = Callable[[torch.Tensor], torch.Tensor]


def make_optimizer(name: str, groups: list[dict], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int,
                   warmup_steps: int = 0) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: cosine to zero (after an optional linear warm-up), one-cycle, or constant."""
    if name == "onecycle":
        max_lrs = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lrs, total_steps=max(1, total_steps))
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    def cosine(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler, loss_fn: nn.Module, runtime: Runtime, prepare: Prepare,
                    scaler: torch.amp.GradScaler | None = None, progress=None, mixer: Mixer | None = None,
                    after_step: Callable[[int], None] | None = None) -> tuple[float, float]:
    """One pass over `loader`; returns (mean loss, accuracy: of the heavier label where `mixer`
    (MixUp / CutMix) mixes the batch into soft targets). `after_step(step)` runs after every
    optimizer step (the weight average), with the scheduler's step count."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    scored = Scored(loss_fn)
    for inputs, targets in loader:
        # targets: labels, or [labels, extra...] for a loss that needs more (distillation).
        extra = [t.to(runtime.device) for t in targets[1:]] if isinstance(targets, (list, tuple)) else []
        y = (targets[0] if isinstance(targets, (list, tuple)) else targets).to(runtime.device)
        x = prepare(inputs)
        if mixer is not None:
            x, y = mixer(x, y)
        with runtime.autocast():
            logits = model(x)
            loss = loss_fn(logits.float(), y, *extra)
        if not torch.isfinite(loss):
            lr = max(g["lr"] for g in optimizer.param_groups)
            raise UserError(f"the training loss became {loss.item()} (learning rate {lr:.3g}): training stopped and "
                            "no model was saved; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        if after_step is not None:
            after_step(scheduler.last_epoch)
        n = y.shape[0]
        total_loss += loss.item() * n
        correct += scored.add(logits, y)
        seen += n
        if progress is not None:
            progress.update(1)
            # (multi-label: the epoch's mAP comes at its end, not recomputed over every batch so far)
            progress.set_postfix(loss=f"{total_loss / seen:.3f}",
                                 **({} if scored.multi else {"acc": f"{scored.value(correct, seen):.3f}"}))
    return total_loss / max(1, seen), scored.value(correct, seen)


class Scored:
    """An epoch's accuracy, batch by batch: the images whose argmax is their (heavier) label; for
    a multi-label loss, the epoch's mAP (`task.mean_ap` of every batch's logits, kept)."""

    def __init__(self, loss_fn: nn.Module):
        self.multi = getattr(loss_fn, "multilabel", False)
        self.logits: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> int:
        if self.multi:
            self.logits.append(logits.detach().float().cpu())
            self.targets.append(y.detach().cpu())
            return 0
        return int((logits.argmax(1) == hard_labels(y)).sum().item())

    def value(self, correct: int, seen: int) -> float:
        if self.multi:
            from ..task import mean_ap

            return mean_ap(torch.cat(self.targets).numpy(), torch.cat(self.logits).numpy()) if self.logits else 0.0
        return correct / max(1, seen)


@torch.inference_mode()
def validate(model: nn.Module, loader: DataLoader, loss_fn: nn.Module, runtime: Runtime,
             prepare: Prepare) -> tuple[float, float, torch.Tensor]:
    """Returns (mean loss, accuracy, logits in loader order)."""
    model.eval()
    total_loss, correct, seen, outs = 0.0, 0, 0, []
    scored = Scored(loss_fn)
    for inputs, targets in loader:
        x, y = prepare(inputs), targets.to(runtime.device)
        with runtime.autocast():
            logits = model(x).float()
        total_loss += loss_fn(logits, y).item() * y.shape[0]
        correct += scored.add(logits, y)
        seen += y.shape[0]
        outs.append(logits.cpu())
    return total_loss / max(1, seen), scored.value(correct, seen), torch.cat(outs) if outs else torch.empty(0)


def fit(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader,
        optimizer: torch.optim.Optimizer, scheduler, loss_fn: nn.Module, runtime: Runtime,
        prepare: Prepare, epochs: int, patience: int = 0,
        on_epoch: Callable[[EpochStats], None] | None = None,
        progress_factory=None, before_epoch: Callable[[int], None] | None = None,
        checkpoint: Path | None = None, resume: dict | None = None,
        measure: Callable[[nn.Module], tuple[float, float, torch.Tensor]] | None = None,
        group: Group | None = None, replicate: Callable[[nn.Module], nn.Module] | None = None,
        mixer: Mixer | None = None, mix_epochs: int | None = None, average: WeightAverage | None = None,
        deadline: float | None = None,
        ) -> tuple[FitResult, dict[str, torch.Tensor]]:
    """Train for `epochs`, validating after each; keep the best weights (by val accuracy, ties to
    the lower val loss). Stops early after `patience` epochs without improvement (0: never), and
    cleanly on Ctrl-C, keeping the best epoch so far. Returns the result and the best state.

    With `checkpoint`, everything needed to continue (model, optimizer, scheduler, RNG states,
    best so far) is written there atomically after every epoch; `resume` (such a checkpoint,
    loaded) continues from its epoch, giving on CPU the same result as an uninterrupted run.
    In a `group`, `replicate(model)` is what trains (DDP), and the loader's sampler is told the
    epoch. `mixer`: MixUp / CutMix of each training batch, in the first `mix_epochs` epochs (None:
    all). `average` (the EMA of the weights): updated after every step; it is what each epoch
    measures, and its weights are the kept ones.
    `deadline` (a `time.perf_counter()` time, auto's --budget): no epoch starts that would end
    after it, going by the last epoch's time (`stopped_by` "budget")."""
    group = group or Group()
    result = FitResult()
    measured = average.module if average is not None else model  # what is measured and kept
    after_step = (lambda step: average.update(model, step)) if average is not None else None
    best_state = copy.deepcopy(model.state_dict())
    best_loss = math.inf
    scaler = runtime.grad_scaler()
    since_best = 0
    first = 1
    generators = _generators(train_loader)
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        if average is not None and resume.get("average") is not None:
            average.load_state_dict(resume["average"])
        rng = resume["torch_rng"]  # one state, or one per rank of the group that wrote it
        if isinstance(rng, torch.Tensor) or len(rng) == group.world:
            torch.set_rng_state(rng if isinstance(rng, torch.Tensor) else rng[group.rank])
        for gen, state in zip(generators, resume["loader_rng"]):
            gen.set_state(state)
        best_state, best_loss, since_best = resume["best_state"], resume["best_loss"], resume["since_best"]
        result.best_epoch, result.best_val_acc = resume["best_epoch"], resume["best_val_acc"]
        result.history = [EpochStats(**h) for h in resume["history"]]
        first = resume["epoch"] + 1
    try:
        for epoch in range(first, epochs + 1):
            start = time.perf_counter()
            if deadline is not None and result.history and _past(start + result.history[-1].seconds, deadline, group):
                result.stopped_early, result.stopped_by = True, "budget"
                break
            if before_epoch is not None:
                before_epoch(epoch)  # e.g. unfreeze the next stages
            if hasattr(train_loader.dataset, "set_epoch"):
                train_loader.dataset.set_epoch(epoch)  # seeds this epoch's augmentation
            if hasattr(train_loader.sampler, "set_epoch"):
                train_loader.sampler.set_epoch(epoch)  # this epoch's order (and share of it)
            bar = progress_factory(epoch, len(train_loader)) if progress_factory else None
            try:
                train_loss, train_acc = train_one_epoch(
                    replicate(model) if replicate else model, train_loader, optimizer, scheduler, loss_fn, runtime,
                    prepare, scaler, bar, mixer if mix_epochs is None or epoch <= mix_epochs else None, after_step
                )
                if group.distributed:  # every rank saw as many images (the sampler pads)
                    ranks = group.all_gather((train_loss, train_acc))
                    train_loss, train_acc = (sum(r[0] for r in ranks) / len(ranks), sum(r[1] for r in ranks) / len(ranks))
                train_seconds = time.perf_counter() - start
                val_loss, val_acc, _ = (measure(measured) if measure is not None
                                        else validate(measured, val_loader, loss_fn, runtime, prepare))
            finally:
                if bar is not None:
                    bar.close()
            stats = EpochStats(epoch, train_loss, train_acc, val_loss, val_acc,
                               optimizer.param_groups[-1]["lr"], time.perf_counter() - start, train_seconds)
            result.history.append(stats)
            if val_acc > result.best_val_acc or (val_acc == result.best_val_acc and val_loss < best_loss):
                result.best_epoch, result.best_val_acc, best_loss = epoch, val_acc, val_loss
                best_state = copy.deepcopy(measured.state_dict())
                since_best = 0
            else:
                since_best += 1
            rng = group.all_gather(torch.get_rng_state()) if group.distributed else torch.get_rng_state()
            if checkpoint is not None and group.primary:
                save_checkpoint(checkpoint, {
                    "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                    "average": average.state_dict() if average is not None else None,
                    "torch_rng": rng, "loader_rng": [g.get_state() for g in generators],
                    "best_state": best_state, "best_loss": best_loss, "since_best": since_best,
                    "best_epoch": result.best_epoch, "best_val_acc": result.best_val_acc,
                    "history": [dataclasses.asdict(h) for h in result.history],
                })
            if on_epoch is not None:
                on_epoch(stats)
            if patience and since_best >= patience:
                result.stopped_early = True
                break
    except KeyboardInterrupt as exc:
        result.interrupted = True
        result.stopped_by = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
    return result, best_state


def _past(end: float, deadline: float, group: Group) -> bool:
    """Whether an epoch ending at `end` would end after `deadline` (on any rank of the group:
    every rank stops at the same epoch)."""
    late = end > deadline
    return any(group.all_gather(late)) if group.distributed else late


def _generators(loader: DataLoader) -> list[torch.Generator]:
    """The random generators that decide a loader's order (its own and its sampler's)."""
    gens = [loader.generator, getattr(loader.sampler, "generator", None)]
    out: list[torch.Generator] = []
    for g in gens:
        if g is not None and all(g is not o for o in out):
            out.append(g)
    return out
