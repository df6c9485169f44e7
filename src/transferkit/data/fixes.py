"""A dataset's fixes: images to leave out and images whose label is wrong, decided by a person
(in the studio, or by hand) and kept beside the data, never in it. `train --fixes FILE` honours
them; nothing in DATA is moved, renamed or changed.

The file is CSV (UTF-8), one row per image, sorted by path, so that it diffs well:

    path,action,label,reason,time
    train/roses/123.jpg,exclude,,near copy of train/roses/456.jpg,2026-12-04T02:30:00Z
    val/tulips/9.jpg,relabel,roses,a rose,2026-12-04T02:31:10Z

`path` is relative to DATA (forward slashes); `action` is `exclude`, `relabel` or `keep` (looked at,
not an error: the image stays as it is, and the studio no longer counts it a finding); `label` is the
class a relabelled image belongs to (one of DATA's classes); `reason` and `time` (UTC) say why and
when. Multi-label data: `relabel` gives the image's whole set of labels (several joined by `;`,
LABELS_SEP), and `add-label` / `remove-label` add or remove the labels named (`;`-joined) and keep
the rest; these two are refused for single-label data. Lines starting with `#` are comments. Cells are written as every CSV of transferkit's (a cell
a spreadsheet would run as a formula gets a leading apostrophe, read back without it; a cell
starting with # is quoted); a reason is kept to one line of at most 500 characters. The reader
takes UTF-8 with or without a BOM and CRLF line ends; a row it cannot read (an unclosed quote, a
cell over csv's 128 KB) is an error naming its line, never rows silently swallowed. `doctor --write-exclude` output seeds it (`from_exclude`).
"""

from __future__ import annotations

import csv
import io
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import UserError
from ..files import csv_rows, csv_text, csv_untext, text_bytes, user_text

HEADER = ("path", "action", "label", "reason", "time")
ACTIONS = ("exclude", "relabel", "keep", "add-label", "remove-label")  # keep: looked at, not an error: nothing changes
MULTI_ACTIONS = ("add-label", "remove-label")  # multi-label data only
LABELS_SEP = ";"  # joins several labels in a multi-label fix's label cell
REASON_CHARS = 500  # a reason is kept to one line of at most this many characters
FILE_LIMIT = 256 << 20  # the largest fixes file it reads


def one_line(text: str, limit: int = REASON_CHARS) -> str:
    """`text` as one line (line breaks and other control characters become spaces), at most
    `limit` characters."""
    return " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())[:limit]


@dataclass(frozen=True)
class Fix:
    """One decision about one image (`path`: relative to the dataset's folder, forward slashes)."""

    path: str
    action: str
    label: str = ""
    reason: str = ""
    time: str = ""

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in HEADER}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def relative(path: str | Path, root: str | Path) -> str:
    """`path` (absolute, or relative to `root`) as the file records it: relative to `root`, with
    forward slashes; a path outside `root` is a UserError."""
    root = Path(root).expanduser().absolute()
    p = Path(path).expanduser()
    p = p if p.is_absolute() else root / p
    rel = os.path.relpath(os.path.normpath(p), root)
    if rel == "." or rel.startswith(".." + os.sep) or rel == ".." or os.path.isabs(rel):
        raise UserError(f"{path} is not inside the dataset {root}")
    return Path(rel).as_posix()


def read_fixes(file: str | Path, root: str | Path) -> dict[str, Fix]:
    """{relative path: its fix} from `file`; a bad row is a UserError naming its line."""
    from ..files import shown

    text = user_text(file, f"--fixes {shown(file)}", FILE_LIMIT)  # (a file name that is not UTF-8: its own bytes)
    out: dict[str, Fix] = {}
    header = None
    for number, row in csv_rows(text, f"--fixes {shown(file)}", comments=True):
        where = f"--fixes {shown(file)}, line {number}"
        if header is None:
            header = tuple(h.strip() for h in row[:len(HEADER)])
            if header != HEADER:
                raise UserError(f"{where} must be the header {','.join(HEADER)}")
            continue
        if len(row) < 2:
            raise UserError(f"{where}: a row needs at least a path and an action")
        row = (row + [""] * len(HEADER))[:len(HEADER)]
        fix = Fix(*(csv_untext(v.strip()) for v in row))
        if fix.action not in ACTIONS:
            raise UserError(f"{where}: action must be {', '.join(ACTIONS[:-1])} or {ACTIONS[-1]} (got '{fix.action}')")
        if fix.action in ("relabel", *MULTI_ACTIONS) and not fix.label:
            raise UserError(f"{where}: {fix.action} needs the {'new ' if fix.action == 'relabel' else ''}label")
        try:
            key = relative(fix.path, root)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        out[key] = replace(fix, path=key, reason=one_line(fix.reason))  # a later row about the same image wins
    return out


def write_fixes(file: str | Path, fixes: dict[str, Fix] | list[Fix], root: str | Path | None = None) -> None:
    """Write `fixes` to `file` atomically, sorted by path (with a comment naming the dataset)."""
    from ..files import atomic_write

    items = sorted(fixes.values() if isinstance(fixes, dict) else fixes, key=lambda f: f.path)
    out = io.StringIO()
    if root is not None:
        out.write(f"# transferkit fixes for {Path(root).expanduser().absolute()}: train --fixes {file}\n")
    writer = csv.writer(out, lineterminator="\n")
    quoted = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)  # a path starting with #: not a comment
    writer.writerow(HEADER)
    for fix in items:
        cells = [csv_text(fix.path), fix.action, csv_text(fix.label), csv_text(one_line(fix.reason)),
                 csv_text(fix.time)]
        (quoted if cells[0].startswith("#") else writer).writerow(cells)
    atomic_write(Path(file).expanduser(), text_bytes(out.getvalue()))


def from_exclude(exclude_file: str | Path, root: str | Path, reason: str = "doctor --write-exclude") -> list[Fix]:
    """The paths of an exclude file (`doctor --write-exclude`) inside `root`, as exclude fixes."""
    from .exclude import read_exclude

    stamp = now()
    out = []
    for p in sorted(read_exclude(exclude_file)):
        try:
            out.append(Fix(relative(p, root), "exclude", "", reason, stamp))
        except UserError:
            continue  # another dataset's file
    return out


def split_labels(cell: str) -> list[str]:
    """The labels a multi-label fix's label cell names (split on LABELS_SEP)."""
    return [p.strip() for p in cell.split(LABELS_SEP) if p.strip()]


def labels_of(fix: Fix) -> list[str]:
    """The labels a multi-label fix names."""
    return split_labels(fix.label)


def fixed_set(labels: set, action: str, given: set) -> set:
    """A multi-label image's `labels` once `action` (relabel, add-label or remove-label, naming
    the labels `given`) is applied: what `train --fixes` trains and the studio counts."""
    if action == "relabel":
        return set(given)
    return labels | given if action == "add-label" else labels - given


def apply_fixes(split, fixes: dict[str, Fix], root: str | Path, source: str):
    """`split` (data.discover.DatasetSplit) with the excluded images left out and the relabelled
    ones under their new class (multi-label: their new set, or the labels added or removed),
    recorded in `split.fixes`. A relabel to an unknown class is a UserError, as is add-label or
    remove-label on single-label data."""
    root = Path(root).expanduser().absolute()
    by_path = {str(root / Path(rel)): fix for rel, fix in fixes.items()}
    index = {name: i for i, name in enumerate(split.classes)}
    multi = split.task.multi
    for fix in fixes.values():
        if fix.action in MULTI_ACTIONS and not multi:
            raise UserError(f"--fixes {source}: {fix.path}: {fix.action} is for multi-label data; this dataset has one "
                            "label per image (relabel it)")
        names = labels_of(fix) if multi else [fix.label]
        unknown = [n for n in names if n not in index] if fix.action in ("relabel", *MULTI_ACTIONS) else []
        if unknown:
            how = "relabelled to" if fix.action == "relabel" else f"given ({fix.action}) the label"
            raise UserError(f"--fixes {source}: {fix.path} is {how} '{unknown[0]}', which is not a class of this "
                            f"dataset ({', '.join(split.classes)})")
    seen: set[str] = set()
    excluded = relabelled = 0

    def fixed(samples):
        nonlocal excluded, relabelled
        out = []
        for s in samples:
            fix = by_path.get(s.path)
            if fix is None:
                out.append(s)
                continue
            seen.add(s.path)
            if fix.action == "exclude":
                excluded += 1
            elif multi and fix.action != "keep":
                new = fixed_set(set(s.labels), fix.action, {index[n] for n in labels_of(fix)})
                relabelled += tuple(sorted(new)) != s.labels
                out.append(replace(s, labels=tuple(sorted(new))))
            elif fix.action == "relabel" and index[fix.label] != s.label:
                relabelled += 1
                out.append(replace(s, label=index[fix.label]))
            else:
                out.append(s)
        return out

    train, val = fixed(split.train), fixed(split.val)
    record = {"file": source, "excluded": excluded, "relabelled": relabelled, "not_found": len(by_path) - len(seen)}
    return replace(split, train=train, val=val, fixes=record)
