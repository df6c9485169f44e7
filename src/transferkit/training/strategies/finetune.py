"""finetune: every layer trains on images (decoded once into a cache), the backbone at a lower
learning rate than the new head."""

from .base import NETWORK_DEFAULTS, RECIPE_OPTIONS, Strategy, register


def train_network(ctx):
    """The `run` of the strategies that train the network on images exactly as they declare
    (finetune, partial, gradual, scratch): `training.network.train_network`, imported on use (a
    strategy module imports no torch at the top)."""
    from ..network import train_network as run

    return run(ctx)


register(Strategy(
    name="finetune", order=1, run=train_network, trains="all", backbone_lr="scaled",
    summary="every layer trains, the backbone at lr * --backbone-lr-mult",
    options=("backbone_lr_mult", "sync_bn", *RECIPE_OPTIONS), defaults=NETWORK_DEFAULTS,
))
