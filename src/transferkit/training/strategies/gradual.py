"""gradual: the head trains alone in the first epoch, then stages unfreeze from the top, all of
them by the last epoch; each stage has its own learning rate, lower the deeper it is."""

from .base import NETWORK_DEFAULTS, NO_LAYER_DECAY, Strategy, register
from .finetune import train_network

register(Strategy(
    name="gradual", order=3, run=train_network, trains="gradual", backbone_lr="per-stage",
    summary="stages unfrozen from the top, epoch by epoch, with per-stage LRs (--lr-decay)",
    options=("lr_decay", "backbone_lr_mult", "sync_bn", *NO_LAYER_DECAY),
    defaults={**NETWORK_DEFAULTS, "lr_decay": 0.5},
))
