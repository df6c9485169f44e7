"""A helper process that does a command's CPU work beside it: a run's evaluation and report, the
doctor's analysis. It is started before the command imports torch and imports what that work
needs meanwhile. Work is named by "module:function" and imported where it runs: this module
depends on no other part of transferkit."""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
from pathlib import Path


# The Worker's child, at the caller's own CPU priority: the caller waits for its work, so a lower
# one lets any other load starve the run (a warm run took 196 s instead of 11 s at load ~10 on
# 2 cores with the child at nice 19).
_CHILD = "from transferkit.worker import _serve; _serve()"
# What the child imports before it answers (train's evaluation and report); others pass `preload`.
REPORT_MODULES = ("transferkit.evaluation.report", "matplotlib.backends.backend_agg", "matplotlib.figure",
                  "scipy.special", "sklearn.metrics")
DOCTOR_MODULES = ("transferkit.doctor.analysis", "cleanlab.filter", "cleanlab.rank", "sklearn.neighbors",
                  "sklearn.model_selection", "scipy.optimize", "scipy.ndimage")
WRITE_EVALUATION, RENDER = "transferkit.evaluation.report:write_evaluation", "transferkit.evaluation.report:render"
EVALUATE_AND_PLOT = "transferkit.evaluation.report:evaluate_and_plot"


class Worker:
    """A child process for a command's CPU work (a run's evaluation and report, the doctor's
    analysis), started before the command imports torch: it imports what that work needs (about
    1.1 s on one core for scikit-learn and matplotlib) meanwhile. `call` (a function named
    "module:function", e.g. `WRITE_EVALUATION`) then runs there and this process only waits. If the child cannot start or fails, the
    work is done here instead, with a warning naming the reason: the outputs are the same either
    way. `close()` (or leaving the `with` block) ends the child. `spawn=False`: no child (the
    processes of a torchrun group other than the primary, which evaluate nothing).

    A process that has already imported the libraries the work needs (a notebook that plotted
    with matplotlib and used scikit-learn; an earlier run in it that did its report here) does the
    work itself: a child would cost a process start and those imports again (a cold run on 18
    images: 3.2 s with the child, 1.9 s without). `always`: start the child even then."""

    def __init__(self, warn=None, preload: tuple[str, ...] = REPORT_MODULES, spawn: bool = True,
                 always: bool = False):
        self.warn = warn
        if not spawn or (not always and _imported(preload)):
            self.proc = None
            return
        package_root = str(Path(__file__).resolve().parents[2])  # the same transferkit in the child
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD, *preload],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        except OSError:
            self.proc = None

    def call(self, name: str, *args):
        """`name` ("module:function") called with `args` in the child (here, if it cannot)."""
        return self.submit(name, *args)()

    def submit(self, name: str, *args):
        """`call`, its answer waited for later: returns a function that gives it (call it before
        the next request). Meanwhile this process can do other work beside the child."""
        failed = None
        if self.proc is not None:
            try:
                pickle.dump((name, args), self.proc.stdin)
                self.proc.stdin.flush()
            except (OSError, pickle.PickleError) as exc:
                failed = f"it stopped ({type(exc).__name__})"
                self.close()

        def answer():
            nonlocal failed
            if self.proc is not None and failed is None:
                try:
                    ok, value = pickle.load(self.proc.stdout)
                except (OSError, EOFError, pickle.PickleError) as exc:
                    ok, value = False, f"it stopped ({type(exc).__name__})"
                    self.close()
                if ok:
                    return value
                failed = value
            if failed is not None and self.warn:
                self.warn(f"the report process failed: {failed}; doing its work here")
            return _function(name)(*args)
        return answer

    def close(self) -> None:
        """No more requests: the child is ended at once. Every request was answered before its
        call returned, so it holds no work; a child still importing (a run refused early, one
        stopped by Ctrl-C) would otherwise go on using a core for seconds. Not waited for:
        tearing down its interpreter concerns nobody."""
        if self.proc is not None:
            proc, self.proc = self.proc, None
            proc.kill()
            for pipe in (proc.stdin, proc.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _imported(modules: tuple[str, ...]) -> bool:
    """Whether this process holds every library among `modules` (transferkit's own are cheap)."""
    return all(name in sys.modules for name in modules if not name.startswith("transferkit."))


def _serve() -> None:
    """The child of `Worker`: import what the work needs, then answer requests (pickled
    (name, args) on stdin; (ok, result or error text) on stdout) until stdin closes."""
    import signal

    # Ctrl-C reaches the whole process group: the parent handles it (keeps what it has, writes its
    # outputs through this child) and ends the child when done; the child itself goes on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the replies
    for module in sys.argv[1:]:  # imported now, while the parent imports torch and computes
        importlib.import_module(module)

    while True:
        try:
            name, args = pickle.load(requests)
        except EOFError:
            return
        try:
            reply = (True, _function(name)(*args))
        except Exception as exc:  # noqa: BLE001 - the parent redoes the work and raises it there
            reply = (False, f"{type(exc).__name__}: {exc}")
        pickle.dump(reply, replies)
        replies.flush()


def _function(name: str):
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)
