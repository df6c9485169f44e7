"""Training views: random resized crop + flip (CIFAR-style pad + crop for small images), each
drawn from a generator seeded by (seed, image, view), so a view is the same in every run and in
every worker. Everything works on 8-bit RGB PIL images; normalization happens on the batch
(`Runtime.to_input`), so decoded pixels can be cached as compact uint8. No torch here.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
from PIL import Image

from ..models.preprocess import Preprocess
from .decode import center_crop, resample

# RandomResizedCrop parameters for training. A smaller lower bound than ImageNet's 0.08: our
# schedules are short and the datasets small, so very small crops mostly destroy the label.
CROP_SCALE = (0.25, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
SMALL = 64  # images at most this size are augmented CIFAR-style


def sample_crop(w: int, h: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A RandomResizedCrop box (left, top, right, bottom) drawn from `rng`."""
    area = w * h
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return left, top, left + cw, top + ch
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return left, top, left + side, top + side


def train_view(img: Image.Image, pre: Preprocess, rng: np.random.Generator, small: bool = False) -> Image.Image:
    """Random resized crop to `input_size` and a random horizontal flip; small images (<= 64 px,
    e.g. CIFAR, also when upsampled: `small`) get the CIFAR recipe instead: pad by 1/8 of the
    side, random crop, flip. A random resized crop of a 32 px image keeps as little as 16 px of
    it: measured on CIFAR-10 at 128 px, fine-tuning then fits only 83% of its training images in
    6 epochs."""
    if pre.input_size <= SMALL or small:
        pad = pre.input_size // 8
        arr = np.pad(np.asarray(center_crop(img, pre.input_size)), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        top, left = rng.integers(0, 2 * pad + 1, size=2)
        out = Image.fromarray(arr[top:top + pre.input_size, left:left + pre.input_size])
        return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else out
    box = sample_crop(*img.size, rng)
    out = img.resize((pre.input_size, pre.input_size), resample(pre.interpolation), box=box)
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else out


def view_rng(seed: int, key: str, view: int) -> np.random.Generator:
    """A generator for one augmented view of one image: the same view every run, in any worker."""
    digest = hashlib.blake2b(f"{seed}:{key}:{view}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))
