"""How much the decoded-image store may hold (--cache-limit) and the least recently used entries
evicted past it. No torch."""

from __future__ import annotations

import os
from pathlib import Path

from .. import files
from ..errors import UserError


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
def parse_size(text: str | int | None) -> int | None | str:
    """A size as --cache-limit takes it: bytes (an int), None for "none" (unbounded), "auto"."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    raw = str(text).strip().lower().replace(" ", "")
    if raw in ("auto", "none"):
        return None if raw == "none" else "auto"
    number = raw.rstrip("kmgtib")
    unit = raw[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or not value >= 0 or value == float("inf"):
        raise UserError(f"--cache-limit {text}: give a size such as 50GB, 800MiB or 0, or auto or none")
    size = value * _UNITS[unit]
    if not size < 2**63:  # (1e300GB: more than any disk, and no int64)
        raise UserError(f"--cache-limit {text}: more than any disk holds; give none for no limit")
    return int(size)


AUTO_LIMIT_MAX = 64 * 10**9  # --cache-limit auto: half of what is free (with what the cache holds), at most this


class SizeLimit:
    """The most bytes the files under `root` may take (`ArrayCache`'s decoded images, every
    resolution together), kept by evicting the least recently used: a read marks a file used (its
    modification time), and once what this process estimates (the last count plus what it wrote
    since) would pass the limit, the files are counted again under a lock and the oldest removed
    until they take at most LOW_WATER of it; evicting to below the limit makes the counts rare (one
    per tenth of the limit written). Other processes' writes since a count are not seen until the
    next one: P processes writing at once can pass the limit by up to (P - 1) tenths of it."""

    LOW_WATER = 0.9

    def __init__(self, root: Path, limit: int | str):
        """`limit`: bytes, or "auto": half the space the files could have (free on their disk plus
        what they hold), at most AUTO_LIMIT_MAX, known from the first count (`enforce`)."""
        self.root = Path(root)
        self.auto = limit == "auto"
        self.limit: int | None = None if self.auto else int(limit)
        self._estimate: int | None = None
        self.evicted = 0  # files evicted by this process

    def wrote(self, size: int) -> None:
        """Called before `size` bytes are added: evict first if they would pass the limit."""
        if self._estimate is None or self._estimate + size > self.limit:
            self._estimate = self.enforce(size)
        self._estimate += size

    def entries(self) -> list[tuple[float, int, str]]:
        """(last used, bytes, path) of every entry (temporary files of writes in flight left out)."""
        found = []
        for top in (os.scandir(self.root) if self.root.is_dir() else ()):
            for sub in (os.scandir(top.path) if top.is_dir() else ()):
                for entry in (os.scandir(sub.path) if sub.is_dir() else ()):
                    if entry.name.startswith("."):
                        continue
                    try:
                        st = entry.stat()
                    except OSError:  # evicted by another process meanwhile
                        continue
                    found.append((st.st_mtime, st.st_size, entry.path))
        return found

    def enforce(self, incoming: int = 0) -> int:
        """Count the entries; if they and `incoming` bytes pass the limit, evict the least recently
        used down to LOW_WATER of it. Returns the bytes left."""
        with files.locked(self.root / ".evict.lock"):
            found = self.entries()
            total = sum(size for _, size, _ in found)
            if self.limit is None:  # "auto", on the first count
                import shutil

                self.limit = int(min(AUTO_LIMIT_MAX, (shutil.disk_usage(self.root).free + total) // 2))
            if total + incoming <= self.limit:
                return total
            target = max(0, int(self.limit * self.LOW_WATER) - incoming)
            for _, size, path in sorted(found):
                if total <= target:
                    break
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                total -= size
                self.evicted += 1
            return total


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
