"""Where messages go: results to stdout, warnings and progress to stderr. No torch here."""

from __future__ import annotations

import sys


class Console:
    """Messages of a command or an API call. `quiet` turns progress bars off."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def info(self, msg: str) -> None:
        print(msg, flush=True)

    def warn(self, msg: str) -> None:
        print(f"warning: {msg}", file=sys.stderr, flush=True)

    def progress(self, total: int, desc: str):
        """A tqdm bar on stderr (shown on a terminal, unless quiet)."""
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, leave=False, disable=True if self.quiet else None,
                    file=sys.stderr, dynamic_ncols=True)
