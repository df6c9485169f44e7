"""The exclude list of `train --exclude FILE` (what `doctor --write-exclude` writes): one path a
line, comments and blank lines skipped."""

from __future__ import annotations

from pathlib import Path

from ..files import shown, user_text

LIMIT = 1 << 30  # the largest exclude list read (a path a line: millions of them)


def read_exclude(path: str | Path) -> set[str]:
    """The absolute paths listed in an exclude file (comments and blank lines skipped; a BOM,
    CRLF and names that are not UTF-8 read as they were written)."""
    text = user_text(path, f"--exclude {shown(path)}", LIMIT)
    return {str(Path(line.strip()).expanduser().absolute()) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")}
