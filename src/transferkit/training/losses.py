"""Losses: cross-entropy with optional inverse-frequency class weights, multi-label's per-class
sigmoid loss, and distillation's."""

from __future__ import annotations

import torch
from torch import nn

from ..config import TrainConfig


# The asymmetric loss's settings (Ridnik et al., "Asymmetric Loss For Multi-Label Classification",
# ICCV 2021: their defaults): negatives focused by gamma-, positives by gamma+, and each negative's
# probability shifted down by the clip margin (an easy negative below it costs nothing).
ASL_GAMMA_NEG, ASL_GAMMA_POS, ASL_CLIP = 4.0, 0.0, 0.05


class MultiLabelLoss(nn.Module):
    """Multi-label: each class's binary cross-entropy on its own sigmoid (targets (B, C) 0/1),
    summed over the classes and averaged over the images (so a class's gradient does not shrink
    as classes are added). `pos_weight`: each class's positives weigh this much (--class-weights
    auto: negatives / positives, as if each class were balanced); `smoothing`: targets pulled
    toward 0.5 by this much (--label-smoothing); `asymmetric` (--loss asl): the asymmetric loss
    (ASL_*), for many negatives per image."""

    multilabel = True  # (engine: scored by mAP, not by the argmax)

    def __init__(self, pos_weight: torch.Tensor | None = None, smoothing: float = 0.0, asymmetric: bool = False):
        super().__init__()
        self.pos_weight, self.smoothing, self.asymmetric = pos_weight, smoothing, asymmetric

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.float()
        if self.smoothing:
            targets = targets * (1 - self.smoothing) + self.smoothing / 2
        if self.asymmetric:
            return self._asymmetric(logits.float(), targets)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.pos_weight,
                                                              reduction="none")
        return loss.sum(1).mean()

    def _asymmetric(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits)
        shifted = (p - ASL_CLIP).clamp(min=0)  # a negative's probability, shifted by the margin
        eps = 1e-8
        positive = targets * torch.log(p.clamp(min=eps)) * (1 - p) ** ASL_GAMMA_POS
        if self.pos_weight is not None:
            positive = positive * self.pos_weight
        negative = (1 - targets) * torch.log((1 - shifted).clamp(min=eps)) * shifted ** ASL_GAMMA_NEG
        return -(positive + negative).sum(1).mean()


def classification_loss(cfg: TrainConfig, labels: torch.Tensor, num_classes: int) -> nn.Module:
    """Cross-entropy; with --class-weights auto each class weighs N / (C * count) (inverse
    frequency), so rare classes count as much as common ones. Multi-label targets ((N, C) 0/1
    rows): `MultiLabelLoss`."""
    if labels.ndim == 2:
        pos_weight = None
        if cfg.class_weights == "auto":
            positives = labels.float().sum(0)
            pos_weight = ((len(labels) - positives) / positives.clamp(min=1)).clamp(min=1e-3)
        return MultiLabelLoss(pos_weight, cfg.label_smoothing or 0.0, cfg.loss == "asl")
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
