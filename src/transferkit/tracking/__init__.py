"""Logging a run to experiment trackers (`train --track mlflow|tensorboard`).

`Tracking` fans a run's events (its start, each training epoch, its end) out to the trackers it
was asked for. Each tracker works on a thread of its own, so a slow or unreachable tracking
server never holds the training up; the first error of a tracker is one warning, and the run
goes on without it. At the end of the run the trackers get a bounded time to finish sending
(`START_LIMIT_S`, `FLUSH_LIMIT_S`), then they are left behind with a warning.

A tracker is an object with `start(start) -> dict | None` (what `--resume` needs to continue the
same tracked run, kept in RUN/tracking.json), `epochs(rows)` and `finish(end)`; see
`trackers/mlflow_tracking.py` and `trackers/tensorboard_tracking.py`.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..evaluation.metrics import EpochStats
from .registry import TRACKERS

STATE_FILE = "tracking.json"  # in the run folder: each tracker's handle on its run (for --resume)
START_LIMIT_S = 20.0  # at the run's end, how long a tracker that has not yet started is waited for
FLUSH_LIMIT_S = 120.0  # ... and one that has, to send what is left (the artifacts)


@dataclass
class RunStart:
    """What a tracker gets when the run starts."""

    run_dir: Path
    name: str  # the run folder's name
    params: dict[str, str]  # every resolved option that has a value
    tags: dict[str, str]
    state: dict | None = None  # what this tracker returned from `start` before (--resume), if anything


@dataclass
class EpochRow:
    """One row of the training history as trackers log it (`step`: the epoch, or the L-BFGS
    iteration count of the head's fit)."""

    step: int
    values: dict[str, float]
    time: float  # seconds since the epoch (Unix time) when the row was measured


@dataclass
class RunEnd:
    """What a tracker gets when the run ends."""

    run_dir: Path
    status: str  # FINISHED | FAILED | KILLED (MLflow's run statuses)
    metrics: dict[str, float] = field(default_factory=dict)  # final metrics
    params: dict[str, str] = field(default_factory=dict)  # learnt at the end (auto's choice)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)  # the run's files worth keeping with it
    images: dict[str, Path] = field(default_factory=dict)  # plots: title -> PNG


def epoch_row(stats: EpochStats, images: int, unit: str = "epoch") -> EpochRow:
    """A history row as metrics: losses, accuracies, the LR and (epochs) training images/s."""
    values = {"train_loss": stats.train_loss, "train_accuracy": stats.train_acc, "val_loss": stats.val_loss,
              "val_accuracy": stats.val_acc, "seconds": stats.seconds}
    if unit == "epoch":
        values["lr"] = stats.lr
        if stats.train_seconds > 0:
            values["images_per_s"] = images / stats.train_seconds
    return EpochRow(stats.epoch, values, time.time())


class _Lane:
    """One tracker and the thread that calls it, in order. A failure: one warning, then nothing
    more is sent to it."""

    def __init__(self, name: str, tracker, warn: Callable[[str], None]):
        self.name, self.tracker, self.warn = name, tracker, warn
        self.failed = False
        self.started = threading.Event()
        self.state: dict | None = None
        self._calls: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name=f"transferkit-track-{name}", daemon=True)
        self._thread.start()

    def send(self, method: str, *args) -> None:
        if not self.failed:
            self._calls.put((method, args))

    def _work(self) -> None:
        while True:
            method, args = self._calls.get()
            try:
                if method == "close":
                    return
                if not self.failed:
                    result = getattr(self.tracker, method)(*args)
                    if method == "start":
                        self.state = result
                        self.started.set()
            except Exception as exc:  # noqa: BLE001 - a tracker never fails the run: it is dropped
                self.failed = True
                self.started.set()
                line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                self.warn(f"--track {self.name}: {line[:300]}; the run goes on without {self.name}")
            finally:
                self._calls.task_done()

    def wait(self) -> None:
        """Wait (bounded) until what was sent is sent; warn when the tracker is left behind."""
        if not self.started.wait(START_LIMIT_S):
            self.failed = True
            self.warn(f"--track {self.name}: no answer within {START_LIMIT_S:.0f} s (is the tracking server "
                      f"up?); the run is not logged to {self.name}")
            return
        self._calls.put(("close", ()))
        self._thread.join(FLUSH_LIMIT_S)
        if self._thread.is_alive() and not self.failed:
            self.failed = True
            self.warn(f"--track {self.name}: still sending after {FLUSH_LIMIT_S:.0f} s; left unfinished")


class Tracking:
    """The trackers of one run (none: every call does nothing)."""

    def __init__(self):
        self.lanes: list[_Lane] = []
        self.run_dir: Path | None = None
        self.streamed = False  # whether epochs were sent as they ended

    def start(self, names: str | None, start: RunStart, warn: Callable[[str], None]) -> None:
        """Start the trackers `names` (comma-separated; None: none) for the run `start`
        describes; on --resume each continues its own run (RUN/tracking.json)."""
        if not names:
            return
        saved = read_state(start.run_dir)
        self.run_dir = start.run_dir
        for name in names.split(","):
            kind = TRACKERS.get(name)
            try:
                tracker = kind.open(start.run_dir)
            except Exception as exc:  # noqa: BLE001 - as a failure while running: one warning
                warn(f"--track {name}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}; "
                     f"the run goes on without {name}")
                continue
            lane = _Lane(name, tracker, warn)
            state = saved.get(name) if isinstance(saved.get(name), dict) else None  # (a damaged file: a new run)
            lane.send("start", RunStart(start.run_dir, start.name, start.params, start.tags, state))
            self.lanes.append(lane)

    def __bool__(self) -> bool:
        return bool(self.lanes)

    def epoch(self, stats: EpochStats, images: int) -> None:
        """A training epoch has ended (`images`: the training images it went through)."""
        if self.lanes:
            self.streamed = True
            row = epoch_row(stats, images)
            for lane in self.lanes:
                lane.send("epochs", [row])

    def history(self, rows: list[EpochStats], unit: str, images: int) -> None:
        """The kept fit's history, where its epochs were not sent as they ended (a head)."""
        if self.lanes and not self.streamed:
            out = [epoch_row(s, images, unit) for s in rows]
            for lane in self.lanes:
                lane.send("epochs", out)

    def finish(self, end: RunEnd) -> None:
        """End every tracker's run, wait (bounded) for them, and keep their state for --resume."""
        for lane in self.lanes:
            lane.send("finish", end)
        for lane in self.lanes:
            lane.wait()
        states = {lane.name: lane.state for lane in self.lanes if lane.state}
        if states and self.run_dir is not None:
            from ..files import write_json

            try:
                write_json(self.run_dir / STATE_FILE, {**read_state(self.run_dir), **states})
            except OSError:
                pass  # the trackers' own records stand; only --resume would start new tracked runs
        self.lanes = []


def read_state(run_dir: Path) -> dict:
    """What the trackers of the run in `run_dir` keep for --resume (RUN/tracking.json), or {}."""
    from ..files import read_json_object

    return read_json_object(run_dir / STATE_FILE) or {}
