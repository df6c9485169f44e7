"""scratch: random initial weights, every layer at the same learning rate: the CIFAR recipe of
the seeds (SGD + one-cycle). Small images get a CIFAR-style stem where the backbone has one."""

from .base import NETWORK_DEFAULTS, NO_LAYER_DECAY, Strategy, register
from .finetune import train_network

register(Strategy(
    name="scratch", order=5, run=train_network, trains="all", backbone_lr="same", weights="none",
    summary="random init (= --weights none), every layer at lr; SGD + one-cycle", options=("sync_bn", *NO_LAYER_DECAY),
    defaults={**{k: v for k, v in NETWORK_DEFAULTS.items() if k != "backbone_lr_mult"},
              "optimizer": "sgd", "schedule": "onecycle", "epochs": 30, "lr": 0.1, "batch_size": 128,
              "weight_decay": 5e-4},
))
