"""Training-view augmentation policies (`--augment`): the registry of them, each applied to one
decoded uint8 image per epoch. No torch at import: `--help` and option validation read the
names; torchvision's transforms v2 are imported when a policy first runs.

Every policy starts from the decoded-image cache's uint8 pixels (resized once, never re-decoded),
so the cache is the same whichever policy trains:
- none: the evaluation view (resize + center crop), every epoch the same;
- basic: a random resized crop and a horizontal flip (`views.train_view`; small images: pad,
  shift, flip);
- randaugment / trivial: basic, then torchvision's RandAugment (2 ops, magnitude 9; Cubuk et al.,
  2020) or TrivialAugmentWide (one op, random magnitude; Muller & Hutter, 2021) on the uint8 view.

A view is a function of (seed, image, epoch): the random ops draw from a torch generator seeded
from the view's own NumPy generator, in a forked RNG, so a view is the same in every run, in
every DataLoader worker and after `--resume`, and the process's random state is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..registry import Registry


@dataclass(frozen=True)
class Augment:
    """One augmentation policy: `crop` says whether the random crop + flip of `views.train_view`
    comes first; `ops` builds the torchvision v2 transform applied to the (3, H, W) uint8 view
    after it (None: nothing more)."""

    name: str
    summary: str
    crop: bool = True
    ops: Callable[[], Any] | None = None


AUGMENTS: Registry[Augment] = Registry("augmentation")


def _randaugment():
    from torchvision.transforms import v2

    return v2.RandAugment(num_ops=2, magnitude=9)


def _trivial():
    from torchvision.transforms import v2

    return v2.TrivialAugmentWide()


AUGMENTS.register(Augment("none", "the evaluation view (resize + center crop), no random change", crop=False))
AUGMENTS.register(Augment("basic", "random resized crop + horizontal flip (small images: pad, shift, flip)"))
AUGMENTS.register(Augment("randaugment", "basic, then RandAugment (2 ops, magnitude 9)", ops=_randaugment))
AUGMENTS.register(Augment("trivial", "basic, then TrivialAugmentWide (one op, random strength)", ops=_trivial))


def build_ops(name: str):
    """Policy `name`'s transform after the crop (None: it has none)."""
    entry = AUGMENTS.get(name)
    return entry.ops() if entry.ops is not None else None


def apply_ops(ops, view, seed: int):
    """`view` (uint8 tensor (3, H, W)) through `ops` (from `build_ops`), their random draws
    seeded by `seed`; the view itself when `ops` is None."""
    if ops is None:
        return view
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ops(view)
