"""The keys that name the cache's entries: each carries what the content depends on, so that
nothing stale is ever reused. No torch."""

from __future__ import annotations

import hashlib
import json
import os

FORMAT_VERSION = 3  # of the entries' layout; part of every key
# Bump when decoding or resizing (`data.decode`) changes what an image becomes: the keys of decoded
# images, features, teacher logits and image facts include it, so nothing decoded the old way is reused.
DECODER_VERSION = 1


def image_key(path: str) -> str:
    """Identity of an image file: absolute path, size and modification time."""
    st = os.stat(path)
    ident = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"
    # os.fsencode: a name that is not valid UTF-8 is the file system's bytes again (surrogateescape)
    return hashlib.blake2b(os.fsencode(ident), digest_size=16).hexdigest()


def model_key(backbone: str, weights: str, preprocess: dict, precision: str) -> str:
    """Identity of what turns an image into features (`weights`: `WeightsInfo.identity`)."""
    from importlib.metadata import version

    return hash_ident({"v": FORMAT_VERSION, "decoder": DECODER_VERSION, "timm": version("timm"), "backbone": backbone,
                       "weights": weights, "pre": preprocess, "precision": precision})


def hash_ident(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
