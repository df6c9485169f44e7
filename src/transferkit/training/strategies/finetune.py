"""finetune: every layer trains on images (decoded once into a cache), the backbone at a lower
learning rate than the new head."""

from .base import NETWORK_DEFAULTS, RECIPE_OPTIONS, Strategy, register, train_network

register(Strategy(
    name="finetune", order=1, run=train_network, trains="all", backbone_lr="scaled",
    summary="every layer trains, the backbone at lr * --backbone-lr-mult",
    options=("backbone_lr_mult", "sync_bn", *RECIPE_OPTIONS), defaults=NETWORK_DEFAULTS,
))
