"""Losses: cross-entropy with optional inverse-frequency class weights, and distillation's."""

from __future__ import annotations

import torch
from torch import nn

from ..config import TrainConfig


def classification_loss(cfg: TrainConfig, labels: torch.Tensor, num_classes: int) -> nn.Module:
    """Cross-entropy; with --class-weights auto each class weighs N / (C * count) (inverse
    frequency), so rare classes count as much as common ones."""
    weight = None
    if cfg.class_weights == "auto":
        counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
        weight = len(labels) / (num_classes * counts)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing or 0.0)


class DistillLoss(nn.Module):
    """Hinton et al. (2015): alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels),
    the softmaxes at temperature T. Without teacher logits (validation) it is the cross-entropy."""

    def __init__(self, ce: nn.Module, temperature: float, alpha: float):
        super().__init__()
        self.ce, self.t, self.alpha = ce, temperature, alpha

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None = None):
        ce = self.ce(logits, labels)
        if teacher is None:
            return ce
        kd = nn.functional.kl_div(nn.functional.log_softmax(logits / self.t, 1),
                                  nn.functional.log_softmax(teacher.float() / self.t, 1),
                                  reduction="batchmean", log_target=True)
        return self.alpha * self.t ** 2 * kd + (1 - self.alpha) * ce
