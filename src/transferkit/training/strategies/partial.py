"""partial: the last --unfreeze stages of the backbone and the head train; the other stages stay
frozen (not given to the optimizer), their BatchNorm statistics fixed."""

from .base import NETWORK_DEFAULTS, RECIPE_OPTIONS, Strategy, register
from .finetune import train_network

register(Strategy(
    name="partial", order=2, run=train_network, trains="top", backbone_lr="scaled",
    summary="the last --unfreeze stages and the head train",
    options=("unfreeze", "backbone_lr_mult", "sync_bn", *RECIPE_OPTIONS), defaults={**NETWORK_DEFAULTS, "unfreeze": 2},
))
