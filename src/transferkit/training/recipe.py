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

Mixer = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


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
    after every optimizer step with that step's number (timm's ModelEmaV3 with warm-up)."""

    def __init__(self, model: nn.Module, decay: float):
        from timm.utils import ModelEmaV3

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
