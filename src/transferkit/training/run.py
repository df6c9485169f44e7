"""A training run from start to end: the set-up (`setup`: every input checked, the run folder, the
context a strategy gets), the strategy, then what the run leaves (`outputs`: the bundle, the
results, the report). Also the LR range test, which shares the set-up."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..config import LRFindOptions, TrainConfig
from ..console import Console
from ..errors import UserError
from ..evaluation import metrics
from ..worker import Worker
from ..files import write_json
from ..models import bundle
from ..distributed import joined, under_torchrun
from ..doctor.health import nearest_train, quick_health, warnings as health_warnings
from . import elastic
from .context import Context, Outcome
from .options import resolve
from .outputs import cv_warning, trained_task, write_outputs
from .result import Run
from .setup import cache_for, make_context, own_rng
from .strategies.base import STRATEGIES
from ..tracking import RunEnd, RunStart, Tracking




def train(cfg: TrainConfig, console: Console, worker: Worker, started: float, checkpoint: dict | None = None) -> Run:
    """Train with the options `cfg` (not yet resolved); `checkpoint`: the interrupted run's, to
    continue from. The global torch RNG is seeded for the run and restored afterwards. A head
    fitted on cached features (the default, warm) imports no torch at all."""
    cfg = resolve(cfg)
    tracking = Tracking()
    try:
        return _train(cfg, console, worker, started, checkpoint, tracking)
    except BaseException as exc:  # the tracked run ends as failed (or killed: Ctrl-C, SIGTERM)
        tracking.finish(RunEnd(Path(), "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"))
        raise


def _train(cfg: TrainConfig, console: Console, worker: Worker, started: float, checkpoint: dict | None,
           tracking: Tracking) -> Run:
    with joined(cfg.device) as group, own_rng(), cache_for(cfg, group) as cache:
        if not group.primary:
            console = Console(quiet=True, warnings=False)  # the primary speaks for the group
        worker.warn = console.warn
        cfg, checkpoint = elastic.restarted(cfg, checkpoint, group)
        ctx = make_context(cfg, console, cache, resume=checkpoint, group=group, started=started)
        run_dir = ctx.run_dir
        if cfg.track and group.primary:  # the primary alone logs, for the group
            tracking.start(cfg.track, run_start(cfg, run_dir), console.warn)
            ctx = dataclasses.replace(ctx, observe=lambda stats: tracking.epoch(stats, len(ctx.split.train)))
        _announce(ctx, console)
        outcome = ctx.strategy.run(ctx)
        features = ctx.features.computed() if ctx.features is not None else None
        # sharded features: the val x train search for near copies runs on every rank's rows
        near = nearest_train(features) if features is not None and features.sharded else None
        if not group.primary:
            return Run(run_dir, {"rank": group.rank})  # the primary writes the run folder
        health = quick_health(outcome.split, features, cache, cfg.data, near)
        if group.distributed:
            outcome.info["distributed"] = group.describe()
    _warn_of_data(outcome, health, console)
    if outcome.fit.interrupted:
        console.warn(f"interrupted: keeping the best epoch so far ({outcome.fit.best_epoch}); "
                     f"continue with: transferkit train --resume {run_dir}")
    elif ctx.checkpoint.exists():
        ctx.checkpoint.unlink()  # finished: the bundle is what remains
    elastic.finished(cfg)
    _save_bundle(ctx, outcome)
    results = write_outputs(run_dir, outcome, ran_on(ctx, outcome), started, worker, health, ctx.engine,
                            None if cfg.no_cache else cache)
    if tracking:
        tracking.history(outcome.fit.history, outcome.fit.unit, len(outcome.split.train))
        tracking.finish(run_end(run_dir, results, outcome))
    _tell_results(results, outcome, run_dir, console)
    return Run(run_dir, results)


def _announce(ctx: Context, console: Console) -> None:
    """What trains, on what, and where the features come from."""
    cfg, group = ctx.cfg, ctx.group
    processes = f", {group.world} processes ({group.backend})" if group.distributed else ""
    trains = ctx.strategy.trains != "head"  # a network trains (in the runtime's precision), not only a head
    console.info(
        f"training {ctx.models.spec.name} ({cfg.strategy}) on {len(ctx.split.classes)} classes "
        f"({ctx.split.val_source} validation)"
        + (f", {ctx.runtime.device.type} {ctx.runtime.precision}" if trains else "") + processes
    )
    if ctx.engine is not None:
        console.info(f"features: {ctx.engine.line()}")


def _warn_of_data(outcome: Outcome, health: dict, console: Console) -> None:
    """The data's problems train saw: its quick health check's, skipped files, classes without a val image."""
    for line in health_warnings(health):
        console.warn(line)
    for item in outcome.split.skipped:
        console.warn(f"skipped {item['path']}: {item['reason']}")
    val_counts = outcome.split.label_counts(outcome.split.val)
    for name, count in zip(outcome.split.classes, val_counts):
        if count == 0:
            console.warn(f"class {name} has no validation image: its accuracy is not measured, and the averages "
                         "leave it out; add images to it (or a val/ folder)")


def _save_bundle(ctx: Context, outcome: Outcome) -> None:
    """The model bundle (model.safetensors + model.json) of what trained, in the run folder."""
    used, spec = outcome.cfg, ctx.models.spec  # auto: the options of the strategy it chose
    frozen = ctx.features_ident if STRATEGIES.get(used.strategy).trains == "head" and outcome.pre is None else None
    meta = bundle.BundleMeta(spec.name, spec.arch, outcome.split.classes, outcome.pre or ctx.pre, used.strategy,
                             used.dropout or 0.0,
                             ctx.models.info.source, ctx.models.info.sha256, ctx.models.stem,
                             features=outcome.features, frozen_features=frozen, task=trained_task(outcome),
                             ood=outcome.ood.to_dict() if outcome.ood is not None else None)
    state = outcome.state if outcome.ood is None else {**outcome.state, bundle.OOD_KEY: outcome.ood.reference}
    bundle.save(ctx.run_dir, state, meta)


def _tell_results(results: dict, outcome: Outcome, run_dir: Path, console: Console) -> None:
    """The metrics table, the calibration, a cross-validation warning and the closing line."""
    console.info(metrics.format_table(results["metrics"]))
    cal = results["metrics"].get("calibration")
    if cal and cal["before"]["ece"] is not None:
        held = outcome.info.get("calibration_images")
        source = f"{held} held-out training images" if held else "the training images' out-of-fold predictions"
        console.info(f"calibration: temperature {cal['temperature']:.3f} (fitted on {source}); val ECE "
                     f"{cal['before']['ece']:.4f} -> {cal['after']['ece']:.4f}, NLL "
                     f"{cal['before']['nll']:.4f} -> {cal['after']['nll']:.4f}")
    warning = cv_warning(results)
    if warning:
        console.warn(warning)
    kept = (f"logistic regression, {outcome.fit.best_epoch} L-BFGS iterations" if outcome.fit.unit == "iteration"
            else f"best epoch {results['best_epoch']}/{len(outcome.fit.history)}")
    skipped = f", {len(outcome.split.skipped)} skipped" if outcome.split.skipped else ""
    m = results["metrics"]
    score = (f"val mAP {m['map_macro'] or 0:.4f} (subset accuracy {results['val_acc']:.4f}, multi-label)"
             if m.get("task") == "multilabel" else f"val accuracy {results['val_acc']:.4f}")
    console.info(f"{score} ({results['num_val']} val / {results['num_train']} train "
                 f"images{skipped}), {kept}, {results['wall_s']:.1f} s\noutputs: {run_dir}")


def run_start(cfg: TrainConfig, run_dir: Path) -> RunStart:
    """What the trackers log when the run starts: every resolved option with a value, and tags."""
    from .. import __version__

    params = {k: str(v) for k, v in cfg.to_dict().items() if v is not None and k not in ("track", "quiet")}
    tags = {"transferkit.version": __version__, "backbone": cfg.model, "strategy": cfg.strategy, "data": cfg.data,
            "run_dir": str(run_dir.resolve()), **({"parent_run_dir": cfg.from_run} if cfg.from_run else {})}
    return RunStart(run_dir, run_dir.name, params, tags)


# What a tracker keeps of a run (beside the metrics): the bundle, the report and what it shows.
TRACKED_FILES = ("model.safetensors", "model.json", "config.yaml", "results.json", "metrics.json", "metrics.csv",
                 "report.html", "curves.png", "confusion_matrix.png", "confusion_matrix_normalized.png",
                 "predictions.png", "top_losses.png", "reliability.png", "pr_curves.png", "cooccurrence.png", "cooccurrence_predicted.png")


def run_end(run_dir: Path, results: dict, outcome: Outcome) -> RunEnd:
    """What the trackers log when the run has ended: the final metrics (per-class F1 as
    f1/<class>), the strategy auto chose, the data's fingerprint, the files."""
    summary = results["metrics"]
    values = {"accuracy": results["val_acc"], "balanced_accuracy": results["balanced_accuracy"],
              "macro_f1": (summary.get("macro_avg") or {}).get("f1"), "top5_accuracy": summary.get("top5_accuracy"),
              "cv_accuracy": (results.get("cv") or {}).get("accuracy"), "wall_s": results["wall_s"],
              **{k: summary.get(k) for k in ("map_macro", "map_micro", "subset_accuracy", "hamming_loss")},
              "micro_f1": (summary.get("micro_avg") or {}).get("f1"),
              **{f"ap/{name}": row.get("ap") for name, row in (summary.get("per_class") or {}).items()},
              **{f"f1/{name}": row.get("f1") for name, row in (summary.get("per_class") or {}).items()}}
    metrics = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and np.isfinite(v)}
    params = {"chosen_strategy": outcome.cfg.strategy} if results.get("strategy_reason") else {}  # auto's choice
    tags = {"data_fingerprint": results["data"]["fingerprint"], "strategy": outcome.cfg.strategy}
    return RunEnd(run_dir, "KILLED" if outcome.fit.interrupted else "FINISHED", metrics, params, tags,
                  [run_dir / name for name in TRACKED_FILES],
                  {"confusion_matrix": run_dir / "confusion_matrix.png", "top_losses": run_dir / "top_losses.png",
                   "pr_curves": run_dir / "pr_curves.png"})


def ran_on(ctx: Context, outcome: Outcome) -> tuple[str, str]:
    """(device, precision) of the kept model's numbers: a head on features, the features'
    engine's; a trained network, the runtime's."""
    if ctx.engine is not None and STRATEGIES.get(outcome.cfg.strategy).trains == "head":
        return ctx.engine.device, ctx.engine.precision
    return ctx.runtime.device.type, ctx.runtime.precision


def lr_find(cfg: TrainConfig, options: LRFindOptions, console: Console):
    """LR range test for `cfg`'s strategy: returns the result and writes `lr_find.png` and
    `lr_find.json` into a fresh run folder (or --out)."""
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    from ..data.datasets import train_loader
    from ..evaluation.plots import plot_lr_find
    from ..runtime import Runtime
    from . import lrfind
    from .losses import classification_loss
    from .network import network_setup, unfreeze_top

    cfg = resolve(cfg)
    if under_torchrun():
        raise UserError("lr-find runs in one process: start it without torchrun (or --nproc)")
    strategy = STRATEGIES.get(cfg.strategy)
    if strategy.trains == "chosen":
        raise UserError("lr-find needs a fixed --strategy (auto chooses one while training)")
    if cfg.optimizer == "lbfgs":
        raise UserError("the linear head is fitted by L-BFGS (logistic regression), which has no learning "
                        "rate: add --optimizer adamw (or adam, sgd) to find one for an epoch-trained head")
    head_only = strategy.trains == "head"
    with own_rng(), cache_for(cfg) as cache:
        ctx = make_context(cfg, console, cache, run_name=f"lr-find-{cfg.strategy}", with_features=head_only)
        if head_only:
            f = ctx.cached_features()
            x_train, y_train = torch.from_numpy(f.x_train), torch.from_numpy(f.y_train)
            torch.manual_seed(cfg.seed)
            model = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(x_train.shape[1], len(f.split.classes)))
            loader = train_loader(TensorDataset(x_train, y_train), y_train, cfg.batch_size, cfg.seed,
                                  cfg.balanced_sampler)
            groups = [{"params": list(model.parameters()), "lr": 1.0}]
            args = (model, loader, groups, classification_loss(cfg, y_train, len(f.split.classes)),
                    Runtime(torch.device("cpu"), torch.float32), lambda t: t)
            steps = options.steps or 100
        else:
            net = network_setup(ctx)
            if strategy.trains == "gradual":  # the test covers the fully unfrozen network
                unfreeze_top(net.model, net.stages, len(net.stages))
            args = (net.model, net.loader, net.groups, net.loss, ctx.runtime, net.prepare)
            steps = options.steps or 50
        result = lrfind.range_test(*args, optimizer=cfg.optimizer, weight_decay=cfg.weight_decay,
                                   start_lr=options.start_lr, end_lr=options.end_lr, steps=steps)
    run_dir = ctx.run_dir
    plot_lr_find(result.lrs, result.losses, result.suggestion, run_dir / "lr_find.png")
    write_json(run_dir / "lr_find.json", result.to_dict())
    console.info(f"suggested learning rate for --optimizer {cfg.optimizer}: {result.suggestion:.2e} "
                 f"(steepest loss descent, {len(result.lrs)} steps)\nplot: {run_dir / 'lr_find.png'}")
    return result
