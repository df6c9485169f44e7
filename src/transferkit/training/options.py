"""Training options resolved against the strategies: each strategy's defaults filled in, an option
the chosen strategy does not take refused in one line, the data and the trackers checked, all
before any work starts (`resolve`); auto's options once it has chosen (`for_strategy`); a run's
saved config.yaml read back (`read_saved`); and the defaults --help shows per strategy. `config`
declares the options; the strategies declare which they take (`Strategy.options`, `defaults`).
No torch here.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import fields
from pathlib import Path

from ..config import TrainConfig, check_values, flag, read_yaml
from ..errors import UserError
from ..tracking.registry import TRACKERS
from .strategies.base import STRATEGIES, Strategy


def resolve(cfg: TrainConfig) -> TrainConfig:
    """A copy of `cfg` with the strategy's defaults filled in, validated (`validate`).

    Raises:
        UserError: a bad value, or an option the strategy does not take.
    """
    strategy = validate(cfg)
    cfg = dataclasses.replace(cfg)
    if strategy.weights is not None:
        if cfg.weights not in (None, strategy.weights):
            raise UserError(f"--strategy {strategy.name} trains from random weights (--weights "
                            f"{strategy.weights}): drop --weights")
        cfg.weights = strategy.weights
    elif cfg.weights is None:
        cfg.weights = "imagenet"
    optimizer = cfg.optimizer or strategy.defaults.get("optimizer")
    for key, value in strategy.defaults_for(cfg.optimizer).items():
        if getattr(cfg, key) is None and applies(key, strategy, optimizer):
            setattr(cfg, key, value)
    return cfg


def validate(cfg: TrainConfig) -> Strategy:
    """Check every value of `cfg` and that each option given applies to its strategy; `cfg.data`
    and `cfg.labels` are made absolute (a label table's dataset found). Returns the strategy's
    registry entry.

    Raises:
        UserError: the first problem, in one line.
    """
    if not cfg.data:
        raise UserError("no dataset folder given")
    check_values(cfg)
    from ..cache import parse_size
    from ..data.table import resolve_data

    cfg.data, cfg.labels = resolve_data(cfg.data, cfg.labels, cfg)
    if cfg.add:  # (absolute: the run's config.yaml names the same file from wherever it is resumed)
        cfg.add = str(Path(cfg.add).expanduser().absolute())
    if cfg.name is not None and (not cfg.name.strip() or cfg.name in (".", "..") or "/" in cfg.name
                                 or os.sep in cfg.name or "\0" in cfg.name):
        raise UserError(f"--name {cfg.name!r} must be a folder name (no /, not . or ..): the run goes in "
                        "--runs-dir; give --out PATH for a folder elsewhere")
    strategy = STRATEGIES.get(cfg.strategy)
    optimizer = cfg.optimizer or strategy.defaults.get("optimizer")
    if cfg.optimizer is not None and cfg.optimizer not in strategy.optimizers:
        if cfg.optimizer == "lbfgs":
            raise UserError(f"--optimizer lbfgs fits only the linear head on cached features, "
                            f"not --strategy {strategy.name}")
        raise UserError(f"--strategy {strategy.name} takes --optimizer {' | '.join(strategy.optimizers)}")
    for f in fields(cfg):
        if getattr(cfg, f.name) is not None and not applies(f.name, strategy, optimizer):
            raise UserError(_not_applicable(f.name, strategy))
    for name in strategy.required:
        if getattr(cfg, name) is None:
            raise UserError(f"--strategy {strategy.name} needs {flag(name)}: {_help(name)}")
    parse_size(cfg.cache_limit)  # one line now for a size it cannot read
    for name in (cfg.track or "").split(","):
        if name:
            TRACKERS.get(name).check()  # its library is installed: one line now, not a warning later
    return strategy


def for_strategy(cfg: TrainConfig, name: str) -> TrainConfig:
    """`cfg` resolved for strategy `name`, less the options that do not apply to it (auto: its
    options, once it has chosen)."""
    return resolve(_pruned(cfg, STRATEGIES.get(name)))


def read_saved(path: str | Path) -> TrainConfig:
    """A run's own config.yaml: written by this or an earlier version, which stored a value for
    every option, those the strategy does not take included; these are dropped."""
    values = read_yaml(path)
    cfg = TrainConfig.from_mapping({k: v for k, v in values.items() if k in {f.name for f in fields(TrainConfig)}})
    return _pruned(cfg, STRATEGIES.get(cfg.strategy))


def _pruned(cfg: TrainConfig, strategy: Strategy) -> TrainConfig:
    cfg = dataclasses.replace(cfg, strategy=strategy.name)
    if cfg.optimizer is not None and cfg.optimizer not in strategy.optimizers:
        cfg.optimizer = None
    optimizer = cfg.optimizer or strategy.defaults.get("optimizer")
    for f in fields(cfg):
        if not applies(f.name, strategy, optimizer):
            setattr(cfg, f.name, None)
    return cfg


def applies(name: str, strategy: Strategy, optimizer: str | None) -> bool:
    """Whether option `name` means something for `strategy` trained with `optimizer`."""
    if name in strategy_options() and name not in strategy.options:
        return False
    meta = {f.name: f.metadata for f in fields(TrainConfig)}[name]
    return not (meta.get("epochs") and optimizer == "lbfgs")


def strategy_options() -> dict[str, list[str]]:
    """Each strategy-specific option and the strategies that take it."""
    owners: dict[str, list[str]] = {}
    for s in STRATEGIES:
        for name in s.options:
            owners.setdefault(name, []).append(s.name)
    return owners


def _not_applicable(name: str, strategy: Strategy) -> str:
    owners = strategy_options().get(name)
    if owners:
        return f"{flag(name)} applies only to --strategy {' | '.join(owners)}, not {strategy.name}"
    return (f"{flag(name)} does not apply to the logistic-regression head (--optimizer lbfgs, the default of "
            f"--strategy linear), which is fitted to convergence; add --optimizer adamw to train the head for epochs")


def _help(name: str) -> str:
    return {f.name: f.metadata.get("help", "") for f in fields(TrainConfig)}[name]


def strategy_defaults(f: dataclasses.Field) -> str:
    """The default --help shows for a training option left None: each strategy's value (for the
    linear head also its value when trained for epochs), or "none"."""
    values: dict[str, list[str]] = {}
    for s in STRATEGIES:
        optimizers = [None] + (["adamw"] if s.defaults.get("optimizer") == "lbfgs" else [])
        for optimizer in optimizers:
            if optimizer is not None and f.name == "optimizer":
                continue
            label = s.name if optimizer is None else f"{s.name} --optimizer adamw"
            default_opt = optimizer or s.defaults.get("optimizer")
            if f.name in s.defaults and applies(f.name, s, default_opt):
                value = s.defaults_for(optimizer)[f.name]
                text = "cross-validated" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
                values.setdefault(text, []).append(label)
    if not values:
        return "none"
    return "; ".join(f"{v} ({', '.join(names)})" for v, names in values.items())
