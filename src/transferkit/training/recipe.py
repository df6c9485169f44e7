"""The fine-tuning recipe around the epoch loop, each part a well-kept library's: MixUp / CutMix on
a batch (torchvision's transforms v2, soft targets), the exponential moving average of the weights
(timm's ModelEmaV3, warmed up). Layer-wise LR decay is `network.param_groups`' (over timm's
fine-grained parameter groups); the views' augmentation is `data.augment`'s."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

# timm's EMA warm-up: the decay at step t is at most 1 - (1 + t)^(-EMA_WARMUP_POWER), so a short
# schedule (a few hundred steps) averages its recent steps rather than staying near its start.
EMA_WARMUP_POWER = 2 / 3
# And the average spans at most this share of the run's steps (its decay at most 1 - 1 / (share x
# steps)): on 200 images (56 steps) a 0.999 average otherwise still lags the weights at the last
# epoch, where the cosine schedule has already settled them (flowers: -1 point, bench/recipe.py).
EMA_MAX_SHARE = 0.1

# The last CALM_SHARE of the epochs (at least one) train without MixUp/CutMix and without the
# augmentation policy's ops (the crop and flip stay): the network fits clean views at the low end
# of the schedule, as timm's --mixup-off-epoch and Ultralytics' close_mosaic do. Measured on 200
# flower images, 8 epochs: TrivialAugment + MixUp to the end scored 2.5 points below the plain
# recipe (it was still fitting the mixed images when the schedule ran out; bench/recipe.py).
CALM_SHARE = 0.25

Mixer = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def strong_epochs(epochs: int) -> int:
    """The epochs (from the first) that get MixUp/CutMix and the augmentation ops: all but the
    last CALM_SHARE of them, at least one calm epoch when there are two or more."""
    calm = max(1, round(CALM_SHARE * epochs)) if epochs > 1 else 0
    return epochs - calm


def batch_mixer(mixup: float | None, cutmix: float | None, num_classes: int) -> Mixer | None:
    """(images, labels) -> (mixed images, soft targets (B, num_classes)): MixUp with Beta(mixup,
    mixup), CutMix with Beta(cutmix, cutmix), one of the two per batch when both are on; None when
    neither is. The draws come from torch's random state (seeded by the run, saved in its
    checkpoints)."""
    from torchvision.transforms import v2

    ops = ([v2.MixUp(alpha=mixup, num_classes=num_classes)] if mixup else []) + \
          ([v2.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix else [])
    if not ops:
        return None
    return ops[0] if len(ops) == 1 else v2.RandomChoice(ops)


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    """Class indices of `targets` (indices already, or soft targets: the heaviest class)."""
    return targets.argmax(1) if targets.is_floating_point() else targets


class WeightAverage:
    """An exponential moving average of a model's weights (and BatchNorm statistics), updated
    after every optimizer step with that step's number (timm's ModelEmaV3 with warm-up), over
    at most EMA_MAX_SHARE of the run's `steps` (None: no such bound)."""

    def __init__(self, model: nn.Module, decay: float, steps: int | None = None):
        from timm.utils import ModelEmaV3

        if steps:
            decay = min(decay, max(0.0, 1 - 1 / (EMA_MAX_SHARE * steps)))
        self.decay = decay
        self.ema = ModelEmaV3(model, decay=decay, use_warmup=True, warmup_power=EMA_WARMUP_POWER)
        for p in self.ema.module.parameters():
            p.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged model (in eval mode)."""
        return self.ema.module

    def update(self, model: nn.Module, step: int) -> None:
        self.ema.update(model, step=step)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.ema.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.ema.module.load_state_dict(state)
