"""The cache folder: the one owner of its layout (`Cache`), of the keys that name its entries
(`keys`), of its size limit (`limits`) and of its stores (`stores`). No torch.

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

import os
from pathlib import Path

from .. import files
from ..errors import UserError
from .keys import DECODER_VERSION, FORMAT_VERSION, hash_ident, image_key, model_key
from .limits import SizeLimit, file_size, parse_size
from .stores import ArrayCache, ShardedCache

__all__ = ["CACHE_FLAG", "DECODER_VERSION", "FORMAT_VERSION", "MARKER", "ArrayCache", "Cache", "ShardedCache",
           "SizeLimit", "default_dir", "image_key", "model_key", "parse_size"]

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
                    tally["bytes"] += file_size(f)
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
        return ShardedCache(self.root / "teacher" / hash_ident({"v": FORMAT_VERSION, "decoder": DECODER_VERSION, **ident}))

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
        return self.root / "engines" / f"{hash_ident({'v': FORMAT_VERSION, **ident})}.onnx"

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
