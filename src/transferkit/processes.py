"""Processes that never outlive the command that started them. No torch here.

Every process transferkit starts (decoding workers, the report worker, torchrun and its
training processes) asks the kernel to end it when its parent dies, SIGKILL included
(`die_with_parent`, Linux's PR_SET_PDEATHSIG), so nothing is left running for nobody.
"""

from __future__ import annotations

import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> None:
    """Have this process sent `sig` when its parent dies. `parent`: the pid it was started by; if
    that one is already gone (it died before this call), the signal is sent now."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig))
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), sig)
