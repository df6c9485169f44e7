"""partial: the last --unfreeze stages of the backbone and the head train; the other stages stay
frozen (not given to the optimizer), their BatchNorm statistics fixed."""

from .base import NETWORK_DEFAULTS, Strategy, register


def run(ctx):
    from ..network import train_network

    return train_network(ctx)


register(Strategy(
    name="partial", order=2, run=run, trains="top", backbone_lr="scaled",
    summary="the last --unfreeze stages and the head train",
    options=("unfreeze", "backbone_lr_mult"), defaults={**NETWORK_DEFAULTS, "unfreeze": 2},
))
