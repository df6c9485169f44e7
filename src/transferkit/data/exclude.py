"""The exclude list of `train --exclude FILE` (what `doctor --write-exclude` writes): one path a
line, comments and blank lines skipped."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..files import TEXT_ERRORS


def read_exclude(path: str | Path) -> set[str]:
    """The absolute paths listed in an exclude file (comments and blank lines skipped)."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8", errors=TEXT_ERRORS)
    except OSError as exc:
        raise UserError(f"--exclude {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"--exclude {path} is not a text file of paths") from None
    return {str(Path(line.strip()).expanduser().absolute()) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")}
