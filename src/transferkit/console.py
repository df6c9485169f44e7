"""Where messages go: results to stdout, warnings and progress to stderr. No torch here."""

from __future__ import annotations

import os
import sys
import time


class Console:
    """Messages of a command or an API call. `quiet`: warnings and errors only (no results, no
    progress); `warnings=False` too: errors only (the ranks of a group other than the primary).
    `info_stream`: where results go instead of stdout (a command whose stdout is its CSV)."""

    def __init__(self, quiet: bool = False, warnings: bool = True, info_stream=None):
        self.quiet, self.warnings, self.info_stream = quiet, warnings, info_stream

    def info(self, msg: str) -> None:
        if not self.quiet:
            print(printable(msg), file=self.info_stream or sys.stdout, flush=True)

    def warn(self, msg: str) -> None:
        if self.warnings:
            print(f"warning: {printable(msg, lines=False)}", file=sys.stderr, flush=True)

    def progress(self, total: int, desc: str):
        """Progress of long work on stderr: a tqdm bar on a terminal; elsewhere (a log file, CI)
        a line every few seconds; nothing when quiet."""
        if self.quiet:
            return LogProgress(total, desc, every=None)
        if sys.stderr.isatty():
            from tqdm import tqdm

            return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)
        return LogProgress(total, desc)


def printable(msg: str, lines: bool = True) -> str:
    """`msg` with the control characters of any user's text in it (file names, class names,
    paths) escaped (`files.shown`): a terminal escape sequence is shown, not obeyed. `lines`:
    its line breaks kept (a table); otherwise (a warning or an error: one line) escaped too, so
    that a CR or LF inside a name cannot forge a line of its own."""
    from .files import shown

    return "\n".join(shown(line) for line in str(msg).split("\n")) if lines else shown(msg)


class LogProgress:
    """A progress bar for a log: one line every `every` seconds while work goes on (None: silent),
    and a closing line if any was written."""

    def __init__(self, total: int, desc: str, every: float | None = 5.0):
        if every is not None:  # (the studio asks its jobs for a line a second: TRANSFERKIT_PROGRESS_SECONDS)
            try:
                every = max(0.2, float(os.environ.get("TRANSFERKIT_PROGRESS_SECONDS", every)))
            except ValueError:
                pass
        self.total, self.desc, self.every = total, desc, every
        self.n, self.start, self.last, self.postfix, self.lines = 0, time.monotonic(), time.monotonic(), "", 0

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.every is not None and time.monotonic() - self.last >= self.every:
            self._line()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def _line(self) -> None:
        self.last, self.lines = time.monotonic(), self.lines + 1
        extra = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc}: {self.n}/{self.total}{extra}, {self.last - self.start:.0f} s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.lines:
            self._line()
