"""Restarts under torchrun (`--max-restarts`): the restarted group continues the run from its
last checkpoint instead of starting a new one.

torchrun restarts every worker of the group, with the same command line, when one of them fails
(a killed process, a lost node). The restarted primary finds the run folder (--out, or the folder
it recorded at its first start, named by the torchrun job) and continues from its checkpoint.pt
as `--resume` would; the checkpoint goes to every rank over the process group.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
from pathlib import Path

from ..config import TrainConfig
from ..distributed import Group
from ..files import atomic_write
from .checkpoint import load_checkpoint

RESTARTS = "TORCHELASTIC_RESTART_COUNT"  # set by torchrun: 0 at the first start, then 1, 2, ...
RUN_ID = "TORCHELASTIC_RUN_ID"


def restarted(cfg: TrainConfig, checkpoint: dict | None, group: Group) -> tuple[TrainConfig, dict | None]:
    """`cfg` and the checkpoint to continue from: after a torchrun restart, the interrupted run's
    folder and checkpoint (if it wrote one yet); otherwise as given."""
    if checkpoint is not None or int(os.environ.get(RESTARTS, "0")) == 0:
        return cfg, checkpoint
    found = group.decide(lambda: _interrupted(cfg))
    if found is None:
        return cfg, None
    run_dir, checkpoint = found
    resume = str(run_dir) if checkpoint is not None else None
    return dataclasses.replace(cfg, out=str(run_dir), resume=resume), checkpoint


def _interrupted(cfg: TrainConfig) -> tuple[Path, dict | None] | None:
    run_dir = Path(cfg.out).expanduser() if cfg.out else _recorded(cfg)
    if run_dir is None or not run_dir.is_dir():
        return None
    ckpt = run_dir / "checkpoint.pt"
    return run_dir, load_checkpoint(ckpt) if ckpt.is_file() else None


def started(cfg: TrainConfig, run_dir: Path) -> None:
    """Record the run folder of a torchrun job without --out, for its restarts."""
    pointer = _pointer(cfg)
    if pointer is not None:
        atomic_write(pointer, str(run_dir.absolute()).encode())


def finished(cfg: TrainConfig) -> None:
    pointer = _pointer(cfg)
    if pointer is not None:
        pointer.unlink(missing_ok=True)


def _recorded(cfg: TrainConfig) -> Path | None:
    pointer = _pointer(cfg)
    try:
        return Path(pointer.read_text()) if pointer is not None else None
    except OSError:
        return None


def _pointer(cfg: TrainConfig) -> Path | None:
    """Where a torchrun job's run folder is recorded: in the runs folder, named by the job (its
    run id, this node and the torchrun agent that restarts it) and its options."""
    if cfg.out or RUN_ID not in os.environ:
        return None
    ident = {"job": os.environ[RUN_ID], "node": [socket.gethostname(), os.getppid()],
             "options": {k: v for k, v in cfg.to_dict().items() if k not in ("out", "resume")}}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(cfg.runs_dir).expanduser() / f".transferkit-elastic-{key}"
