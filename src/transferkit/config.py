"""Every training option as one typed dataclass: defaults, YAML in/out, early validation.

The same names are used by the CLI (``--batch-size``), the YAML file (``batch_size:``) and Python
(``transferkit.train(data, batch_size=...)``).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

STRATEGIES = ("linear", "finetune", "partial", "gradual", "lp-ft", "scratch", "distill", "auto")
STEMS = ("auto", "standard", "small")
CLASS_WEIGHTS = ("none", "auto")
OPTIMIZERS = ("lbfgs", "adamw", "adam", "sgd")
SCHEDULES = ("cosine", "onecycle", "constant")
PRECISIONS = ("auto", "bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda")

# Per-strategy defaults, used where the user leaves an option unset (None).
STRATEGY_DEFAULTS: dict[str, dict[str, Any]] = {
    # The linear head trains on cached features: by default a logistic regression (L-BFGS, full
    # batch); with --optimizer adamw/adam/sgd, epochs of mini-batches (milliseconds each).
    "linear": {"optimizer": "lbfgs", "schedule": "cosine", "epochs": 60, "lr": 1e-3, "batch_size": 64,
               "weight_decay": 1e-4, "patience": 0},
    # Full fine-tuning: the backbone at lr * backbone_lr_mult, the head at lr.
    "finetune": {"optimizer": "adamw", "schedule": "cosine", "epochs": 8, "lr": 1e-3, "batch_size": 32,
                 "weight_decay": 1e-2, "patience": 0},
}
# Defaults that depend on the optimizer; they win over the strategy's. L-BFGS: the L2 penalty on
# the mean loss over standardized features (C = 1 / (0.1 n) in scikit-learn's terms).
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {"lbfgs": {"weight_decay": 0.1}}
# Partial, gradual and LP-FT train the network on images like finetune, with the same defaults.
for _name in ("partial", "gradual", "lp-ft", "distill"):
    STRATEGY_DEFAULTS[_name] = dict(STRATEGY_DEFAULTS["finetune"])
# From scratch (random init, every layer at lr): the CIFAR recipe of the seeds, SGD + one-cycle.
STRATEGY_DEFAULTS["scratch"] = {"optimizer": "sgd", "schedule": "onecycle", "epochs": 30, "lr": 0.1,
                                "batch_size": 128, "weight_decay": 5e-4, "patience": 0}


def strategy_defaults(strategy: str, optimizer: str | None = None) -> dict[str, Any]:
    """The values a strategy uses for options left unset, given the optimizer (None: its default)."""
    values = dict(STRATEGY_DEFAULTS[strategy])
    values["optimizer"] = optimizer or values["optimizer"]
    values.update(OPTIMIZER_DEFAULTS.get(values["optimizer"], {}))
    return values


def opt(default: Any, help: str) -> Any:
    """A config field with its one-line help (shown by `--help`)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Options of `transferkit train`. ``None`` means "the strategy's default"."""

    data: str = opt("", "dataset folder: DATA/train/<class>/..., optional DATA/val/<class>/...")
    model: str = opt("efficientnet_lite0", "backbone name, see `transferkit models`")
    weights: str = opt("imagenet", "imagenet | none | PATH to a state dict")
    strategy: str = opt("linear", "linear (frozen backbone, new head) | finetune (all layers) | partial "
                        "(last --unfreeze stages) | gradual (stages unfrozen from the top) | lp-ft "
                        "(linear probe, then finetune from that head) | scratch (random init, = --weights none) | "
                        "distill (finetune, learning from --teacher's logits too) | auto (chosen from the data "
                        "and --budget; the choice and its reason go to the console and results.json)")
    budget: float | None = opt(None, "auto: seconds the training may take (None: no limit)")
    teacher: str | None = opt(None, "distill: the trained run (folder) whose predictions the model learns from")
    # distill's defaults: the only setting of five measured (README) that was at least as accurate
    # as labels alone on both shared datasets; T = 1 is Beyer et al.'s function matching.
    temperature: float = opt(1.0, "distill: softmax temperature of the teacher's and the student's logits")
    alpha: float = opt(0.5, "distill: weight of the teacher term; 1 - alpha weighs the labels' cross-entropy")
    stem: str = opt("auto", "auto (small for <= 64 px images without pretrained weights, where the backbone "
                    "has one) | standard | small "
                    "(CIFAR-style: stride-1 3x3 stem conv, no max-pool)")
    image_size: int | None = opt(None, "network input size (None: the backbone's; CIFAR-10 from scratch: 32)")
    unfreeze: int = opt(2, "partial: how many of the backbone's last stages train")
    lr_decay: float = opt(0.5, "gradual: LR multiplier per stage, from the top stage down")
    epochs: int | None = opt(None, "training epochs")
    batch_size: int | None = opt(None, "images (or cached feature rows) per step")
    lr: float | None = opt(None, "peak learning rate of the head")
    backbone_lr_mult: float = opt(0.1, "finetune: backbone LR = lr * this")
    weight_decay: float | None = opt(None, "decoupled weight decay (AdamW) or L2 (SGD/Adam)")
    optimizer: str | None = opt(None, "lbfgs (linear: logistic regression, the default there) | adamw "
                                "(the default elsewhere) | adam | sgd")
    schedule: str | None = opt(None, "cosine (the default) | onecycle (scratch's default) | constant")
    warmup_epochs: float = opt(0.0, "linear warm-up before the schedule (cosine only)")
    label_smoothing: float = opt(0.0, "cross-entropy label smoothing")
    class_weights: str = opt("none", "none | auto (inverse class frequency in the loss)")
    balanced_sampler: bool = opt(False, "draw training images so that every class is equally frequent")
    dropout: float = opt(0.0, "dropout before the new head")
    patience: int | None = opt(None, "stop after this many epochs without a better val accuracy (0: off)")
    seed: int = opt(0, "seeds the split, the augmentation and the initialization")
    val_fraction: float = opt(0.2, "used when DATA has no val/ folder: stratified split")
    aug_views: int | None = opt(None, "linear: augmented crops per training image, cached (None: default)")
    cache_dir: str | None = opt(None, "feature/decode cache (default: $TRANSFERKIT_CACHE or ~/.cache/transferkit)")
    no_cache: bool = opt(False, "compute features in a temporary cache, leave the user's cache alone")
    no_report: bool = opt(False, "skip the plots and report.html (about 1.5 s; `transferkit report RUN` makes them later)")
    precision: str = opt("auto", "auto (bf16 where the CPU has it, AMP on CUDA) | bf16 | fp32")
    device: str = opt("auto", "auto | cpu | cuda")
    workers: int | None = opt(None, "DataLoader worker processes (None: chosen for the machine)")
    out: str | None = opt(None, "run folder (default: a fresh folder under runs_dir)")
    runs_dir: str = opt("runs", "where fresh run folders are made")
    name: str | None = opt(None, "run folder name under runs_dir")
    quiet: bool = opt(False, "no progress bars")
    resume: str | None = opt(None, "continue the interrupted run in this folder from its last checkpoint")

    # -- resolution and validation -------------------------------------------------------------
    def resolved(self) -> "TrainConfig":
        """A copy with strategy defaults filled in, validated; raises `UserError` on a bad value."""
        self.validate()
        cfg = dataclasses.replace(self)
        if cfg.strategy == "scratch":
            if cfg.weights not in ("imagenet", "none"):
                raise UserError("--strategy scratch trains from random weights: drop --weights")
            cfg.weights = "none"
        if cfg.strategy == "auto":  # the rest stays unset until the strategy is chosen
            cfg.aug_views = DEFAULT_AUG_VIEWS if cfg.aug_views is None else cfg.aug_views
            return cfg
        for key, value in strategy_defaults(cfg.strategy, cfg.optimizer).items():
            if getattr(cfg, key) is None:
                setattr(cfg, key, value)
        if cfg.aug_views is None:
            cfg.aug_views = DEFAULT_AUG_VIEWS
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not self.data:
            raise UserError("no dataset folder given")
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("class_weights", self.class_weights, CLASS_WEIGHTS)
        _positive("unfreeze", self.unfreeze)
        if not 0.0 < self.lr_decay <= 1.0:
            raise UserError(f"--lr-decay must be in (0, 1] (got {self.lr_decay})")
        if self.optimizer is not None:
            _choice("optimizer", self.optimizer, OPTIMIZERS)
            if self.optimizer == "lbfgs" and self.strategy not in ("linear", "auto"):
                raise UserError(f"--optimizer lbfgs fits only the linear head on cached features, "
                                f"not --strategy {self.strategy}")
        if self.schedule is not None:
            _choice("schedule", self.schedule, SCHEDULES)
        _choice("stem", self.stem, STEMS)
        if self.strategy == "distill" and not self.teacher:
            raise UserError("--strategy distill needs --teacher RUN (a trained run folder)")
        if self.budget is not None and self.budget <= 0:
            raise UserError(f"--budget must be > 0 seconds (got {self.budget})")
        if self.temperature <= 0 or not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"need --temperature > 0 and 0 <= --alpha <= 1 (got {self.temperature}, {self.alpha})")
        if self.image_size is not None and self.image_size < 16:
            raise UserError(f"--image-size must be >= 16 (got {self.image_size})")
        _choice("precision", self.precision, PRECISIONS)
        _choice("device", self.device, DEVICES)
        _positive("epochs", self.epochs)
        _positive("batch_size", self.batch_size)
        _positive("lr", self.lr)
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"--val-fraction must be between 0 and 1 (got {self.val_fraction})")
        for name in ("weight_decay", "label_smoothing", "dropout", "warmup_epochs"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0 (got {value})")
        if self.label_smoothing >= 1 or self.dropout >= 1:
            raise UserError("--label-smoothing and --dropout must be below 1")
        for name in ("patience", "aug_views", "workers"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0 (got {value})")
        if self.backbone_lr_mult <= 0:
            raise UserError(f"--backbone-lr-mult must be > 0 (got {self.backbone_lr_mult})")

    # -- YAML ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: Path) -> None:
        """Write every option to `path` atomically (--resume reads it back)."""
        from .bundle import atomic_write

        atomic_write(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False).encode())

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a dict (a YAML file or keyword arguments); unknown keys are rejected."""
        check_keys(values, cls)
        check_types(values, cls)
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {p}")
        try:
            values = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"config file {p} is not valid YAML: {exc}") from None
        if not isinstance(values, dict):
            raise UserError(f"config file {p} must hold a mapping of option: value")
        return cls.from_mapping(values)


# Measured on the shared datasets (README, "Augmented views"): K=2 views left hymenoptera at
# 94.8% and raised flower_photos_small from 84.0% to 85.5%, but cost one more forward pass per
# training image and view (+2.5 s cold there). The default keeps the first run fast.
DEFAULT_AUG_VIEWS = 0


def check_keys(values: dict[str, Any], cls: type) -> None:
    """Reject unknown option names, suggesting the closest known one."""
    known = [f.name for f in fields(cls)]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"unknown option '{key}'{hint}")


_PY_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def check_types(values: dict[str, Any], cls: type) -> None:
    """Reject a value of the wrong type (e.g. `epochs: ten` in a YAML file) with a one-line error."""
    declared = {f.name: str(f.type).replace(" | None", "").strip() for f in fields(cls)}
    for key, value in values.items():
        allowed = _PY_TYPES.get(declared[key])
        if value is None or allowed is None:
            continue
        if not isinstance(value, allowed) or (declared[key] != "bool" and isinstance(value, bool)):
            raise UserError(f"option '{key}' must be of type {declared[key]} (got {value!r})")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)} (got '{value}')")


def _positive(name: str, value: float | None) -> None:
    if value is None:
        return
    if value <= 0:
        raise UserError(f"--{name.replace('_', '-')} must be > 0 (got {value})")
