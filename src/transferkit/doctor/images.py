"""Per image: its content hash (exact duplicates), a few properties of its pixels (size,
brightness, contrast, colour) and a small grey thumbnail (`copies`), read once and cached under
the image's key (path, size, mtime)."""

from __future__ import annotations

import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from ..cache import ShardedCache, image_key
from ..data.decode import load_rgb
from ..errors import ImageDecodeError
from .copies import THUMB as COPY_THUMB

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


def _pixels(path: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(the PROPERTIES, the grey COPY_THUMB x COPY_THUMB thumbnail as uint8), from one decode."""
    try:
        with Image.open(path) as im:
            grey = float(im.mode in ("L", "LA", "1", "I", "F", "I;16"))
        rgb = load_rgb(path, min_short_side=THUMB)
    except (ImageDecodeError, OSError):
        return None
    width, height = rgb.size
    small = np.asarray(rgb.convert("L").resize((COPY_THUMB, COPY_THUMB), Image.BILINEAR, reducing_gap=2.0),
                       dtype=np.uint8)
    rgb.thumbnail((THUMB, THUMB))
    a = np.asarray(rgb, dtype=np.float32)
    luma = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    colour = float(np.abs(a[..., 0] - a[..., 1]).mean() + np.abs(a[..., 1] - a[..., 2]).mean())
    return np.array([width, height, luma.mean(), luma.std(), colour, grey], dtype=np.float64), small


def read_all(paths: list[str], cache: ShardedCache, with_properties: bool = True, threads: int = 4):
    """(hashes, properties, thumbnails) of `paths` (None where a file cannot be read; without
    `with_properties` the last two are None): the cached ones read here, the others computed on
    `threads` threads (Pillow and hashlib release the GIL)."""
    keys = []
    for p in paths:
        try:  # (a FIFO or a device among the files: never opened, its read would block)
            keys.append(image_key(p) if stat.S_ISREG(os.stat(p).st_mode) else None)
        except (OSError, ValueError):
            keys.append(None)

    def known(name: str) -> list:
        return [None if k is None else cache.get(k, name) for k in keys]

    hashes = known("sha")
    props, thumbs = (known("props"), known("thumb")) if with_properties else (None, None)
    todo = [(i, _sha256) for i, h in enumerate(hashes) if h is None and keys[i] is not None]
    todo += [(i, _pixels) for i in range(len(paths)) if with_properties and keys[i] is not None
             and (props[i] is None or thumbs[i] is None)]
    if todo:
        with ThreadPoolExecutor(threads) as pool:
            done = list(pool.map(lambda job: job[1](paths[job[0]]), todo))
        for (i, how), value in zip(todo, done):
            if value is None:  # unreadable, not cached (it may become readable)
                continue
            if how is _sha256:
                hashes[i] = value
                cache.put(keys[i], "sha", value)
            else:
                props[i], thumbs[i] = value
                cache.put(keys[i], "props", value[0])
                cache.put(keys[i], "thumb", value[1])
        cache.flush()
    hashes = [None if h is None else h.tobytes() for h in hashes]
    if thumbs is not None:
        thumbs = [None if t is None else t.reshape(COPY_THUMB, COPY_THUMB) for t in thumbs]
    return hashes, props, thumbs
