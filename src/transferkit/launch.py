"""`transferkit train --nproc N`: torchrun, started for the user on this machine.

The same as `torchrun --standalone --nproc-per-node N -m transferkit train ...`, with on a CPU
the cores shared out between the processes (OMP_NUM_THREADS), and torchrun's own log lines kept
out of the user's terminal: a failing process's error is printed by that process, once.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading

from .distributed import under_torchrun
from .machine import usable_cores
from .errors import UserError
from .processes import die_with_parent

# torchrun's logging (glog style: "W1201 15:02:11.123000 4242 torch/distributed/run.py:792] ...").
_TORCHRUN_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ ")


def check_nproc(nproc: int) -> None:
    """One line where --nproc cannot be honoured."""
    if nproc < 1:
        raise UserError("--nproc must be 1 or more")
    if under_torchrun():
        raise UserError("--nproc launches torchrun itself: under torchrun, drop --nproc")


def launch(nproc: int, argv: list[str]) -> int:
    """Run `transferkit` with `argv` less --nproc in `nproc` (2 or more) processes under torchrun;
    returns its exit status. (`cli` runs --nproc 1 in its own process.)"""
    check_nproc(nproc)
    args = without_nproc(argv)

    import torch

    # torchrun's rendezvous store shared with the workers' process group can hand a restarted
    # group its previous attempt's addresses (pytorch/pytorch#135712; seen here as gloo's
    # "connectFullMesh failed" after a restart): one store each.
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": os.environ.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")}
    if torch.cuda.is_available():
        if nproc > torch.cuda.device_count():
            raise UserError(f"--nproc {nproc}: this machine has {torch.cuda.device_count()} GPU(s), one per process")
    else:
        cores = usable_cores()
        if nproc > cores:
            raise UserError(f"--nproc {nproc}: this machine gives this command {cores} CPU core(s); more processes "
                            f"than cores only compete for them (and each holds its own copy of the network): "
                            f"use --nproc {cores} or fewer")
        env.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "transferkit", *args]
    parent = os.getpid()
    # torchrun gets SIGTERM when this process dies, however it dies (and its training processes,
    # each in a session of its own, end with torchrun: `cli.main` has them die with it)
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace",
                            preexec_fn=lambda: die_with_parent(signal.SIGTERM, parent))
    said: set[str] = set()
    stopping = threading.Event()  # a signal was passed on: torchrun's own report of it is not shown
    stopping.by_ctrl_c = False
    relay = threading.Thread(target=_relay, args=(proc.stderr, said, stopping), daemon=True)
    relay.start()
    with _forwarded(proc, stopping):
        code = _wait(proc, stopping)
    relay.join(timeout=5)
    if stopping.is_set():
        print("stopped: the processes of this run were ended (a checkpoint, if one was written, resumes it: "
              "train --resume RUN)", file=sys.stderr)
        return 130 if stopping.by_ctrl_c else 143  # as a process ended by SIGINT / SIGTERM
    return 2 if code and said else code  # a user's mistake, as in one process


STOP_GRACE_S = 30  # after Ctrl-C, how long torchrun may take to stop its processes before SIGKILL


@contextlib.contextmanager
def _forwarded(proc: subprocess.Popen, stopping: threading.Event):
    """SIGTERM and SIGHUP to this process are passed on to torchrun (which stops its processes)
    instead of ending this one first (Ctrl-C: `_wait`)."""
    def forward(signum, frame):
        stopping.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _wait(proc: subprocess.Popen, stopping: threading.Event) -> int:
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:  # Ctrl-C (the terminal sent it to torchrun too; `kill -INT` did not)
            stopping.by_ctrl_c = True
            stopping.set()
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                return proc.wait(timeout=STOP_GRACE_S)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                proc.kill()


def _relay(stream, said: set[str], stopping: threading.Event) -> None:
    """Copy the workers' stderr (warnings, progress, errors) to ours, less torchrun's own lines:
    its log lines, its banner, and the report it prints after a worker failed (the worker printed
    its error itself). An error line that several ranks print alike is shown once. Once a signal
    was passed on (`stopping`), only the workers' own error and interruption lines are shown:
    torchrun's traceback of the signal it was sent is no news to whoever sent it."""
    report = False
    for line in stream:
        if report or (stopping.is_set() and not line.startswith(("error: ", "interrupted"))):
            continue
        if _TORCHRUN_LOG.match(line):
            report = "failed (exitcode" in line
            continue
        if set(line.strip()) == {"*"} or line.startswith("Setting OMP_NUM_THREADS"):
            continue
        if line.startswith("error: "):
            if line in said:
                continue
            said.add(line)
        sys.stderr.write(line)
        sys.stderr.flush()


def without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        out.append(arg)
    return out
