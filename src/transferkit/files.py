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
    tmp = str(path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}{TEMP_SUFFIX}")
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


TEMP_SUFFIX = ".tmp"  # atomic_stream's temporary files: .<name>.<pid>-<random>.tmp


def sweep_temporary(folder: str | Path, older_than: float = 60.0, any_after: float = 86400.0) -> tuple[int, int]:
    """Remove the temporary files that `atomic_stream` left in `folder` (recursively) when its
    process was killed: those whose process is gone and that are `older_than` seconds, and any
    older than `any_after` (a process on another machine sharing the folder). Returns (files,
    bytes) removed."""
    import re
    import time

    pattern = re.compile(r"^\..+\.(\d+)-[0-9a-f]{12}" + re.escape(TEMP_SUFFIX) + "$")
    now, removed, size = time.time(), 0, 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            match = pattern.match(name)
            if not match:
                continue
            path = os.path.join(dirpath, name)
            try:
                info = os.lstat(path)
                age = now - info.st_mtime
                if age > any_after or age > older_than and not _alive(int(match.group(1))):
                    os.unlink(path)
                    removed, size = removed + 1, size + info.st_size
            except OSError:
                continue
    return removed, size


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


@contextlib.contextmanager
def locked(path: str | Path):
    """An exclusive lock on `path` (made if missing) between processes, where the OS has flock
    (elsewhere the block runs unlocked)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        try:
            import fcntl
        except ImportError:  # (Windows)
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def text_bytes(text: str) -> bytes:
    """Text as transferkit writes it to a file: UTF-8, where a file name that is not valid UTF-8
    (held by Python as surrogates) is written back as its own bytes, so it can be read back
    (`TEXT_ERRORS`) and still names the file."""
    return text.encode("utf-8", TEXT_ERRORS)


TEXT_ERRORS = "surrogateescape"  # how transferkit writes and reads its own text files


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


# -- reading back the files transferkit (or a user) left: one bounded, typed reader -------------
#
# Every file read back (a run's results.json, config.yaml, doctor.json, export.json, a cache
# record, a --config file) goes through `read_text`: a regular file only (a FIFO or a device
# never blocks a command), at most `limit` bytes, decoded as UTF-8 (a BOM allowed). Parsed
# documents are checked for depth and size (a nested or aliased document is refused, not a
# RecursionError or a billion entries), and come back as `Record`s: mappings whose typed getters
# give None (or the default) for a value of the wrong type, so a damaged file never takes a
# command down.

RECORD_LIMIT = 64 << 20  # bytes of a JSON/YAML file read back
RECORD_DEPTH = 64  # nesting of a document read back
RECORD_NODES = 5_000_000  # values in a document read back (YAML aliases counted each time)


class DamagedFile(ValueError):
    """A file read back that is not what it should be (the message says why, without the path)."""


def read_text(path: str | Path, limit: int = RECORD_LIMIT, errors: str = "strict") -> str:
    """The text of the regular file `path`: OSError where it cannot be opened, DamagedFile where
    it is not a regular file, larger than `limit` bytes or not UTF-8 (`errors`: as `bytes.decode`
    takes it; TEXT_ERRORS reads file names that are not UTF-8 back as their own bytes)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once instead of waiting for a writer
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise DamagedFile("is not a regular file")
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise DamagedFile(f"is larger than {limit >> 20} MiB")
    try:
        return raw.decode("utf-8-sig", errors)
    except UnicodeDecodeError:
        raise DamagedFile("is not UTF-8 text") from None


def user_text(path: str | Path, what: str, limit: int = RECORD_LIMIT, errors: str = TEXT_ERRORS) -> str:
    """`read_text` of a file the user named (an exclude list, a fixes file, a label table), its
    faults a UserError of one line (`what`: the option and the file, e.g. "--fixes a.csv")."""
    try:
        return read_text(Path(path).expanduser(), limit, errors)
    except OSError as exc:
        raise UserError(f"{what}: {exc.strerror or exc}") from None
    except DamagedFile as exc:
        raise UserError(f"{what} {exc}") from None


def parse_json(text: str | bytes):
    """JSON from someone else (a file, a request), checked as `checked_document`: DamagedFile
    (a ValueError) for anything that is not a reasonable JSON document."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise DamagedFile(f"is nested deeper than {RECORD_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DamagedFile(f"is not JSON ({str(exc).splitlines()[0][:80]})") from None
    return checked_document(value)


def checked_document(value, depth: int = RECORD_DEPTH, nodes: int = RECORD_NODES):
    """`value` (parsed JSON or YAML) if it nests at most `depth` levels and holds at most `nodes`
    values, a value shared by YAML aliases counted at each place it stands (as a writer would
    expand it: a "billion laughs" document is refused in the time its few distinct values take);
    else DamagedFile. A document that holds itself is refused too."""
    sizes: dict[int, tuple[int, int]] = {}  # id of a container -> (values, levels) it expands to
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        item, finished = stack.pop()
        if not isinstance(item, (dict, list, tuple)):
            continue
        key = id(item)
        children = list(item.values()) + [k for k in item if isinstance(k, tuple)] if isinstance(item, dict) \
            else item
        if finished:
            on_path.discard(key)
            inner = [sizes.get(id(c), (1, 0)) for c in children]
            size = (1 + sum(n for n, _ in inner), 1 + max((h for _, h in inner), default=0))
            if size[0] > nodes:
                raise DamagedFile(f"holds more than {nodes} values")
            if size[1] > depth:
                raise DamagedFile(f"is nested deeper than {depth} levels")
            sizes[key] = size
        elif key in on_path:
            raise DamagedFile("holds itself")
        elif key not in sizes:
            if len(on_path) >= depth:
                raise DamagedFile(f"is nested deeper than {depth} levels")
            on_path.add(key)
            stack.append((item, True))
            stack.extend((c, False) for c in children)
    return value


class Record(dict):
    """A mapping read back from a file, with typed getters: each gives `default` where the key is
    missing or its value is not of the type asked for."""

    def number(self, key, default=None) -> float | None:
        value = self.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
            and value not in (float("inf"), float("-inf"))
        return float(value) if ok else default

    def integer(self, key, default=None) -> int | None:
        value = self.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else default

    def text(self, key, default=None) -> str | None:
        value = self.get(key)
        return value if isinstance(value, str) else default

    def record(self, key) -> "Record":
        """The mapping at `key` ({} where it is none)."""
        value = self.get(key)
        return Record(value) if isinstance(value, dict) else Record()

    def items_of(self, key, kind=None) -> list:
        """The list at `key` ([] where it is none), less the items that are not `kind` (a type or
        tuple of types; dicts come back as Records)."""
        value = self.get(key)
        if not isinstance(value, list):
            return []
        out = [v for v in value if kind is None or isinstance(v, kind)]
        return [Record(v) if isinstance(v, dict) else v for v in out]

    def texts(self, key) -> list[str]:
        return self.items_of(key, str)


def load_json_object(path: str | Path, limit: int = RECORD_LIMIT) -> Record:
    """The JSON mapping in `path` as a Record; OSError, or DamagedFile saying what is wrong."""
    value = parse_json(read_text(path, limit))
    if not isinstance(value, dict):
        raise DamagedFile("is not a JSON object")
    return Record(value)


def load_yaml_object(path: str | Path, limit: int = RECORD_LIMIT) -> Record:
    """As `load_json_object`, for a YAML mapping (empty: {})."""
    import yaml

    text = read_text(path, limit)
    try:
        value = yaml.safe_load(text)
    except RecursionError:
        raise DamagedFile(f"is nested deeper than {RECORD_DEPTH} levels") from None
    except yaml.YAMLError as exc:
        raise DamagedFile(f"is not YAML ({str(exc).splitlines()[0][:80]})") from None
    value = {} if value is None else checked_document(value)
    if not isinstance(value, dict):
        raise DamagedFile("is not a YAML mapping")
    return Record(value)


def read_json_object(path: str | Path, limit: int = RECORD_LIMIT) -> Record | None:
    """The JSON object (a mapping) in `path`, as a Record; None where the file is missing,
    unreadable, not a regular file, too large, too deep, not JSON or not a mapping (a run folder's
    own files, read for display: never an error)."""
    try:
        return load_json_object(path, limit)
    except (OSError, ValueError):
        return None


def read_yaml_object(path: str | Path, limit: int = RECORD_LIMIT) -> Record | None:
    """As `read_json_object`, for a YAML mapping (a run's config.yaml)."""
    try:
        return load_yaml_object(path, limit)
    except (OSError, ValueError):
        return None


def user_json_object(path: str | Path, what: str) -> Record:
    """As `load_json_object`, for a file a command needs: its faults a UserError of one line
    (`what`: how the user knows the file, e.g. "the run's split.json")."""
    try:
        return load_json_object(path)
    except FileNotFoundError:
        raise UserError(f"{what} {shown(path)} is missing") from None
    except OSError as exc:
        raise UserError(f"{what} {shown(path)} cannot be read: {exc.strerror or exc}") from None
    except DamagedFile as exc:
        raise UserError(f"{what} {shown(path)} {exc}") from None


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


def csv_rows(text: str, where: str, delimiter: str = ",", comments: bool = False):
    """(line number, cells) of each row of the CSV `text` that is not blank (nor, with
    `comments`, a line starting with #), read as the CSV it is: quoted cells over several lines,
    CRLF. A row the csv module cannot read (a quote opened and never closed, a cell over its 128 KB)
    is a UserError naming its line (`where`: how the user knows the file), never rows swallowed."""
    import csv
    import io
    import re

    lines = re.split(r"\r\n|\r|\n", text)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True, delimiter=delimiter)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise UserError(f"{where}, line {start}: {exc} (a quote opened and not closed, or a cell too long)") \
                from None
        first, start = start, reader.line_num + 1
        if not any(c.strip() for c in row) or comments and lines[first - 1].startswith("#"):
            continue
        yield first, row


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
