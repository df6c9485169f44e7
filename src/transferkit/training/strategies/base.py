"""What a training strategy declares, and the registry of them. No torch here.

A strategy is one module in this package that calls `register(Strategy(...))`: its name, what
trains at which learning rate, whether it starts from cached features, the options it takes and
its defaults, and `run`, which trains. The registry is read by `--help`, by option validation
(`config`) and by `auto`, none of which may import torch: so a strategy module imports its
torch-side helpers inside `run`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ...registry import Registry

# What `Strategy.trains` may say: which parameters the optimizer gets.
TRAINS = {
    "head": "the new head only (the backbone frozen)",
    "all": "every layer",
    "top": "the last --unfreeze stages of the backbone and the head; BatchNorm of frozen stages in eval mode",
    "gradual": "the head, then stages from the top, one group per stage, all of them by the last epoch",
    "chosen": "what the strategy it chooses trains (auto)",
}

# What `Strategy.backbone_lr` may say: the backbone's learning rate, relative to the head's --lr.
BACKBONE_LR = {
    "scaled": "lr * --backbone-lr-mult",
    "same": "lr (random weights: nothing to preserve)",
    "per-stage": "lr * --backbone-lr-mult * --lr-decay ** (distance of the stage from the top)",
}

# The fine-tuning recipe's options (`training.recipe`, `data.augment`), taken by the strategies
# that train the network on images (each lists those that mean something for it) and their
# defaults: the recipe as it was before these options (README, "The fine-tuning recipe").
RECIPE_OPTIONS = ("augment", "mixup", "cutmix", "ema", "layer_decay", "drop_path")
NO_LAYER_DECAY = tuple(o for o in RECIPE_OPTIONS if o != "layer_decay")  # gradual (its own --lr-decay), scratch
# distill: the teacher's logits are per image, not per mixed pair
NO_MIXING = tuple(o for o in RECIPE_OPTIONS if o not in ("mixup", "cutmix"))
RECIPE_DEFAULTS: dict[str, Any] = {"augment": "basic", "mixup": 0.0, "cutmix": 0.0, "ema": 0.0, "layer_decay": 1.0,
                                   "drop_path": 0.0}

# Defaults of the strategies that train the network on images (finetune and its relatives).
NETWORK_DEFAULTS: dict[str, Any] = {
    "optimizer": "adamw", "schedule": "cosine", "epochs": 8, "lr": 1e-3, "batch_size": 32,
    "weight_decay": 1e-2, "patience": 0, "warmup_epochs": 0.0, "label_smoothing": 0.0, "dropout": 0.0,
    "backbone_lr_mult": 0.1, "sync_bn": False, **RECIPE_DEFAULTS,
}
# Defaults of the head on cached features. The logistic regression (--optimizer lbfgs) uses only
# weight_decay; with --optimizer adamw/adam/sgd the head trains for epochs of mini-batches.
HEAD_DEFAULTS: dict[str, Any] = {
    "optimizer": "lbfgs", "schedule": "cosine", "epochs": 60, "lr": 1e-3, "batch_size": 64,
    "weight_decay": 1e-4, "patience": 0, "warmup_epochs": 0.0, "label_smoothing": 0.0, "dropout": 0.0,
    "aug_views": 0, "features": "auto",
}
# Defaults that depend on the optimizer; they win over the strategy's. L-BFGS: the L2 penalty on
# the mean loss over standardized features is chosen by cross-validation (None; `heads.select_head`).
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {"lbfgs": {"weight_decay": None}}
EPOCH_OPTIMIZERS = ("adamw", "adam", "sgd")


@dataclass(frozen=True)
class Strategy:
    """One registered training strategy."""

    name: str
    summary: str  # one line for --help: what trains and how
    run: Callable  # (training.context.Context) -> training.context.Outcome
    trains: str  # a key of TRAINS
    backbone_lr: str | None = None  # a key of BACKBONE_LR; None when the backbone does not train
    uses_features: bool = False  # starts from the cached features of the frozen backbone
    options: tuple[str, ...] = ()  # the strategy-specific options it takes (config names)
    defaults: dict[str, Any] = field(default_factory=dict)  # values of options left unset
    required: tuple[str, ...] = ()  # options that must be given
    optimizers: tuple[str, ...] = EPOCH_OPTIMIZERS  # the --optimizer values it accepts
    weights: str | None = None  # forced --weights ("none": from scratch)
    batchnorm: str = "train"  # "frozen": every BatchNorm keeps its running statistics (eval mode) while training
    order: int = 100  # position in listings

    def __post_init__(self) -> None:
        if self.trains not in TRAINS:
            raise ValueError(f"strategy {self.name}: trains must be one of {', '.join(TRAINS)}")
        if self.backbone_lr is not None and self.backbone_lr not in BACKBONE_LR:
            raise ValueError(f"strategy {self.name}: backbone_lr must be one of {', '.join(BACKBONE_LR)}")

    def defaults_for(self, optimizer: str | None) -> dict[str, Any]:
        """The values this strategy uses for options left unset, given the optimizer (None: its
        default one)."""
        values = dict(self.defaults)
        if "optimizer" in values:
            values["optimizer"] = optimizer or values["optimizer"]
            values.update(OPTIMIZER_DEFAULTS.get(values["optimizer"], {}))
        return values


STRATEGIES: Registry[Strategy] = Registry("strategy", package=__package__, sort_key=lambda s: (s.order, s.name))
register = STRATEGIES.register
