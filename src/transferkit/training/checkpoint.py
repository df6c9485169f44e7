"""The per-epoch checkpoint of a network's training: everything `fit` needs to continue."""

from __future__ import annotations

import io
from pathlib import Path

from ..files import atomic_write


def save_checkpoint(path: Path, state: dict) -> None:
    """Write `state` (tensors and plain values) atomically: a crash mid-write keeps the last one."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by `fit` (tensors and plain values only: loaded with weights_only)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
