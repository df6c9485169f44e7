"""The studio's work queue: training runs (and the doctor, exports) as the CLI commands they are,
each in a process of its own, one at a time (a CPU has no room for two), in the order they were
asked for. A job's progress is read from what its command prints (the epoch lines of `train`, the
progress lines of long work), so a run started here is the same command a person would type; the
page shows that command. Stopping a running job sends it SIGINT: `train` keeps the best epoch so
far and writes every output, as on Ctrl-C."""

from __future__ import annotations

import itertools
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

NUMBER = r"([\d.]+|nan|inf)"
# what `train` prints after each epoch (training.network)
EPOCH_LINE = re.compile(rf"^epoch (\d+): train loss {NUMBER} acc ([\d.]+) \| val loss {NUMBER} acc ([\d.]+) \| ([\d.]+)s$")
LOG_LINES = 200  # the last lines of a job's output that are kept
# what long work prints a line a second of (console.LogProgress): "features: 120/245 (...), 10 s"
PROGRESS_LINE = re.compile(r"^([\w -]{1,40}): (\d+)/(\d+)\b")


def fresh_run(runs: str | Path, base: str, taken: set | None = None) -> Path:
    """A run folder in `runs` named `base` (or `base-2`, `base-3`, ...) that is neither there nor
    one of the `taken` names (the queued jobs' runs)."""
    name = base
    for n in itertools.count(2):
        if name not in (taken or set()) and not (Path(runs) / name).exists():
            return Path(runs) / name
        name = f"{base}-{n}"


@dataclass
class Job:
    id: int
    kind: str  # train | doctor | export
    argv: list[str]  # after `transferkit`
    title: str
    epochs: int | None = None  # what the epoch lines count to (train)
    train_images: int | None = None  # for images/s
    status: str = "queued"  # queued | running | finished | failed | stopped
    queued_at: float = field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    returncode: int | None = None
    epoch_rows: list[dict] = field(default_factory=list)
    log: deque = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    result: dict | None = None  # what the job left (the run folder, ...)
    _process: subprocess.Popen | None = None
    _stop: bool = False

    @property
    def command(self) -> str:
        return "transferkit " + shlex.join(self.argv)

    def progress(self) -> dict:
        """Epochs done, the last epoch's numbers, images/s and the time left (from the mean epoch)."""
        out: dict = {"epochs": self.epochs, "done": len(self.epoch_rows), "stage": None, "fraction": None}
        lines = [line for line in list(self.log) if line.strip()]
        if lines and self.status == "running":  # what it is doing now: its last line, and how far, where it says
            out["stage"] = lines[-1][:200]
            match = PROGRESS_LINE.match(lines[-1])
            if match and int(match.group(3)):
                out["fraction"] = round(int(match.group(2)) / int(match.group(3)), 3)
        if self.epoch_rows:
            last = self.epoch_rows[-1]
            out.update({k: last[k] for k in ("epoch", "train_loss", "val_loss", "val_acc")})
            mean = sum(r["seconds"] for r in self.epoch_rows) / len(self.epoch_rows)
            if self.train_images:
                out["images_per_s"] = round(self.train_images / max(1e-9, last["seconds"]), 1)
            if self.epochs and self.status == "running":
                out["eta_s"] = round(mean * max(0, self.epochs - len(self.epoch_rows)), 1)
        return out

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "title": self.title, "command": self.command,
                "status": self.status, "queued_at": self.queued_at, "started_at": self.started_at,
                "ended_at": self.ended_at, "returncode": self.returncode, "progress": self.progress(),
                "epoch_rows": self.epoch_rows, "log": list(self.log)[-40:], "result": self.result}


class JobQueue:
    """Jobs run one after another on a thread of the queue's own; each in its own process."""

    def __init__(self, env: dict | None = None):
        import os

        # a progress line a second from the commands (their bars on the page), else the given environment
        self.env = {**(env if env is not None else os.environ), "TRANSFERKIT_PROGRESS_SECONDS": "1"}
        self.jobs: list[Job] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="transferkit-studio-jobs", daemon=True)
        self._thread.start()

    def submit(self, kind: str, argv: list[str], title: str, **extra) -> Job:
        job = Job(next(self._ids), kind, argv, title, **extra)
        with self._lock:
            self.jobs.append(job)
        self._wake.set()
        return job

    def get(self, job_id: int) -> Job | None:
        return next((j for j in self.jobs if j.id == job_id), None)

    def stop(self, job: Job) -> None:
        """A queued job is taken off the queue; a running one gets SIGINT (its clean stop)."""
        with self._lock:
            job._stop = True
            if job.status == "queued":
                job.status, job.ended_at = "stopped", time.time()
            elif job.status == "running" and job._process is not None and job._process.poll() is None:
                job._process.send_signal(signal.SIGINT)

    def close(self) -> None:
        """Stop everything (the server is shutting down): no process outlives the studio."""
        self._closed = True
        for job in self.jobs:
            if job.status in ("queued", "running"):
                self.stop(job)
        for job in self.jobs:
            if job._process is not None:
                try:
                    job._process.wait(20)
                except subprocess.TimeoutExpired:
                    job._process.kill()
        self._wake.set()

    def _next(self) -> Job | None:
        with self._lock:
            return next((j for j in self.jobs if j.status == "queued"), None)

    def _work(self) -> None:
        while not self._closed:
            job = self._next()
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        from ..processes import die_with_parent

        with self._lock:
            if job.status != "queued":
                return
            job.status, job.started_at = "running", time.time()
            try:
                job._process = subprocess.Popen(
                    [sys.executable, "-m", "transferkit", *job.argv], stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, text=True, errors="replace", env=self.env, bufsize=1,
                    preexec_fn=die_with_parent)  # the studio gone (even killed): its jobs go too
            except OSError as exc:
                job.status, job.ended_at = "failed", time.time()
                job.log.append(f"error: could not start: {exc}")
                return
        for line in job._process.stdout:
            line = line.rstrip("\n")
            job.log.append(line)
            match = EPOCH_LINE.match(line)
            if match:
                epoch, tl, ta, vl, va, secs = match.groups()
                job.epoch_rows.append({"epoch": int(epoch), "train_loss": float(tl), "train_acc": float(ta),
                                       "val_loss": float(vl), "val_acc": float(va), "seconds": float(secs)})
        job.returncode = job._process.wait()
        job.ended_at = time.time()
        job.status = "finished" if job.returncode == 0 else "stopped" if job._stop else "failed"


class Servers:
    """`transferkit serve RUN` processes started from the page, one per run, on a free loopback
    port; stopped from the page or when the studio stops.

    The processes are started from one thread of this object's own that lives as long as it: the
    kernel's parent-death signal (`die_with_parent`) follows the *thread* that forked, and the web
    server's request threads end when idle, which took a served model down seconds after it started.
    Starts are one at a time: two clicks on "Serve" give one server."""

    def __init__(self, env: dict | None = None):
        from concurrent.futures import ThreadPoolExecutor

        self.env = env
        self._running: dict[str, tuple[subprocess.Popen, str]] = {}
        self._lock = threading.Lock()
        self._starting = threading.Lock()
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="transferkit-studio-servers")

    def url(self, name: str) -> str | None:
        with self._lock:
            entry = self._running.get(name)
            if entry is not None and entry[0].poll() is not None:
                self._running.pop(name)
                return None
            return entry[1] if entry else None

    def start(self, name: str, run_dir, timeout: float = 120.0) -> str:
        """Start serving `run_dir` (if it is not already) and return its address, once it answers."""
        from ..processes import die_with_parent

        with self._starting:
            found = self.url(name)
            if found:
                return found
            proc = self._spawner.submit(
                subprocess.Popen, [sys.executable, "-m", "transferkit", "serve", str(run_dir), "--port", "0"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace", env=self.env,
                preexec_fn=die_with_parent).result()
            return self._wait_for(name, proc, timeout)

    def _wait_for(self, name: str, proc: subprocess.Popen, timeout: float) -> str:
        """The address `proc` serves at once it says so; a UserError with its last line if it ends."""
        from ..errors import UserError

        deadline, lines = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line.strip())
            match = re.search(r"at (http://\S+/)", line)
            if line.startswith("serving ") and match:
                threading.Thread(target=_drain, args=(proc.stderr,), daemon=True).start()
                with self._lock:
                    self._running[name] = (proc, match.group(1))
                return match.group(1)
        proc.kill()
        raise UserError(f"the server did not start: {[x for x in lines if x][-1:] or 'no output'}")

    def stop(self, name: str) -> bool:
        with self._lock:
            entry = self._running.pop(name, None)
        if entry is None:
            return False
        entry[0].send_signal(signal.SIGINT)
        try:
            entry[0].wait(15)
        except subprocess.TimeoutExpired:
            entry[0].kill()
        return True

    def close(self) -> None:
        for name in list(self._running):
            self.stop(name)
        self._spawner.shutdown(wait=False)


def _drain(stream) -> None:
    for _ in stream:  # the server's request log: read so that it never blocks on a full pipe
        pass
