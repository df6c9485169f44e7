"""Writing files safely: atomic writes, checksummed blobs, JSON, and output folders that never
take over a folder of the user's. No torch here.

Every file transferkit writes goes through `atomic_write` (a temporary file beside the target,
then a rename), so a crash or a full disk never leaves a half-written file under the real name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from .errors import UserError

DIGEST_BYTES = 16  # blake2b digest appended to every checksummed blob


def atomic_write(path: str | Path, data: bytes, fsync: bool = True) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`.

    `fsync=False` skips the flush to disk: for cache entries, which are checksummed and simply
    recomputed if a crash loses them (one fsync per feature vector would dominate a cold run)."""
    with atomic_stream(path, "wb", fsync) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_stream(path: str | Path, mode: str = "wb", fsync: bool = True, **open_args):
    """A file to write to bit by bit (`open` `mode` and `open_args`), a temporary one beside
    `path`, renamed over `path` once the block ends without error and removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
    # mode 0o666 less the umask, as for any file the user's programs write (mkstemp's 0600 made
    # run files unreadable to the user's group where everything else was not)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **open_args) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def text_bytes(text: str) -> bytes:
    """Text as transferkit writes it to a file: UTF-8, where a file name that is not valid UTF-8
    (held by Python as surrogates) is written back as its own bytes, so it can be read back
    (`TEXT_ERRORS`) and still names the file."""
    return text.encode("utf-8", TEXT_ERRORS)


TEXT_ERRORS = "surrogateescape"  # how transferkit writes and reads its own text files


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json_object(path: str | Path) -> dict | None:
    """The JSON object (a mapping) in `path`; None where the file is missing, unreadable, not JSON
    or not a mapping (a run folder's own files, read for display: never an error)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_yaml_object(path: str | Path) -> dict | None:
    """As `read_json_object`, for a YAML mapping (a run's config.yaml)."""
    import yaml

    try:
        value = yaml.safe_load(Path(path).read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return value if isinstance(value, dict) else None


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


def write_checked(path: str | Path, magic: bytes, body: bytes, fsync: bool = False) -> None:
    """A checksummed blob: `magic` (4 bytes), `body`, then the digest of both, written atomically."""
    payload = magic + body
    atomic_write(path, payload + digest(payload), fsync=fsync)


def read_checked(path: str | Path, magic: bytes) -> bytes | None:
    """The body of a blob written by `write_checked`; None when the file is missing. A file that is
    short, carries another magic or fails its checksum raises `CorruptBlob`."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    if len(raw) < len(magic) + DIGEST_BYTES or raw[:len(magic)] != magic \
            or digest(raw[:-DIGEST_BYTES]) != raw[-DIGEST_BYTES:]:
        raise CorruptBlob(str(path))
    return raw[len(magic):-DIGEST_BYTES]


class CorruptBlob(Exception):
    """A checksummed file that does not check out (truncated, overwritten, bit flips)."""


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value) -> str:
    """A cell as written to CSV: text that a spreadsheet would run as a formula (a class folder
    named "=HYPERLINK(...)") gets a leading apostrophe, which shows it as the text it is; numbers
    ("-0.5") stay numbers."""
    value = "" if value is None else str(value)
    if not value.startswith(_FORMULA):
        return value
    try:
        float(value)
        return value
    except ValueError:
        return "'" + value


def csv_table(header: list[str] | None, rows) -> str:
    """A CSV document of `rows` under `header` (None: rows only, to append), every cell through
    `csv_text`."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    if header is not None:
        w.writerow(header)
    w.writerows([csv_text(c) for c in row] for row in rows)
    return buf.getvalue()


def csv_untext(value: str) -> str:
    """A text cell as `csv_text` wrote it, read back."""
    return value[1:] if value.startswith("'") and value[1:].startswith(_FORMULA) else value


# -- where a command may write: one rule for every path it writes -----------------------------------
#
# Never inside a dataset the command was given (its files would be taken for images, or replace
# them); never over an existing file that transferkit did not write, unless asked (--force); a
# FIFO or a character device (/dev/stdout, a pipe) is written through, never replaced; a symbolic
# link is followed: its target is written, the link is kept.


def refuse_inside(path: str | Path, data, flag: str) -> None:
    """Raise a UserError when `path` (followed through symbolic links) is, or is inside, one of
    the folders in `data` (the datasets and input folders the command reads)."""
    target = Path(path).expanduser().resolve()
    for root in data:
        folder = Path(root).expanduser().resolve()
        if folder.is_dir() and (target == folder or folder in target.parents):
            raise UserError(f"{flag} {shown(path)} is inside {shown(root)}, which this command reads as data: "
                            "transferkit never writes into your data; give a path outside it")


def check_output_file(path: str | Path, flag: str, data=(), ours: bytes | tuple[bytes, ...] = (),
                      force: bool = False) -> Path:
    """An output file the user named, checked before any long work starts: not inside `data`;
    its folder exists and is writable; if it exists, a FIFO or character device (written
    through) or a regular file that transferkit wrote (it starts with one of `ours`) or that
    `force` allows to replace."""
    path = Path(path).expanduser()
    refuse_inside(path, data, flag)
    target = path.resolve()
    folder = target.parent
    if target.is_dir():
        raise UserError(f"{flag} {shown(path)} is a folder, not a file")
    if not folder.is_dir():
        raise UserError(f"{flag} {shown(path)}: the folder {shown(folder)} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {shown(path)}: the folder {shown(folder)} is not writable")
    if target.exists():
        mode = target.stat().st_mode
        if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            return path
        if not stat.S_ISREG(mode):
            raise UserError(f"{flag} {shown(path)} is neither a file, a FIFO nor a character device")
        if not force and not _starts_with(target, (ours,) if isinstance(ours, bytes) else ours):
            raise UserError(f"{flag} {shown(path)} exists and was not written by transferkit: give another "
                            "name, or --force to replace it")
    return path


def _starts_with(path: Path, heads: tuple[bytes, ...]) -> bool:
    if path.stat().st_size == 0:
        return True  # an empty file holds nothing to lose
    try:
        with open(path, "rb") as f:
            start = f.read(max((len(h) for h in heads), default=0))
    except OSError:
        return False
    return any(h and start.startswith(h) for h in heads)


@contextlib.contextmanager
def output_stream(path: str | Path, mode: str = "w", **open_args):
    """Where `check_output_file` allowed writing: a FIFO or character device written through; a
    file (a symbolic link's target) written atomically (`atomic_stream`)."""
    target = Path(path).expanduser().resolve()
    try:
        if target.exists() and not stat.S_ISREG(target.stat().st_mode):
            with open(target, mode, **open_args) as f:
                yield f
            return
        with atomic_stream(target, mode, **open_args) as f:
            yield f
    except OSError as exc:
        if exc.filename is None:  # a write or flush (a full disk, /dev/full) names no file itself
            exc.filename = str(path)
        raise


def shown(value) -> str:
    """A path, file name or any user's text as it may be printed: control characters (terminal
    escape sequences, CR/LF that would forge a log line) and undecodable bytes escaped."""
    text = os.fsdecode(value) if isinstance(value, (bytes, os.PathLike)) else str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   if ord(c) < 0xD800 or ord(c) > 0xDFFF else f"\\x{ord(c) - 0xDC00:02x}" for c in text)


def claim_out(out: str | Path, markers: tuple[str, ...], kind: str, data=()) -> Path:
    """The folder `--out` names, created if needed: outside `data`; new, empty, or already
    `kind` (holding one of `markers`). A file, or a folder of other files (which would be
    overwritten), is refused."""
    out = Path(out).expanduser()
    refuse_inside(out, data, "--out")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {shown(out)} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not any((out / m).exists() for m in markers):
        raise UserError(f"--out {shown(out)} is not empty and is not {kind}; choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def fresh_dir(base: Path, data=(), flag: str = "the output folder") -> Path:
    """`base`, or base-2, base-3, ...: the first that does not exist yet, created; never inside
    `data` (a default folder under the current directory, when that is a dataset)."""
    refuse_inside(base, data, flag)
    path, n = base, 2
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    path.mkdir(parents=True)
    return path
