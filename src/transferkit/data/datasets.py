"""Torch datasets and loaders over image files for training: the decode cache, and the shuffled
or class-balanced training loader (a frozen network's pass streams through `data.stream`)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, WeightedRandomSampler

from ..cache import ArrayCache, image_key
from ..errors import ImageDecodeError, describe_os_error
from ..models.preprocess import Preprocess
from .augment import AUGMENTS, apply_ops, build_ops
from .decode import center_crop, load_rgb, resize_short
from .discover import Sample
from .views import train_view, view_rng


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> uint8 tensor (3, H, W)."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def labels_of(samples: list[Sample]) -> torch.Tensor:
    return torch.tensor([s.label for s in samples], dtype=torch.long)


# -- training on images: decoded once into the cache, a seeded view per epoch -----------------------


class DecodedImages(Dataset):
    """Images decoded once, resized to the short side the crops need, kept as uint8 in the decode
    cache; item -> (uint8 (3, S, S) view, label). Training views follow the `augment` policy
    (`data.augment`), seeded per (image, epoch), its ops only up to epoch `ops_until` (None: every
    epoch; later epochs get the crop alone); `small`: the images are small (upsampled to the
    input), cropped CIFAR-style (`train_view`)."""

    def __init__(self, paths: list[str], labels: list[int], pre: Preprocess, cache: ArrayCache,
                 train: bool, seed: int = 0, small: bool = False, augment: str = "basic",
                 ops_until: int | None = None):
        self.paths, self.labels, self.pre, self.cache = paths, labels, pre, cache
        self.keys = [image_key(p) for p in paths]
        self.train, self.seed, self.epoch, self.small = train, seed, 0, small
        self.crop = AUGMENTS.get(augment).crop
        self.ops = build_ops(augment) if train else None
        self.ops_until = ops_until

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> Image.Image:
        arr = self.cache.get(self.keys[i], "img")
        if arr is None:
            arr = decode_into(self.cache, self.paths[i], self.keys[i], self.pre)
        return Image.fromarray(arr)

    def view(self, i: int, epoch: int) -> torch.Tensor:
        """Image i as seen in `epoch`: a random view seeded by (seed, image, epoch) for training,
        the center crop otherwise."""
        img = self.image(i)
        if not self.train:
            return to_tensor(center_crop(img, self.pre.input_size))
        rng = view_rng(self.seed, self.keys[i], epoch)
        view = train_view(img, self.pre, rng, self.small) if self.crop else center_crop(img, self.pre.input_size)
        ops = self.ops if self.ops_until is None or epoch <= self.ops_until else None
        return apply_ops(ops, to_tensor(view), int(rng.integers(2**63)))

    def __getitem__(self, i: int):
        return self.view(i, self.epoch), self.labels[i]


def decode_into(cache: ArrayCache, path: str, key: str, pre: Preprocess) -> np.ndarray:
    img = load_rgb(path, min_short_side=pre.resize_size)
    arr = np.asarray(resize_short(img, pre.resize_size, pre.interpolation), dtype=np.uint8)
    cache.put(key, "img", arr)
    return arr


def decode_all(samples: list[Sample], cache: ArrayCache, pre: Preprocess, progress: Callable) -> dict[str, str]:
    """Fill the decode cache once (so epochs never decode JPEGs again); returns the unreadable
    files (path -> reason)."""
    errors: dict[str, str] = {}
    bar = progress(len(samples), "decode")
    for s in samples:
        try:
            key = image_key(s.path)
        except OSError as exc:
            key, reason = None, describe_os_error(exc)
        else:
            reason = cache.get_error(key)
        if key is not None and reason is None and cache.get(key, "img") is None:
            try:
                decode_into(cache, s.path, key, pre)
            except ImageDecodeError as exc:
                reason = exc.reason
                if exc.cacheable:
                    cache.put_error(key, reason)
        if reason is not None:
            errors[s.path] = reason
        bar.update(1)
    bar.close()
    return errors


def train_loader(dataset, labels: torch.Tensor, batch_size: int, seed: int, balanced: bool = False,
                 workers: int = 0, drop_last: bool = False, group=None) -> DataLoader:
    """Shuffled batches from a generator seeded by `seed`, or with `balanced` every class equally
    likely per draw. With `group` (`distributed.Group`; training on images) the order is drawn
    per epoch from (seed, epoch) by a `DistributedSampler` (the loop sets its epoch), and each
    rank gets every world-th image of it: ranks x batch images per step, the same images as one
    process with that batch."""
    if group is not None:
        kind = ClassBalancedSampler if balanced else DistributedSampler
        extra = {"labels": labels} if balanced else {}
        sampler = kind(dataset, num_replicas=group.world, rank=group.rank, shuffle=True, seed=seed, **extra)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last)
    gen = torch.Generator().manual_seed(seed)
    if balanced:
        counts = torch.bincount(labels).float()
        sampler = WeightedRandomSampler((1.0 / counts)[labels].double(), len(labels), replacement=True, generator=gen)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=gen, num_workers=workers,
                      drop_last=drop_last)


class ClassBalancedSampler(DistributedSampler):
    """Every class equally likely per draw (with replacement), drawn per epoch from (seed,
    epoch), the draws shared out across the group as `DistributedSampler` shares its order."""

    def __init__(self, dataset, labels: torch.Tensor, **kwargs):
        super().__init__(dataset, **kwargs)
        self.weights = (1.0 / torch.bincount(labels).float())[labels].double()

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(self.weights, self.total_size, replacement=True, generator=gen).tolist()
        return iter(draws[self.rank:self.total_size:self.num_replicas])
