"""What follows the training loop's events (`loop.Subscriber`): early stopping, the time budget,
the per-epoch checkpoint, the weight average, progress bars, and a function called at each
epoch's start or end (gradual unfreezing, the console line, trackers). A fit takes those it
needs, in the order they should hear each event."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from ..evaluation.metrics import EpochStats
from .checkpoint import save_checkpoint
from .loop import Loop, Subscriber, Tally
from .recipe import WeightAverage


class EarlyStop(Subscriber):
    """Stops after `patience` epochs without a better one (0: never)."""

    def __init__(self, patience: int):
        self.patience = patience

    def epoch_end(self, loop: Loop, stats: EpochStats) -> None:
        if self.patience and loop.since_best >= self.patience:
            loop.stop()


class Budget(Subscriber):
    """auto's --budget: no epoch starts that would end after `deadline` (a `time.perf_counter()`
    time), going by the last epoch's time; in a group, every rank stops at the same epoch."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    def epoch_start(self, loop: Loop, epoch: int) -> None:
        history = loop.result.history
        if not history:
            return
        late = time.perf_counter() + history[-1].seconds > self.deadline
        if any(loop.group.all_gather(late)) if loop.group.distributed else late:
            loop.stop("budget")


class Checkpointing(Subscriber):
    """Writes everything needed to continue (`Loop.state`) to `path`, atomically, after every
    epoch; in a group, the primary writes it, holding every rank's random state."""

    def __init__(self, path: Path):
        self.path = path

    def epoch_end(self, loop: Loop, stats: EpochStats) -> None:
        state = loop.state(stats.epoch)  # (collective in a group: every rank calls it)
        if loop.group.primary:
            save_checkpoint(self.path, state)


class Averaging(Subscriber):
    """The exponential moving average of the weights (--ema): updated after every step; it is
    what each epoch measures and its weights are the kept ones. Checkpointed as "average"."""

    key = "average"

    def __init__(self, average: WeightAverage):
        self.average = average

    def fit_start(self, loop: Loop) -> None:
        loop.measured = self.average.module

    def step_end(self, loop: Loop, step: int, tally: Tally) -> None:
        self.average.update(loop.step.model, step)

    def state_dict(self):
        return self.average.state_dict()

    def load_state_dict(self, state) -> None:
        self.average.load_state_dict(state)


class EpochBars(Subscriber):
    """A progress bar per epoch, over its steps, showing the loss (and accuracy) so far:
    `factory(epoch, steps)` makes one (`Console.progress`)."""

    def __init__(self, factory: Callable[[int, int], object]):
        self.factory = factory
        self.bar = None

    def epoch_start(self, loop: Loop, epoch: int) -> None:
        self._close()
        self.bar = self.factory(epoch, len(loop.train_loader))

    def step_end(self, loop: Loop, step: int, tally: Tally) -> None:
        self.bar.update(1)
        accuracy = tally.running_accuracy
        self.bar.set_postfix(loss=f"{tally.loss:.3f}", **({} if accuracy is None else {"acc": f"{accuracy:.3f}"}))

    def epoch_end(self, loop: Loop, stats: EpochStats) -> None:
        self._close()

    def fit_end(self, loop: Loop) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EpochStart(Subscriber):
    """Calls `fn(epoch)` before every epoch (gradual unfreezing: the next stages)."""

    def __init__(self, fn: Callable[[int], None]):
        self.fn = fn

    def epoch_start(self, loop: Loop, epoch: int) -> None:
        self.fn(epoch)


class EpochEnd(Subscriber):
    """Calls `fn(stats)` after every epoch (the console line, trackers, a progress tick)."""

    def __init__(self, fn: Callable[[EpochStats], None]):
        self.fn = fn

    def epoch_end(self, loop: Loop, stats: EpochStats) -> None:
        self.fn(stats)
