"""Per image: its content hash (exact duplicates) and a few properties of its pixels (size,
brightness, contrast, colour), read once and cached under the image's key (path, size, mtime)."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from ..cache import ShardedCache, image_key
from ..data.decode import load_rgb
from ..errors import ImageDecodeError

# The properties, in the order they are stored: width, height (as decoded, EXIF applied), mean
# and standard deviation of the luma (0-255), colourfulness (mean |R-G| + |G-B| over pixels:
# 0 for a grey image), and 1 when the file itself is greyscale (mode L, LA, 1, I, F).
PROPERTIES = ("width", "height", "luma_mean", "luma_std", "colourfulness", "grey_file")
THUMB = 64  # the side the pixel statistics are computed at


def _sha256(path: str) -> np.ndarray | None:
    try:
        with open(path, "rb") as f:
            return np.frombuffer(hashlib.file_digest(f, "sha256").digest(), dtype=np.uint8)
    except OSError:
        return None


def _properties(path: str) -> np.ndarray | None:
    try:
        with Image.open(path) as im:
            grey = float(im.mode in ("L", "LA", "1", "I", "F", "I;16"))
        rgb = load_rgb(path, min_short_side=THUMB)
    except (ImageDecodeError, OSError):
        return None
    width, height = rgb.size
    rgb.thumbnail((THUMB, THUMB))
    a = np.asarray(rgb, dtype=np.float32)
    luma = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    colour = float(np.abs(a[..., 0] - a[..., 1]).mean() + np.abs(a[..., 1] - a[..., 2]).mean())
    return np.array([width, height, luma.mean(), luma.std(), colour, grey], dtype=np.float64)


def read_all(paths: list[str], cache: ShardedCache, with_properties: bool = True, threads: int = 4):
    """(hashes, properties) of `paths`: the cached ones read here, the others computed on
    `threads` threads (Pillow and hashlib release the GIL)."""
    keys = []
    for p in paths:
        try:
            keys.append(image_key(p))
        except OSError:
            keys.append(None)

    def known(name: str) -> list:
        return [None if k is None else cache.get(k, name) for k in keys]

    hashes = known("sha")
    props = known("props") if with_properties else None
    todo = [(i, hashes, "sha", _sha256) for i, h in enumerate(hashes) if h is None and keys[i] is not None]
    todo += [(i, props, "props", _properties) for i, p in enumerate(props or []) if p is None and keys[i] is not None]
    if todo:
        with ThreadPoolExecutor(threads) as pool:
            done = list(pool.map(lambda job: job[3](paths[job[0]]), todo))
        for (i, column, name, _), value in zip(todo, done):
            column[i] = value
            if value is not None:  # None: unreadable, not cached (it may become readable)
                cache.put(keys[i], name, value)
        cache.flush()
    return [None if h is None else h.tobytes() for h in hashes], props
