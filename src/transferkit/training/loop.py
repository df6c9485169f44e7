"""The training loop: `fit` trains for some epochs, validating after each, and keeps the best
epoch; `train_one_epoch` and `validate` are its two halves.

The loop fires named events (`Subscriber`): a fit's start and end, each epoch's start and end,
each optimizer step. Early stopping, the time budget, the per-epoch checkpoint, the weight
average, progress bars, gradual unfreezing and trackers subscribe to them
(`training.subscribers`), so the loop itself only trains, measures and keeps the best weights.

It sees a module, loaders and a `prepare` function turning a loader batch into model input, so
the same code trains a head on cached features and a whole network on images. In a group of
processes (torchrun, `distributed.Group`) each trains the module `Step.replicate` gives (DDP) on
its share of every batch; `measure` returns the same val accuracy on every rank (the caller
gathers the val logits), so every rank keeps the same best epoch and stops at the same time.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..evaluation.metrics import EpochStats
from ..errors import Terminated, UserError
from ..distributed import Group
from ..runtime import Runtime
from .recipe import Mixer, hard_labels
from .result import FitResult

Prepare = Callable[[torch.Tensor], torch.Tensor]


def _unchanged(x: torch.Tensor) -> torch.Tensor:
    return x


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


@dataclass
class Step:
    """What trains and how one optimizer step goes: `prepare` turns a loader batch into model
    input; `mixer` (MixUp / CutMix) mixes each training batch in the first `mix_epochs` epochs
    (None: all); `replicate(model)` is what trains in a group of processes (DDP)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: nn.Module
    runtime: Runtime
    prepare: Prepare = _unchanged
    mixer: Mixer | None = None
    mix_epochs: int | None = None
    replicate: Callable[[nn.Module], nn.Module] | None = None

    def mixer_at(self, epoch: int) -> Mixer | None:
        return self.mixer if self.mix_epochs is None or epoch <= self.mix_epochs else None

    def trained(self) -> nn.Module:
        return self.replicate(self.model) if self.replicate is not None else self.model


class Tally:
    """An epoch's mean loss and accuracy so far (`Scored`)."""

    def __init__(self, loss_fn: nn.Module):
        self.scored = Scored(loss_fn)
        self.total_loss, self.correct, self.seen = 0.0, 0, 0

    def add(self, loss: float, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.total_loss += loss * y.shape[0]
        self.correct += self.scored.add(logits, y)
        self.seen += y.shape[0]

    @property
    def loss(self) -> float:
        return self.total_loss / max(1, self.seen)

    @property
    def accuracy(self) -> float:
        return self.scored.value(self.correct, self.seen)

    @property
    def running_accuracy(self) -> float | None:
        """The accuracy so far, where it is cheap (multi-label: the mAP comes at the epoch's end)."""
        return None if self.scored.multi else self.accuracy


def train_one_epoch(step: Step, loader: DataLoader, scaler: torch.amp.GradScaler | None = None,
                    mixer: Mixer | None = None,
                    after_step: Callable[[int, Tally], None] | None = None) -> tuple[float, float]:
    """One pass over `loader`; returns (mean loss, accuracy: of the heavier label where `mixer`
    mixes the batch into soft targets). `after_step(step, tally)` runs after every optimizer
    step, with the scheduler's step count and the epoch's tally so far."""
    model, optimizer, runtime = step.trained(), step.optimizer, step.runtime
    model.train()
    tally = Tally(step.loss_fn)
    for inputs, targets in loader:
        # targets: labels, or [labels, extra...] for a loss that needs more (distillation).
        extra = [t.to(runtime.device) for t in targets[1:]] if isinstance(targets, (list, tuple)) else []
        y = (targets[0] if isinstance(targets, (list, tuple)) else targets).to(runtime.device)
        x = step.prepare(inputs)
        if mixer is not None:
            x, y = mixer(x, y)
        with runtime.autocast():
            logits = model(x)
            loss = step.loss_fn(logits.float(), y, *extra)
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
        step.scheduler.step()
        tally.add(loss.item(), logits, y)
        if after_step is not None:
            after_step(step.scheduler.last_epoch, tally)
    return tally.loss, tally.accuracy


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


class Subscriber:
    """Something that follows the loop's named events (override those it needs). A subscriber
    with a `key` keeps its state in the checkpoint under that key (`state_dict`) and gets it
    back on resuming (`load_state_dict`). A subscriber may stop the loop (`Loop.stop`): it is
    then the last to hear that event."""

    key: str | None = None

    def fit_start(self, loop: Loop) -> None:
        """After the loop's state is set up (and restored from a checkpoint, when resuming)."""

    def epoch_start(self, loop: Loop, epoch: int) -> None:
        """Before an epoch trains; stopping the loop here skips the epoch."""

    def step_end(self, loop: Loop, step: int, tally: Tally) -> None:
        """After an optimizer step: the scheduler's step count and the epoch's tally so far."""

    def epoch_end(self, loop: Loop, stats: EpochStats) -> None:
        """After an epoch is measured and the best epoch updated."""

    def fit_end(self, loop: Loop) -> None:
        """When the loop ends, however it ends (Ctrl-C, an error)."""

    def state_dict(self) -> object:
        return None

    def load_state_dict(self, state) -> None:
        """Take back what `state_dict` gave."""


@dataclass
class Loop:
    """The loop's state, as its subscribers see it. `measured` is what each epoch measures and
    the kept weights come from: the model, or its weight average (`subscribers.Averaging`)."""

    step: Step
    group: Group
    subscribers: Sequence[Subscriber]
    train_loader: DataLoader
    scaler: torch.amp.GradScaler
    measured: nn.Module
    best_state: dict[str, torch.Tensor]
    generators: list[torch.Generator] = field(init=False)  # what decides the loader's order
    result: FitResult = field(default_factory=FitResult)
    best_loss: float = math.inf
    since_best: int = 0
    first: int = 1
    stopping: bool = False

    def __post_init__(self) -> None:
        self.generators = _generators(self.train_loader)

    def stop(self, by: str | None = None) -> None:
        """End the loop after the current event (`by`: the reason in `FitResult.stopped_by`)."""
        self.stopping = True
        self.result.stopped_early = True
        if by is not None:
            self.result.stopped_by = by

    def fire(self, event: str, *args) -> None:
        for subscriber in self.subscribers:
            getattr(subscriber, event)(self, *args)
            if self.stopping:
                break

    def keep_if_best(self, stats: EpochStats) -> None:
        """Keep the epoch's weights if it is the best so far (by val accuracy, ties to the lower loss)."""
        result = self.result
        if stats.val_acc > result.best_val_acc or (stats.val_acc == result.best_val_acc and stats.val_loss < self.best_loss):
            result.best_epoch, result.best_val_acc, self.best_loss = stats.epoch, stats.val_acc, stats.val_loss
            self.best_state = copy.deepcopy(self.measured.state_dict())
            self.since_best = 0
        else:
            self.since_best += 1

    def state(self, epoch: int) -> dict:
        """Everything needed to continue after `epoch` (in a group: called on every rank, which
        gives each rank's random state)."""
        step, group = self.step, self.group
        rng = group.all_gather(torch.get_rng_state()) if group.distributed else torch.get_rng_state()
        state = {
            "epoch": epoch, "model": step.model.state_dict(), "optimizer": step.optimizer.state_dict(),
            "scheduler": step.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "torch_rng": rng, "loader_rng": [g.get_state() for g in self.generators],
            "best_state": self.best_state, "best_loss": self.best_loss, "since_best": self.since_best,
            "best_epoch": self.result.best_epoch, "best_val_acc": self.result.best_val_acc,
            "history": [dataclasses.asdict(h) for h in self.result.history],
        }
        for subscriber in self.subscribers:
            if subscriber.key is not None:
                state[subscriber.key] = subscriber.state_dict()
        return state

    def restore(self, state: dict) -> None:
        """Continue from `state` (a checkpoint `state` wrote, loaded): on CPU, the same result as
        an uninterrupted run."""
        step, group = self.step, self.group
        step.model.load_state_dict(state["model"])
        step.optimizer.load_state_dict(state["optimizer"])
        step.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for subscriber in self.subscribers:
            if subscriber.key is not None and state.get(subscriber.key) is not None:
                subscriber.load_state_dict(state[subscriber.key])
        rng = state["torch_rng"]  # one state, or one per rank of the group that wrote it
        if isinstance(rng, torch.Tensor) or len(rng) == group.world:
            torch.set_rng_state(rng if isinstance(rng, torch.Tensor) else rng[group.rank])
        for gen, saved in zip(self.generators, state["loader_rng"]):
            gen.set_state(saved)
        self.best_state, self.best_loss, self.since_best = state["best_state"], state["best_loss"], state["since_best"]
        self.result.best_epoch, self.result.best_val_acc = state["best_epoch"], state["best_val_acc"]
        self.result.history = [EpochStats(**h) for h in state["history"]]
        self.first = state["epoch"] + 1


def fit(step: Step, train_loader: DataLoader, val_loader: DataLoader, epochs: int,
        subscribers: Sequence[Subscriber] = (), measure: Callable[[nn.Module], tuple[float, float, torch.Tensor]] | None = None,
        group: Group | None = None, resume: dict | None = None) -> tuple[FitResult, dict[str, torch.Tensor]]:
    """Train `step.model` for `epochs`, validating after each (`measure(module)`: (loss,
    accuracy, logits); by default `validate` on `val_loader`), and keep the best weights (by val
    accuracy, ties to the lower val loss). Ends cleanly on Ctrl-C or SIGTERM, keeping the best
    epoch so far. `subscribers` hear the loop's events in their order. `resume`: a checkpoint
    (`Loop.state`, loaded) to continue from. In a `group`, the loader's sampler is told the
    epoch. Returns the result and the best state."""
    loop = Loop(step, group or Group(), list(subscribers), train_loader, step.runtime.grad_scaler(), step.model,
                copy.deepcopy(step.model.state_dict()))
    if resume is not None:
        loop.restore(resume)
    loop.fire("fit_start")
    try:
        for epoch in range(loop.first, epochs + 1):
            if loop.stopping:
                break
            start = time.perf_counter()
            loop.fire("epoch_start", epoch)
            if loop.stopping:
                break
            if hasattr(train_loader.dataset, "set_epoch"):
                train_loader.dataset.set_epoch(epoch)  # seeds this epoch's augmentation
            if hasattr(train_loader.sampler, "set_epoch"):
                train_loader.sampler.set_epoch(epoch)  # this epoch's order (and share of it)
            train_loss, train_acc = train_one_epoch(step, train_loader, loop.scaler, step.mixer_at(epoch),
                                                    lambda n, tally: loop.fire("step_end", n, tally))
            if loop.group.distributed:  # every rank saw as many images (the sampler pads)
                ranks = loop.group.all_gather((train_loss, train_acc))
                train_loss, train_acc = (sum(r[0] for r in ranks) / len(ranks), sum(r[1] for r in ranks) / len(ranks))
            train_seconds = time.perf_counter() - start
            val_loss, val_acc, _ = (measure(loop.measured) if measure is not None
                                    else validate(loop.measured, val_loader, step.loss_fn, step.runtime, step.prepare))
            stats = EpochStats(epoch, train_loss, train_acc, val_loss, val_acc,
                               step.optimizer.param_groups[-1]["lr"], time.perf_counter() - start, train_seconds)
            loop.result.history.append(stats)
            loop.keep_if_best(stats)
            loop.fire("epoch_end", stats)
    except KeyboardInterrupt as exc:
        loop.result.interrupted = True
        loop.result.stopped_by = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
    finally:
        for subscriber in loop.subscribers:
            subscriber.fit_end(loop)
    return loop.result, loop.best_state


def _generators(loader: DataLoader) -> list[torch.Generator]:
    """The random generators that decide a loader's order (its own and its sampler's)."""
    gens = [loader.generator, getattr(loader.sampler, "generator", None)]
    out: list[torch.Generator] = []
    for g in gens:
        if g is not None and all(g is not o for o in out):
            out.append(g)
    return out
