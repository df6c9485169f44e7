"""The export formats: each one module in `formats/` that registers an `ExportFormat`. No torch
here: the CLI's --format help is read from this registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import UserError
from ..registry import Registry


@dataclass(frozen=True)
class ExportFormat:
    """One export format: the file it writes, how to build it and how to run it for the check."""

    name: str
    file: str  # its file name in the export folder
    summary: str  # one line for --help
    build: Callable  # (exporter.ExportJob, path) -> a note for export.json, or None
    runner: Callable  # path -> (float32 NCHW batch -> logits), to check the artifact; None: not on this OS
    needs: tuple[str, ...] = ()  # formats it is made from (built first)
    order: int = 100
    in_all: bool = True  # part of --formats all (False: an optional extra's, built when named)
    check: Callable | None = None  # () -> None, or a UserError naming the extra it needs: before any work
    # (path, metadata) -> what was checked, or a UserError: the check of an artifact this machine
    # cannot run (its `runner` gives None here), by its structure; the accuracy gate runs where it can
    inspect: Callable | None = None


FORMATS: Registry[ExportFormat] = Registry("export format", package=f"{__package__}.formats",
                                           sort_key=lambda f: (f.order, f.name))
register = FORMATS.register


def parse_formats(value: str) -> list[str]:
    """"all" or comma-separated names -> the formats to build, in order, with what they need."""
    if value == "all":
        names = [f.name for f in FORMATS if f.in_all]
    else:
        names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise UserError(f"--formats {value}: choose from {', '.join(FORMATS.names())} or all (comma-separated)")
    wanted = set(names)
    for name in names:
        wanted.update(FORMATS.get(name).needs)
    return [n for n in FORMATS.names() if n in wanted]


def help_text() -> str:
    return "; ".join(f"{f.name}: {f.summary}" + ("" if f.in_all else " (when named: not in all)") for f in FORMATS)
