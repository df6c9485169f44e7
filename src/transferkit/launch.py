"""`transferkit train --nproc N`: torchrun, started for the user on this machine.

The same as `torchrun --standalone --nproc-per-node N -m transferkit train ...`, with on a CPU
the cores shared out between the processes (OMP_NUM_THREADS), and torchrun's own log lines kept
out of the user's terminal: a failing process's error is printed by that process, once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading

from .distributed import under_torchrun
from .errors import UserError

# torchrun's logging (glog style: "W1201 15:02:11.123000 4242 torch/distributed/run.py:792] ...").
_TORCHRUN_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ ")


def launch(nproc: int, argv: list[str]) -> int:
    """Run `transferkit` with `argv` less --nproc in `nproc` processes under torchrun; returns its
    exit status."""
    if nproc < 1:
        raise UserError("--nproc must be 1 or more")
    if under_torchrun():
        raise UserError("--nproc launches torchrun itself: under torchrun, drop --nproc")
    args = _without_nproc(argv)
    if nproc == 1:
        from .cli import main

        return main(args)
    import torch

    # torchrun's rendezvous store shared with the workers' process group can hand a restarted
    # group its previous attempt's addresses (pytorch/pytorch#135712; seen here as gloo's
    # "connectFullMesh failed" after a restart): one store each.
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": os.environ.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")}
    if torch.cuda.is_available():
        if nproc > torch.cuda.device_count():
            raise UserError(f"--nproc {nproc}: this machine has {torch.cuda.device_count()} GPU(s), one per process")
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        env.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "transferkit", *args]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace")
    said: set[str] = set()
    relay = threading.Thread(target=_relay, args=(proc.stderr, said), daemon=True)
    relay.start()
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # Ctrl-C reached torchrun and its workers too: let them stop
        code = proc.wait()
    relay.join(timeout=5)
    return 2 if code and said else code  # a user's mistake, as in one process


def _relay(stream, said: set[str]) -> None:
    """Copy the workers' stderr (warnings, progress, errors) to ours, less torchrun's own lines:
    its log lines, its banner, and the report it prints after a worker failed (the worker printed
    its error itself). An error line that several ranks print alike is shown once."""
    report = False
    for line in stream:
        if report:
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


def _without_nproc(argv: list[str]) -> list[str]:
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
