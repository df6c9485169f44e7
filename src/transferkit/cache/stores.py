"""The cache's two stores: one checksummed file per entry (`ArrayCache`, decoded images) and
shards of many small entries with a checksummed index (`ShardedCache`: features, teacher logits,
image facts, reports). No torch."""

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

from .. import files
from .limits import SizeLimit, file_size

_ARRAY, _ERROR = b"TKF1", b"TKE1"


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
            before = sum(p.stat().st_size + file_size(p.with_suffix(".dat")) for p in olds)
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
            after = sum(p.stat().st_size + file_size(p.with_suffix(".dat")) for p in news)
            self._index = None  # read again
            self._rows, self._data, self._open = [], [], {}
            return {"shards_before": len(olds), "shards_after": len(news), "bytes_before": before,
                    "bytes_after": after, "entries_before": entries, "entries_after": len(seen), "dropped": dropped}


def _digest8(raw: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")
