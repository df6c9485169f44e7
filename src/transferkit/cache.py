"""The cache folder: the one owner of its layout and of the keys that name its entries. No torch.

    <root>/features/<model key>/shards/<shard>.dat|.idx   per image: feature vectors ("v<view>"), earlier
                                                          stages' pooled activations ("t<view>", multi-layer),
                                                          why it is unreadable ("err"); the head's
                                                          cross-validation results ("head")
    <root>/features/<model key>/backbone.safetensors      the backbone's prepared weights
    <root>/features/<model key>/datasets/<data key>.json  what a dataset's features take (`cache info`)
    <root>/decoded/<resize>-<interpolation>-d<decoder>/...<key>.img   decoded uint8 images (fine-tuning),
                                                          bounded by --cache-limit (`SizeLimit`, LRU)
    <root>/teacher/<teacher key>/shards/...               distillation: teacher logits per image and epoch
    <root>/datasets/cifar10-<key>/                        CIFAR-10 batches as PNG class folders
    <root>/engines/<network key>.onnx                     a backbone or a run's model converted for ONNX Runtime
    <root>/images/v<version>/shards/...                   an image's content hash and pixel statistics (doctor)
    <root>/reports/v<version>/shards/...                  a run's evaluation and report files, kept by a
                                                          digest of what made them (`evaluation.memo`)

Small entries (a feature vector is 5 KB) live in shards (`ShardedCache`): one data file and one
index per flush, thousands of entries each, so a warm start at a million images opens hundreds
of files, not millions. Decoded images (150-200 KB each, read by DataLoader workers) stay one
file each (`ArrayCache`). Every entry is checksummed (a shard entry by its digest in the
checksummed index, a file by `files.write_checked`): a truncated or corrupted entry is detected
and recomputed, never trusted. Keys carry what the content depends on: a model key the
backbone, weights checksum, preprocessing, precision, timm's version and the decoder's version;
an image key the file's absolute path, size and modification time. A change to any of them
(an edited image, a new decoder) gives a new key, so nothing stale is ever reused.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import secrets
import struct
import threading
import time
from pathlib import Path

import numpy as np

from . import files
from .errors import UserError
from .data.decode import DECODER_VERSION

FORMAT_VERSION = 3  # of the entries' layout; part of every key
_ARRAY, _ERROR = b"TKF1", b"TKE1"
# The Cache Directory Tagging Specification's file (backup tools skip the folder): what marks a
# folder as transferkit's cache, and the only thing `clear` trusts.
MARKER = "CACHEDIR.TAG"
_TAG = ("Signature: 8a477f597d28d172789f06886806bc55\n"
        "# This file marks the transferkit cache (features, decoded images); see `transferkit cache`.\n")
# all that the cache writes ("serving": where conversions lived before "engines", still cleared)
SUBFOLDERS = ("features", "decoded", "teacher", "datasets", "engines", "serving", "images", "thumbnails", "reports")


CACHE_FLAG = "the cache folder (--cache-dir or $TRANSFERKIT_CACHE)"  # how messages name it


def default_dir() -> Path:
    """$TRANSFERKIT_CACHE, else $XDG_CACHE_HOME/transferkit, else ~/.cache/transferkit."""
    env = os.environ.get("TRANSFERKIT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "transferkit"


def image_key(path: str) -> str:
    """Identity of an image file: absolute path, size and modification time."""
    st = os.stat(path)
    ident = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"
    # os.fsencode: a name that is not valid UTF-8 is the file system's bytes again (surrogateescape)
    return hashlib.blake2b(os.fsencode(ident), digest_size=16).hexdigest()


def model_key(backbone: str, weights: str, preprocess: dict, precision: str) -> str:
    """Identity of what turns an image into features (`weights`: `WeightsInfo.identity`)."""
    from importlib.metadata import version

    return _hash({"v": FORMAT_VERSION, "decoder": DECODER_VERSION, "timm": version("timm"), "backbone": backbone,
                  "weights": weights, "pre": preprocess, "precision": precision})


def _hash(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


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


class ArrayCache:
    """Small arrays keyed by (image key, name), one checksummed file each, under `dir`; with
    `limit` (`SizeLimit`) bounded, the least recently used evicted.

    A file that is short, has a wrong header or fails its checksum is counted in `recomputed`
    and treated as missing."""

    def __init__(self, directory: Path, limit: SizeLimit | None = None):
        self.dir = Path(directory)
        self.recomputed = 0
        self.limit = limit

    def _path(self, key: str, name: str) -> Path:
        return self.dir / key[:2] / f"{key}.{name}"

    def _read(self, key: str, name: str, magic: bytes) -> bytes | None:
        path = self._path(key, name)
        try:
            data = files.read_checked(path, magic)
        except files.CorruptBlob:
            self.recomputed += 1
            return None
        if data is not None and self.limit is not None:
            try:
                os.utime(path)  # used now: the last to be evicted
            except OSError:  # evicted meanwhile: what was read is still right
                pass
        return data

    def _write(self, key: str, name: str, magic: bytes, body: bytes) -> None:
        if self.limit is not None:
            if self.limit.limit == 0:
                return
            self.limit.wrote(len(body))
        files.write_checked(self._path(key, name), magic, body)

    def get(self, key: str, name: str) -> np.ndarray | None:
        data = self._read(key, name, _ARRAY)
        if data is None:
            return None
        try:
            dtype_len, ndim = struct.unpack_from("<BB", data)
            dtype = np.dtype(data[2:2 + dtype_len].decode())
            pos = 2 + dtype_len
            shape = struct.unpack_from(f"<{ndim}I", data, pos)
            pos += 4 * ndim
            return np.frombuffer(data, dtype=dtype, offset=pos).reshape(shape)
        except (ValueError, TypeError, struct.error):
            self.recomputed += 1
            return None

    def put(self, key: str, name: str, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr)
        dt = arr.dtype.str.encode()
        header = struct.pack("<BB", len(dt), arr.ndim) + dt + struct.pack(f"<{arr.ndim}I", *arr.shape)
        self._write(key, name, _ARRAY, header + arr.tobytes())

    def get_error(self, key: str) -> str | None:
        data = self._read(key, "err", _ERROR)
        return None if data is None else data.decode("utf-8", "replace")

    def put_error(self, key: str, reason: str) -> None:
        self._write(key, "err", _ERROR, reason.encode("utf-8"))


_INDEX = b"TKI1"
# One row per entry of a shard's data file. Keys are at most 64 characters (image keys are 32 hex
# digits, the head's digests 64), names at most 8 ("v0", "t3", "err", "e12", "fitp").
_ROW = np.dtype([("key", "S64"), ("name", "S8"), ("kind", "u1"), ("ndim", "u1"), ("dtype", "S4"),
                 ("shape", "<u4", (4,)), ("offset", "<u8"), ("length", "<u8"), ("digest", "<u8")])
_KIND_ARRAY, _KIND_ERROR = 0, 1


class ShardedCache:
    """Small arrays keyed by (key, name), like `ArrayCache`, stored in shards under `dir/shards`:
    entries put are held in memory and written by `flush` (or once FLUSH_BYTES are pending) as one
    data file and one index, the data first, each written atomically under a name no other process
    uses. So two runs at once never write the same file; a reader sees an index only once its data
    is complete; a warm run reads a few indexes and then the entries it needs.

    Each entry's digest is in its shard's checksummed index: an entry that does not check out
    (bit flips, a truncated data file) is counted in `recomputed` and treated as missing. An
    image that changes gets a new key (`image_key`), so its stale entries are simply never read
    again. Where two shards hold one entry, the newer wins. Thread-safe."""

    FLUSH_BYTES = 64 << 20

    def __init__(self, directory: Path):
        self.dir = Path(directory) / "shards"
        self.recomputed = 0
        self._lock = threading.RLock()
        self._index: dict[tuple[bytes, bytes], tuple[int, int]] | None = None
        self._rows: list[np.ndarray] = []  # per shard loaded: its index rows
        self._data: list[Path] = []  # per shard loaded: its data file
        self._open: dict[int, mmap.mmap] = {}  # shard -> its data file, mapped
        self._pending: dict[tuple[bytes, bytes], tuple[int, np.ndarray]] = {}
        self._pending_bytes = 0

    # -- reading ---------------------------------------------------------------------------------
    def _load(self) -> dict:
        if self._index is None:
            self._index = {}
            for idx in sorted(self.dir.glob("*.idx")) if self.dir.is_dir() else ():
                self._add_shard(idx)
        return self._index

    def _add_shard(self, idx: Path, rows: np.ndarray | None = None) -> None:
        if rows is None:
            try:
                body = files.read_checked(idx, _INDEX)
            except files.CorruptBlob:
                self.recomputed += 1
                return
            if body is None or len(body) % _ROW.itemsize:
                return
            rows = np.frombuffer(body, dtype=_ROW)
        shard = len(self._rows)
        self._rows.append(rows)
        self._data.append(idx.with_suffix(".dat"))
        self._index.update(zip(zip(rows["key"].tolist(), rows["name"].tolist()), zip([shard] * len(rows),
                                                                                    range(len(rows)))))

    def _entry(self, key: str, name: str, kind: int) -> np.ndarray | None:
        ident = (key.encode(), name.encode())
        with self._lock:
            if ident in self._pending:
                k, arr = self._pending[ident]
                return arr if k == kind else None
            where = self._load().get(ident)
            if where is None:
                return None
            shard, r = where
            row = self._rows[shard][r]
            if row["kind"] != kind:
                return None
            try:
                data = self._open.get(shard)
                if data is None:  # mapped, not read: a run reads only the entries it needs
                    with open(self._data[shard], "rb") as f:
                        data = self._open[shard] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                start = int(row["offset"])
                raw = data[start:start + int(row["length"])]
            except (OSError, ValueError):  # the data file went away (`cache clear` meanwhile), or is empty
                raw = b""
        if len(raw) != int(row["length"]) or _digest8(raw) != int(row["digest"]):
            with self._lock:
                self.recomputed += 1
                self._index.pop(ident, None)
            return None
        if kind == _KIND_ERROR:
            return np.frombuffer(raw, dtype=np.uint8)
        shape = tuple(int(d) for d in row["shape"][:row["ndim"]])
        return np.frombuffer(raw, dtype=np.dtype(row["dtype"].decode())).reshape(shape)

    def get(self, key: str, name: str) -> np.ndarray | None:
        return self._entry(key, name, _KIND_ARRAY)

    def get_error(self, key: str) -> str | None:
        data = self._entry(key, "err", _KIND_ERROR)
        return None if data is None else data.tobytes().decode("utf-8", "replace")

    # -- writing ---------------------------------------------------------------------------------
    def put(self, key: str, name: str, arr: np.ndarray) -> None:
        self._put(key, name, _KIND_ARRAY, np.ascontiguousarray(arr))

    def put_error(self, key: str, reason: str) -> None:
        self._put(key, "err", _KIND_ERROR, np.frombuffer(reason.encode("utf-8"), dtype=np.uint8))

    def _put(self, key: str, name: str, kind: int, arr: np.ndarray) -> None:
        if len(key) > 64 or len(name) > 8 or arr.ndim > 4:
            raise ValueError(f"cache entry {key}.{name} {arr.shape}: key, name or rank too long for a shard")
        with self._lock:
            self._pending[(key.encode(), name.encode())] = (kind, arr)
            self._pending_bytes += arr.nbytes
            if self._pending_bytes >= self.FLUSH_BYTES:
                self.flush()

    def flush(self) -> None:
        """Write the entries put since the last flush as one shard (nothing if there are none)."""
        with self._lock:
            if not self._pending:
                return
            rows = np.zeros(len(self._pending), dtype=_ROW)
            chunks, offset = [], 0
            for r, ((key, name), (kind, arr)) in enumerate(self._pending.items()):
                raw = arr.tobytes()
                rows[r] = (key, name, kind, arr.ndim, arr.dtype.str.encode(), tuple(arr.shape) + (0,) * (4 - arr.ndim),
                           offset, len(raw), _digest8(raw))
                chunks.append(raw)
                offset += len(raw)
            name = f"{time.time_ns():016x}-{os.getpid()}-{secrets.token_hex(4)}"
            files.atomic_write(self.dir / f"{name}.dat", b"".join(chunks), fsync=False)
            files.write_checked(self.dir / f"{name}.idx", _INDEX, rows.tobytes())
            self._pending.clear()
            self._pending_bytes = 0
            if self._index is not None:
                self._add_shard(self.dir / f"{name}.idx", rows)


    # -- what it holds ---------------------------------------------------------------------------
    def entry_bytes(self, keys, names) -> int:
        """Bytes of the entries (each of `keys` x `names`) that the shards hold."""
        with self._lock:
            index, total = self._load(), 0
            for key in keys:
                for name in names:
                    where = index.get((key.encode(), name.encode()))
                    if where is not None:
                        total += int(self._rows[where[0]][where[1]]["length"])
            return total

    def record_dataset(self, about: dict, images: int, size: int) -> None:
        """Note what the `images` of the dataset folder `about["data"]` take here (`size` bytes;
        `about`: also what made them, e.g. the backbone), for `cache info`: one small file per dataset."""
        record = {**about, "images": images, "bytes": size, "used": time.strftime("%Y-%m-%dT%H:%M:%S")}
        digest = hashlib.blake2b(os.fsencode(about["data"]), digest_size=8).hexdigest()
        files.atomic_write(self.dir.parent / "datasets" / f"{digest}.json", json.dumps(record).encode(), fsync=False)

    def datasets(self) -> list[dict]:
        """The datasets recorded by `record_dataset`, the most recently used first."""
        found = [files.read_json_object(p) for p in sorted((self.dir.parent / "datasets").glob("*.json"))]
        return sorted((d for d in found if d), key=lambda d: str(d.get("used", "")), reverse=True)

    def compact(self, target_bytes: int = 256 << 20) -> dict:
        """Rewrite the shards as few, each up to `target_bytes`, keeping each entry once (where two
        shards hold it, the newer) and dropping entries that do not check out. Streams: the shards
        are mapped, not read into memory. Runs meanwhile keep working: they write shards of their
        own (left as they are), and one reading a shard that is gone computes that entry again.
        Returns {shards, bytes, entries, dropped} before and after."""
        with files.locked(self.dir / ".compact.lock"):
            olds = sorted(self.dir.glob("*.idx")) if self.dir.is_dir() else []
            before = sum(p.stat().st_size + _size(p.with_suffix(".dat")) for p in olds)
            out = ShardedCache(self.dir.parent)
            out.FLUSH_BYTES = target_bytes
            seen, dropped, entries = set(), 0, 0
            for idx in reversed(olds):  # the newest first: it wins
                try:
                    body = files.read_checked(idx, _INDEX)
                except files.CorruptBlob:
                    body = None
                rows = np.frombuffer(body, dtype=_ROW) if body and not len(body) % _ROW.itemsize else ()
                try:
                    with open(idx.with_suffix(".dat"), "rb") as f:
                        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(f.fileno()).st_size else b""
                except OSError:
                    data = b""
                for row in rows:
                    ident = (bytes(row["key"]), bytes(row["name"]))
                    entries += 1
                    if ident in seen:
                        continue
                    start, length = int(row["offset"]), int(row["length"])
                    raw = data[start:start + length]
                    if len(raw) != length or _digest8(raw) != int(row["digest"]):
                        dropped += 1
                        continue
                    seen.add(ident)
                    shape = tuple(int(d) for d in row["shape"][:row["ndim"]])
                    arr = np.frombuffer(raw, dtype=np.dtype(row["dtype"].decode())).reshape(shape)
                    out._put(ident[0].decode(), ident[1].decode(), int(row["kind"]), arr)
            out.flush()
            for idx in olds:  # the index first: no reader finds an entry whose data is gone
                idx.unlink(missing_ok=True)
                idx.with_suffix(".dat").unlink(missing_ok=True)
            compacted = {o.name for o in olds}
            news = [p for p in self.dir.glob("*.idx") if p.name not in compacted] if self.dir.is_dir() else []
            after = sum(p.stat().st_size + _size(p.with_suffix(".dat")) for p in news)
            self._index = None  # read again
            self._rows, self._data, self._open = [], [], {}
            return {"shards_before": len(olds), "shards_after": len(news), "bytes_before": before,
                    "bytes_after": after, "entries_before": entries, "entries_after": len(seen), "dropped": dropped}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _digest8(raw: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")


class Cache:
    """The cache folder and where each kind of entry lives in it (see the module docstring)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else default_dir()

    def features(self, model: str) -> ShardedCache:
        """Feature vectors of one backbone configuration (`model_key`)."""
        return ShardedCache(self.root / "features" / model)

    def backbone_file(self, model: str) -> Path:
        """The backbone's weights, prepared for `model` (mapped, checked), so a warm run need not
        build the network to write its bundle."""
        return self.root / "features" / model / "backbone.safetensors"

    def decoded(self, resize_size: int, interpolation: str, limit: int | str | None = None) -> ArrayCache:
        """Decoded images, resized to the short side the crops need (shared by every backbone
        that uses the same size and interpolation); `limit`: the most bytes all decoded images
        may take (`parse_size`: bytes, "auto" (`SizeLimit`), or None: unbounded)."""
        bound = None if limit is None else SizeLimit(self.root / "decoded", limit)
        return ArrayCache(self.root / "decoded" / f"s{resize_size}-{interpolation}-d{DECODER_VERSION}-v{FORMAT_VERSION}",
                          bound)

    def info(self) -> dict:
        """What the cache holds, by kind: files and bytes of each sub-folder; per backbone
        configuration its features (shards, entries' bytes, the datasets recorded); the decoded
        images per resolution. Each sub-folder is walked once."""
        out: dict = {"root": str(self.root), "kinds": {}, "features": [], "decoded": []}
        for name in SUBFOLDERS:
            folder = self.root / name
            if not folder.is_dir():
                continue
            within: dict[str, dict] = {}  # per entry of the sub-folder (a backbone configuration, a resolution)
            for f in folder.rglob("*"):
                # (a name starting with a dot: a lock, or a write in flight)
                if f.is_file() and not f.name.startswith("."):
                    tally = within.setdefault(f.relative_to(folder).parts[0], {"files": 0, "bytes": 0})
                    tally["files"] += 1
                    tally["bytes"] += _size(f)
            out["kinds"][name] = {k: sum(t[k] for t in within.values()) for k in ("files", "bytes")}
            for child in sorted(p for p in folder.iterdir() if p.is_dir()) if name in ("features", "decoded") else ():
                tally = within.get(child.name, {"files": 0, "bytes": 0})
                if name == "decoded":
                    out["decoded"].append({"variant": child.name, **tally})
                    continue
                shards = ShardedCache(child)
                out["features"].append({"model": child.name, **tally,
                                        "shards": len(list(shards.dir.glob("*.idx"))) if shards.dir.is_dir() else 0,
                                        "datasets": shards.datasets()})
        return out

    def compact(self) -> list[dict]:
        """`ShardedCache.compact` for every sharded store (features, teacher logits, image facts);
        a folder that is not a transferkit cache is refused."""
        if self.root.exists() and not self.is_ours():
            raise UserError(f"{self.root} is not a transferkit cache (no {MARKER}); nothing was changed")
        done = []
        for kind in ("features", "teacher", "images", "reports"):
            for store in sorted((self.root / kind).iterdir()) if (self.root / kind).is_dir() else ():
                if (store / "shards").is_dir():
                    done.append({"store": f"{kind}/{store.name}", **ShardedCache(store).compact()})
        return done

    def sweep(self) -> tuple[int, int]:
        """Remove the temporary files that killed processes left (a compaction or a run stopped by
        SIGKILL mid-write): (files, bytes). A folder that is not a transferkit cache is refused."""
        if not self.root.is_dir():
            return 0, 0
        if not self.is_ours():
            raise UserError(f"{self.root} is not a transferkit cache (no {MARKER}); nothing was changed")
        return files.sweep_temporary(self.root)

    def teacher(self, ident: dict) -> ShardedCache:
        """A distillation teacher's logits for the student's views (see `training.teacher`)."""
        return ShardedCache(self.root / "teacher" / _hash({"v": FORMAT_VERSION, "decoder": DECODER_VERSION, **ident}))

    def datasets(self) -> Path:
        """Datasets converted to image folders (CIFAR-10's python batches)."""
        return self.root / "datasets"

    def thumbnails(self) -> Path:
        """Thumbnails the studio shows (`studio.datasets.thumbnail`), one JPEG per image version."""
        return self.root / "thumbnails"

    def image_facts(self) -> ShardedCache:
        """Per image: the sha256 of its bytes and its pixel statistics (`doctor.images`)."""
        return ShardedCache(self.root / "images" / f"d{DECODER_VERSION}-v{FORMAT_VERSION}")

    def reports(self) -> ShardedCache:
        """A run's evaluation and report files, kept by a digest of what made them (`evaluation.memo`)."""
        return ShardedCache(self.root / "reports" / f"v{FORMAT_VERSION}")

    def engine_file(self, ident: dict) -> Path:
        """A network converted for an inference engine (`engines.convert`): a backbone for feature
        extraction or a run's model; `ident`: everything its output depends on."""
        return self.root / "engines" / f"{_hash({'v': FORMAT_VERSION, **ident})}.onnx"

    def prepare(self) -> "Cache":
        """Make the cache folder (and its marker) before anything is written into it. A folder that
        holds other things and no marker is somebody else's: refused, never written into."""
        if self.root.exists() and not self.is_ours():
            raise UserError(f"the cache folder {self.root} holds files that are not transferkit's; give an empty "
                            "or new folder (--cache-dir or $TRANSFERKIT_CACHE)")
        self.root.mkdir(parents=True, exist_ok=True)
        marker = self.root / MARKER
        if not marker.is_file():
            files.atomic_write(marker, _TAG.encode())
        return self

    def is_ours(self) -> bool:
        """The folder is a transferkit cache: it has the marker, or (written before the marker
        existed) nothing but the cache's own sub-folders; an empty folder counts too."""
        if (self.root / MARKER).is_file():
            return True
        # (another run making the cache at this moment: its marker's temporary file)
        return self.root.is_dir() and all(p.name in SUBFOLDERS or p.name.startswith(f".{MARKER}.")
                                          for p in self.root.iterdir())

    def owned(self) -> list[Path]:
        """What the cache wrote under its folder: its sub-folders and the marker."""
        return [p for p in (self.root / name for name in (*SUBFOLDERS, MARKER)) if p.exists()]

    def usage(self) -> tuple[int, int]:
        """(files, bytes) of the cache's own entries."""
        entries = [f for p in self.owned() for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
        return len(entries), sum(f.stat().st_size for f in entries)

    def clear(self, dry_run: bool = False) -> tuple[list[Path], int]:
        """Delete what the cache wrote (its sub-folders and marker), nothing else: a folder that is
        not a transferkit cache is refused. Returns (what was, or with `dry_run` would be, removed;
        bytes)."""
        import shutil

        if not self.root.exists():
            return [], 0
        if not self.is_ours():
            raise UserError(f"{self.root} is not a transferkit cache (no {MARKER}); nothing was deleted")
        owned, (_, size) = self.owned(), self.usage()
        if not dry_run:
            for path in owned:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            if not any(self.root.iterdir()):
                self.root.rmdir()
        return owned, size
