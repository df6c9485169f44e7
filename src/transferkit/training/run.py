"""A training run from start to end: check every input, make the run folder, run the strategy,
write the bundle, the results and the report. Also the LR range test, which shares the set-up."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..cache import CACHE_FLAG, Cache
from ..config import LRFindOptions, TrainConfig
from ..console import Console
from .. import engines
from ..data.discover import OWN_MARKER, discover, is_own_output
from ..data.table import table_of
from ..data.views import SMALL
from ..errors import UserError
from ..evaluation import memo, metrics
from ..evaluation.report import read_summary, render_page
from ..worker import EVALUATE_AND_PLOT, WRITE_EVALUATION, Worker
from ..files import claim_out, fresh_dir, refuse_inside, shown, write_json
from ..runs import OUTPUT_FILES
from ..models import backbones, bundle
from ..models.lazy import LazyClassifier, identify_weights
from ..distributed import Group, check_sync_bn, joined, under_torchrun
from ..machine import default_workers
from ..doctor.health import nearest_train, quick_health, warnings as health_warnings
from . import elastic
from .checkpoint import load_checkpoint
from .context import CachedFeatures, Context, Outcome
from .options import for_strategy, read_saved, resolve
from .parent import Parent
from ..features.dataset import features_key, int8_key
from .result import Run
from .strategies.base import RECIPE_OPTIONS, STRATEGIES
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
    with joined(cfg.device) as group, _own_rng(), _cache_for(cfg, group) as cache:
        if not group.primary:
            console = Console(quiet=True, warnings=False)  # the primary speaks for the group
        worker.warn = console.warn
        cfg, checkpoint = elastic.restarted(cfg, checkpoint, group)
        ctx = make_context(cfg, console, cache, resume=checkpoint, group=group, started=started)
        run_dir = ctx.run_dir
        if cfg.track and group.primary:  # the primary alone logs, for the group
            tracking.start(cfg.track, run_start(cfg, run_dir), console.warn)
            ctx = dataclasses.replace(ctx, observe=lambda stats: tracking.epoch(stats, len(ctx.split.train)))
        spec = ctx.models.spec
        processes = f", {group.world} processes ({group.backend})" if group.distributed else ""
        trains = ctx.strategy.trains != "head"  # a network trains (in the runtime's precision), not only a head
        console.info(
            f"training {spec.name} ({cfg.strategy}) on {len(ctx.split.classes)} classes "
            f"({ctx.split.val_source} validation)"
            + (f", {ctx.runtime.device.type} {ctx.runtime.precision}" if trains else "") + processes
        )
        if ctx.engine is not None:
            console.info(f"features: {ctx.engine.line()}")
        outcome = ctx.strategy.run(ctx)
        features = ctx.features.computed() if ctx.features is not None else None
        # sharded features: the val x train search for near copies runs on every rank's rows
        near = nearest_train(features) if features is not None and features.sharded else None
        if not group.primary:
            return Run(run_dir, {"rank": group.rank})  # the primary writes the run folder
        health = quick_health(outcome.split, features, cache, cfg.data, near)
        if group.distributed:
            outcome.info["distributed"] = group.describe()
    for line in health_warnings(health):
        console.warn(line)
    for item in outcome.split.skipped:
        console.warn(f"skipped {item['path']}: {item['reason']}")
    val_counts = outcome.split.label_counts(outcome.split.val)
    for name, count in zip(outcome.split.classes, val_counts):
        if count == 0:
            console.warn(f"class {name} has no validation image: its accuracy is not measured, and the averages "
                         "leave it out; add images to it (or a val/ folder)")
    if outcome.fit.interrupted:
        console.warn(f"interrupted: keeping the best epoch so far ({outcome.fit.best_epoch}); "
                     f"continue with: transferkit train --resume {run_dir}")
    elif ctx.checkpoint.exists():
        ctx.checkpoint.unlink()  # finished: the bundle is what remains
    elastic.finished(cfg)
    used = outcome.cfg  # auto: the options of the strategy it chose
    frozen = ctx.features_ident if STRATEGIES.get(used.strategy).trains == "head" and outcome.pre is None else None
    meta = bundle.BundleMeta(spec.name, spec.arch, outcome.split.classes, outcome.pre or ctx.pre, used.strategy,
                             used.dropout or 0.0,
                             ctx.models.info.source, ctx.models.info.sha256, ctx.models.stem,
                             features=outcome.features, frozen_features=frozen, task=trained_task(outcome),
                             ood=outcome.ood.to_dict() if outcome.ood is not None else None)
    state = outcome.state if outcome.ood is None else {**outcome.state, bundle.OOD_KEY: outcome.ood.reference}
    bundle.save(run_dir, state, meta)
    results = write_outputs(run_dir, outcome, ran_on(ctx, outcome), started, worker, health, ctx.engine,
                            None if cfg.no_cache else cache)
    if tracking:
        tracking.history(outcome.fit.history, outcome.fit.unit, len(outcome.split.train))
        tracking.finish(run_end(run_dir, results, outcome))
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
    return Run(run_dir, results)


def trained_task(outcome: Outcome):
    """The kept model's task: the data's, with the thresholds chosen for it (multi-label) or its
    calibrating temperature (single-label)."""
    task = outcome.split.task
    if task.multi and outcome.thresholds is not None:
        return task.with_thresholds(outcome.thresholds)
    return task.with_temperature(outcome.temperature) if outcome.temperature is not None else task


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


def _own_rng():
    """The run may seed and draw from the global torch RNG (model init, dropout, loaders without a
    generator); it is put back as it was afterwards, so a caller's own random stream is not
    disturbed. A caller that has not imported torch has no stream to disturb (and a warm head
    on cached features never imports it)."""
    if "torch" not in sys.modules:
        return contextlib.nullcontext()
    import torch

    return torch.random.fork_rng(devices=[])


def ran_on(ctx: Context, outcome: Outcome) -> tuple[str, str]:
    """(device, precision) of the kept model's numbers: a head on features, the features'
    engine's; a trained network, the runtime's."""
    if ctx.engine is not None and STRATEGIES.get(outcome.cfg.strategy).trains == "head":
        return ctx.engine.device, ctx.engine.precision
    return ctx.runtime.device.type, ctx.runtime.precision


@contextlib.contextmanager
def _cache_for(cfg: TrainConfig, group: Group | None = None):
    """The cache: the user's, or with --no-cache a temporary one removed afterwards."""
    group = group or Group()
    if not cfg.no_cache:
        cache = Cache(cfg.cache_dir)
        refuse_inside(cache.root, [cfg.data] if cfg.data else [], CACHE_FLAG)
        yield _prepared(cache, group)
        return
    with tempfile.TemporaryDirectory(prefix="transferkit-") as tmp:
        yield _prepared(Cache(tmp), group)
        group.barrier()  # no rank removes it while another still reads from it


def _prepared(cache: Cache, group: Group) -> Cache:
    """`cache.prepare()`, by one rank per node first (the others would find it half-made)."""
    if group.writes_cache:
        cache.prepare()
    group.barrier()
    return cache if group.writes_cache else cache.prepare()


def make_context(cfg: TrainConfig, console: Console, cache: Cache, run_name: str | None = None,
                 with_features: bool | None = None, resume: dict | None = None, group: Group | None = None,
                 started: float | None = None) -> Context:
    """Check every user input (data, model, weights, options), then make the run folder and the
    strategy's context; `with_features` (default: the strategy declares it uses cached features)
    starts the feature pass. In a group the primary makes the run folder; every rank checks the
    inputs (each reads the data itself). `started`: the command's start (`time.perf_counter()`;
    default: now), from which auto's --budget counts."""
    started = time.perf_counter() if started is None else started
    group = group or Group()
    strategy = STRATEGIES.get(cfg.strategy)
    spec = backbones.get(cfg.model)
    device = group.device(cfg.device)
    if cfg.sync_bn:
        from ..runtime import Runtime

        check_sync_bn(cfg.sync_bn, group, Runtime.create(device, cfg.precision).device)
    split = discover(cfg.data, cfg.val_fraction, cfg.seed, cache.datasets(), table_of(cfg), cfg.task, cfg.label_delim)
    split = adjusted_split(cfg, split, console)
    if cfg.loss != "bce" and not split.task.multi:
        raise UserError(f"--loss {cfg.loss} is for multi-label data; this dataset has one label per image (its loss is "
                        "the cross-entropy)")
    if split.task.multi:
        refuse_for_multilabel(cfg, strategy)
        if split.merged:
            console.info(f"{split.merged} image(s) are listed on several rows with other labels: each is one image "
                         "with every label its rows give (multi-label)")
    # Without pretrained weights, images of a fixed small size (CIFAR) are used at that size.
    size = cfg.image_size or (split.image_size if cfg.weights == "none" else None)
    upscaled = size is None and strategy.trains not in ("head", "chosen") and cfg.weights != "none"
    pre = network_preprocess(spec, split) if upscaled else spec.with_input_size(size)
    stem = cfg.stem if cfg.stem != "auto" else (
        "small" if cfg.weights == "none" and pre.input_size <= 64 and backbones.has_small_stem(spec) else "standard")
    weights = identify_weights(spec, cfg.weights, cfg.seed)
    uses_features = strategy.uses_features if with_features is None else with_features
    # the engine that extracts features, chosen by the primary for the group (the same precision everywhere)
    images = len(split.train) * (1 + (cfg.aug_views or 0)) + len(split.val)
    engine = group.decide(lambda: engines.choose(cfg.engine, device, cfg.precision, images)) if uses_features else None
    # (a network strategy's backbone weights are cached under its training precision's key; INT8
    # features under their quantized network's, `int8_key` below)
    key = features_key(spec, stem, weights.identity, pre, engine.network_precision if engine
                       else _training_precision(device, cfg))
    workers = default_workers() if cfg.workers is None else cfg.workers
    # --features auto | multi: the earlier stages' pooled activations are extracted too (one pass)
    multi = cfg.features == "multi" or (cfg.features == "auto" and spec.has_multi_layer)
    if multi and not spec.has_multi_layer:
        raise UserError(f"--features multi needs a timm backbone (its feature_info names the stages); "
                        f"{spec.name} is built by torchvision")
    if cfg.drop_path and spec.family != "timm":
        raise UserError(f"--drop-path needs a timm backbone (efficientnet_lite*, timm:<name>); {spec.name} is built "
                        f"by torchvision")
    if strategy.trains != "head":  # random weights (scratch, a new head) are the same for a seed
        import torch

        torch.manual_seed(cfg.seed)
    models = LazyClassifier(spec, len(split.classes), cfg.weights, cfg.dropout or 0.0, cache.backbone_file(key), stem,
                            "multi" if multi else "last", cfg.seed, cfg.drop_path or 0.0)
    key = int8_key(engine, key, multi, pre, models, cache, [s.path for s in split.train], console, group)
    features = None
    if uses_features:
        # Images whose features are missing start decoding now, while the network is built, in at
        # least one worker process even on 2 cores: it overlaps the build and then the forward
        # (measured, 2 cores, ants/bees cold: 9.2-10.4 s with none, 7.7 s with one; 4x the images:
        # 24.3 s vs 20.8 s).
        features = CachedFeatures.for_key(split, key, multi, pre, models, engine, cache, console, cfg.aug_views or 0,
                                          cfg.seed, max(1, workers) if cfg.workers is None else workers, group,
                                          sharded=shards_features(cfg) and not split.task.multi, data=cfg.data)
    models.prepare()  # weights that do not fit the architecture fail here, before any output
    if cfg.teacher is not None:
        from .teacher import check_teacher

        check_teacher(cfg.teacher, split.classes)
    parent = Parent.of(cfg, split.classes, split.task.multi)
    if parent is not None and group.primary:
        for line in parent.lines(strategy.name):
            (console.warn if line.startswith("warning: ") else console.info)(line.removeprefix("warning: "))
    def new_run_dir() -> Path:
        run_dir = make_run_dir(cfg, run_name)
        cfg.to_yaml(run_dir / "config.yaml")  # written first: --resume reads it
        elastic.started(cfg, run_dir)
        return run_dir

    return Context(cfg=cfg, split=split, models=models, pre=pre, device=device, cache=cache, workers=workers,
                   console=console, features=features, run_dir=group.decide(new_run_dir), engine=engine,
                   features_ident={"features": key, "multi": multi} if uses_features else None, resume=resume,
                   group=group, started=started, parent=parent)


def adjusted_split(cfg: TrainConfig, split, console: Console):
    """`split` as the options change it, each change said in a line: the images --exclude leaves
    out, the decisions of --fixes, the labelled images --add adds (`data.added`)."""
    if cfg.exclude:
        from ..data.exclude import read_exclude

        split = split.excluding(read_exclude(cfg.exclude), str(Path(cfg.exclude).expanduser().absolute()))
        console.info(f"left out {split.excluded['images']} image(s) listed in {cfg.exclude}"
                     + (f" ({split.excluded['not_found']} listed path(s) not in the dataset)"
                        if split.excluded["not_found"] else ""))
    if cfg.fixes:
        from ..data.fixes import apply_fixes, read_fixes

        source = str(Path(cfg.fixes).expanduser().absolute())
        split = apply_fixes(split, read_fixes(cfg.fixes, cfg.data), cfg.data, source)
        f = split.fixes
        console.info(f"applied the fixes in {cfg.fixes}: {f['excluded']} image(s) left out, {f['relabelled']} "
                     "relabelled" + (f" ({f['not_found']} listed path(s) not in the dataset)" if f["not_found"] else ""))
        split.check_not_empty()
    if cfg.add:
        from ..data.added import add_images, summary

        split = add_images(split, cfg.add, cfg.val_fraction, cfg.seed, cfg.label_delim)
        line, warnings = summary(split.added)
        console.info(line)
        for warning in warnings:
            console.warn(warning)
    return split


def refuse_for_multilabel(cfg: TrainConfig, strategy) -> None:
    """One line for what multi-label training does not take: MixUp/CutMix (they mix class
    indices into one-hot targets), distillation (a softmax teacher), and sharded features."""
    if cfg.mixup or cfg.cutmix:
        raise UserError("--mixup and --cutmix mix single labels: leave them out for multi-label data")
    if strategy.name == "distill":
        raise UserError("--strategy distill learns a softmax teacher's class probabilities: not for multi-label "
                        "data; train the small backbone with --strategy auto (or lp-ft, finetune)")
    if cfg.loss == "asl" and strategy.trains == "head" and cfg.optimizer == "lbfgs":
        raise UserError("--loss asl is for training networks (or a head with --optimizer adamw): the logistic "
                        "regression head minimizes the log loss")


# Pretrained networks trained on small images (<= views.SMALL px) get them upsampled
# SMALL_IMAGE_UPSCALE times, not to the backbone's full size: a 32 px image holds no more detail at
# 224 px, and training steps at 128 px cost a third of those at 224 (CIFAR-10: README, accuracy).
SMALL_IMAGE_UPSCALE = 4


def network_preprocess(spec, split):
    """The preprocessing for training a pretrained `spec` on `split`: the backbone's, or for small
    images `network_input_size`'s size with the whole image in view (no center crop)."""
    size = network_input_size(split, spec.preprocess.input_size)
    pre = spec.with_input_size(size)
    return dataclasses.replace(pre, crop_pct=1.0) if size is not None else pre


def _training_precision(device: str, cfg: TrainConfig) -> str:
    from ..runtime import Runtime

    return Runtime.create(device, cfg.precision).precision


def context_at(ctx: Context, pre) -> Context:
    """`ctx` with another preprocessing (auto's fine-tuning candidate on small images): its own
    cached features, the same classifier, data and run folder."""
    if pre == ctx.pre:
        return ctx
    engine = ctx.engine or ctx.group.decide(lambda: engines.choose(
        ctx.cfg.engine, ctx.group.device(ctx.cfg.device), ctx.cfg.precision,
        len(ctx.split.train) * (1 + (ctx.cfg.aug_views or 0)) + len(ctx.split.val)))
    key = features_key(ctx.models.spec, ctx.models.stem, ctx.models.info.identity, pre,
                       engine.network_precision)
    multi = ctx.models.features == "multi"
    key = int8_key(engine, key, multi, pre, ctx.models, ctx.cache, [s.path for s in ctx.split.train], ctx.console,
                   ctx.group)
    features = CachedFeatures.for_key(ctx.split, key, multi, pre, ctx.models, engine, ctx.cache, ctx.console,
                                      ctx.cfg.aug_views or 0, ctx.cfg.seed, max(1, ctx.workers), ctx.group,
                                      sharded=ctx.features is not None and ctx.features.sharded, data=ctx.cfg.data)
    return dataclasses.replace(ctx, pre=pre, features=features)


def shards_features(cfg: TrainConfig) -> bool:
    """Whether a group's features stay sharded, each rank holding its share (#31): where the head
    fitted on them is the logistic regression, which is data-parallel (linear and auto with
    --optimizer lbfgs, LP-FT's probe); an epoch-trained head gets every feature on every rank."""
    optimizer = for_strategy(cfg, "linear").optimizer if cfg.strategy == "auto" else cfg.optimizer
    return cfg.strategy == "lp-ft" or optimizer == "lbfgs"


def network_input_size(split, default: int) -> int | None:
    """The input size for training a pretrained network on `split`: None (the backbone's) unless
    its images are small, then SMALL_IMAGE_UPSCALE x their typical short side, a multiple of 32."""
    from ..data.decode import typical_short_side

    side = split.image_size or typical_short_side([s.path for s in split.train])
    if side is None or side > SMALL:
        return None
    return min(default, max(64, -(-side * SMALL_IMAGE_UPSCALE // 32) * 32))


def resume_config(run: str, data, options: dict) -> tuple[TrainConfig, dict]:
    """The interrupted run's own options (its config.yaml), with the options given now on top
    (e.g. more --epochs), and its last checkpoint."""
    run_dir = Path(run).expanduser()
    ckpt = run_dir / "checkpoint.pt"
    missing = [name for name in ("config.yaml", "checkpoint.pt") if not (run_dir / name).is_file()]
    if missing:
        raise UserError(f"nothing to resume in {run_dir}: it has no {' and no '.join(missing)} "
                        "(a finished run keeps no checkpoint)")
    saved = read_saved(run_dir / "config.yaml").to_dict()
    given = {k: v for k, v in options.items() if k != "resume"}
    if data is not None and str(Path(data).expanduser().absolute()) != saved["data"]:
        raise UserError(f"{run_dir} was trained on {saved['data']}; resume it without a DATA folder")
    cfg = TrainConfig.from_mapping({**saved, **given, "out": str(run_dir), "resume": str(run_dir)})
    try:
        checkpoint = load_checkpoint(ckpt)
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint is a user-facing condition
        raise UserError(f"{ckpt} cannot be read ({str(exc).splitlines()[0]})") from None
    return cfg, checkpoint


# What a run folder holds of an earlier run's that a new run into the same folder would leave
# beside its own model: removed first (export/ and eval-*/ only when they are transferkit's).
RUN_FILES = OUTPUT_FILES


def make_run_dir(cfg: TrainConfig, run_name: str | None = None) -> Path:
    """The run folder: --out (new, empty, or a transferkit run) or a fresh folder under
    --runs-dir; never inside the dataset. Reusing a finished run's folder removes that run's
    files first, so nothing of the old model survives beside the new one; an unfinished run's
    folder is only continued (--resume), never silently overwritten."""
    default = f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model.replace(':', '-')}-{run_name or cfg.strategy}"
    target = Path(cfg.out).expanduser() if cfg.out else Path(cfg.runs_dir).expanduser() / (cfg.name or default)
    data = Path(cfg.data).resolve()
    if target.resolve() == data or data in target.resolve().parents:
        raise UserError(f"the run folder {target} would be inside the dataset {data}, where its files would "
                        "become training images; give --out (or --runs-dir) outside it")
    if not cfg.out:
        target.parent.mkdir(parents=True, exist_ok=True)
        (target.parent / OWN_MARKER).touch()  # a folder of runs: never taken as a class
        return fresh_dir(target)
    _refuse_folder_of_runs(target)
    run_dir = claim_out(target, (OWN_MARKER, "model.json", "checkpoint.pt"), "a transferkit run")
    if cfg.resume is None:
        if (run_dir / "checkpoint.pt").exists():
            raise UserError(f"{run_dir} holds an unfinished run (checkpoint.pt): continue it with "
                            f"`transferkit train --resume {run_dir}`, or delete {run_dir / 'checkpoint.pt'} to start over")
        _remove_earlier_run(run_dir)
    (run_dir / OWN_MARKER).touch()
    return run_dir


def _refuse_folder_of_runs(target: Path) -> None:
    """--out naming a folder that holds runs (runs/ itself): training there would take it over."""
    from ..runs import is_run

    if not target.is_dir():
        return
    try:
        held = next((p for p in target.iterdir() if not p.name.startswith(".") and p.is_dir() and is_run(p)), None)
    except OSError:
        return
    if held is not None:
        raise UserError(f"--out {shown(target)} is a folder of runs (it holds {shown(held.name)}): give a new folder "
                        f"for this run, e.g. --out {shown(target / 'my-run')}, or --runs-dir {shown(target)}")


def _remove_earlier_run(run_dir: Path) -> None:
    import shutil

    from ..runs import remove_own_folders

    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    remove_own_folders(run_dir)
    for folder in [run_dir / "export", run_dir / "tensorboard", *run_dir.glob("eval-*")]:
        if folder.is_dir() and is_own_output(folder):
            shutil.rmtree(folder)


def write_outputs(run_dir: Path, outcome: Outcome, ran_on: tuple[str, str], started: float, worker: Worker,
                  health: dict | None = None, engine: engines.Choice | None = None, cache: Cache | None = None) -> dict:
    """results.json, metrics.csv, split.json, the model's conversions for ONNX Runtime (`carry`),
    and by `worker` the evaluation files and (unless --no-report) the report. `ran_on`: (device,
    precision) of the kept model's numbers; `engine`: what extracted the features, if any; `cache`:
    the run's (None: a temporary one, --no-cache)."""
    cfg, split, fit = outcome.cfg, outcome.split, outcome.fit
    y_val = split.targets(split.val)
    logits = outcome.val_logits
    logits = logits.detach().float().cpu().numpy() if hasattr(logits, "detach") else np.asarray(logits, np.float32)
    task = trained_task(outcome)

    def label(s):
        return list(s.labels) if task.multi else s.label

    write_json(run_dir / "split.json", {  # (first: converting the model to explain checks it on these images)
        "val_source": split.val_source, "seed": cfg.seed, "val_fraction": cfg.val_fraction,
        "classes": split.classes, "task": task.to_dict(),
        "train": [[s.path, label(s)] for s in split.train],
        "val": [[s.path, label(s)] for s in split.val],
    })
    paths = [s.path for s in split.val]
    extra = {"skipped_files": split.skipped, "data_health": health}
    threshold = outcome.ood.threshold if outcome.ood is not None else None
    metrics.write_history_csv(run_dir / "metrics.csv", fit.history, fit.unit)  # config.yaml is already there
    # a run that would write the same evaluation and report files copies them (`evaluation.memo`)
    store = cache.reports() if cache is not None else None
    evaluation = memo.key(paths, {"y": np.asarray(y_val), "logits": logits, "ood": outcome.val_ood},
                          {"classes": split.classes, "task": task.to_dict(), "extra": extra, "threshold": threshold,
                           "best_epoch": fit.best_epoch, "unit": fit.unit,
                           "history": [(h.epoch, h.train_loss, h.train_acc, h.val_loss, h.val_acc)
                                       for h in fit.history]})
    digest = memo.with_model(evaluation, run_dir)
    kept = memo.restore(store, digest, run_dir, report=not cfg.no_report)  # (--no-report: its evaluation files)
    if kept is None and cfg.no_report:
        digest = evaluation
        kept = memo.restore(store, digest, run_dir, report=False)
    with contextlib.ExitStack() as stack:
        if kept is None:  # the evaluation (and the plots) in the worker, while this process makes the heatmaps
            evaluated = worker.submit(EVALUATE_AND_PLOT if not cfg.no_report else WRITE_EVALUATION, run_dir, paths,
                                      np.asarray(y_val), logits, split.classes, extra, task.to_dict(), outcome.val_ood,
                                      threshold, *((results_epoch(fit),) if not cfg.no_report else ()))
        if cache is None:  # (--no-cache: what converting makes goes into a temporary cache, never the user's)
            cache = Cache(stack.enter_context(tempfile.TemporaryDirectory(prefix="transferkit-"))).prepare()
        if not cfg.no_report and kept is None:  # the heatmaps of the most confidently wrong images, while the worker evaluates
            from ..evaluation.explained import report_heatmaps
            from ..evaluation.rows import as_records, prediction_rows

            with _own_rng():  # (building the model to explain draws initial weights: not from the caller's stream)
                report_heatmaps(run_dir, run_dir, worker.warn, rows=as_records(*prediction_rows(
                    paths, y_val, logits, split.classes, task, outcome.val_ood)), multi=task.multi, cache=cache)
        with _own_rng():
            carry(run_dir, cache, worker.warn)
    if kept is None:
        summary, note = evaluated() if not cfg.no_report else (evaluated(), None)
    else:
        summary, note = read_summary(run_dir), kept

    results = {
        "val_acc": summary["accuracy"],
        "cv": cross_validation(outcome),
        "balanced_accuracy": summary["balanced_accuracy"],
        "best_epoch": results_epoch(fit),
        "epochs_run": len(fit.history) if fit.unit == "epoch" else None,
        "head_iterations": fit.best_epoch if fit.unit == "iteration" else None,
        "stopped_early": fit.stopped_early,
        "interrupted": fit.interrupted,
        "stopped_by": fit.stopped_by,
        "strategy": cfg.strategy,
        "strategy_reason": outcome.info.get("strategy_reason"),
        "backbone": cfg.model,
        "features": outcome.features,
        "recipe": {k: getattr(cfg, k) for k in RECIPE_OPTIONS if getattr(cfg, k) is not None} or None,
        "head": outcome.info.get("head"),
        "classes": split.classes,
        "task": task.to_dict(),
        "num_train": len(split.train),
        "num_val": len(split.val),
        "val_source": split.val_source,
        "data": {"path": cfg.data, "fingerprint": split.fingerprint(cfg.data)},
        "skipped_files": split.skipped,
        "excluded": split.excluded,
        "fixes": split.fixes,
        "added": split.added,
        "data_health": health,
        "device": ran_on[0],
        "precision": ran_on[1],
        "engine": engine.to_dict() if engine is not None else None,
        "distributed": outcome.info.get("distributed"),
        "metrics": summary,
        "strategy_info": outcome.info,
        "parent": parent.record(cfg.strategy) if (parent := Parent.of(cfg, split.classes, task.multi)) else None,
        "wall_s": round(time.perf_counter() - started, 3),
        "cpu_s": round(_cpu_seconds(), 3),
        "finished_at": round(time.time(), 3),  # Unix time (`transferkit runs` lists by it)
    }
    write_json(run_dir / "results.json", results)
    if not cfg.no_report:
        render_page(run_dir, note)  # misclassified.csv, report.html (the plots are drawn)
    if kept is None:
        memo.keep(store, digest, run_dir, None if cfg.no_report else note)
    return results


def results_epoch(fit) -> int | None:
    """results.json's best_epoch (the epoch the curves mark): the kept epoch of an epoch-trained
    fit; None for the logistic head (its history counts iterations)."""
    return fit.best_epoch if fit.unit == "epoch" else None


def carry(run_dir: Path, cache: Cache, warn) -> None:
    """The run folder gets the conversions its inference needs (`engines.ort.carry_networks`), so
    that it predicts and serves where torch is not installed; one warning where it cannot."""
    import importlib.util

    from ..engines.ort import carry_networks

    if importlib.util.find_spec("onnxruntime") is None:
        return  # (nothing runs the conversions here: inference is PyTorch's)
    try:
        carry_networks(run_dir, cache)
    except UserError as exc:
        warn(f"the run folder holds no model converted for ONNX Runtime ({exc}): predicting with it needs torch")


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its children that have ended (the
    decoding and loader workers); under torchrun, the primary's."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# The head's cross-validated accuracy more than this above its val accuracy: a warning (the
# training images resemble each other more than the val images resemble them).
CV_OPTIMISM = 0.05


def cross_validation(outcome: Outcome) -> dict | None:
    """The head's cross-validation on the training images (kept beside the val accuracy in
    results.json): its accuracy, folds, images, and the groups of near-identical images kept in
    one fold. None where no head was cross-validated. `estimates`: whether the kept model is
    the cross-validated head (not a fine-tuned network)."""
    head = outcome.info.get("head")
    if not head or head.get("cv_accuracy") is None:
        return None
    return {"accuracy": head["cv_accuracy"], "measure": "mAP" if outcome.split.task.multi else "accuracy",
            "folds": head["folds"], "images": head.get("cv_images"),
            "groups": head.get("cv_groups"), "grouped_images": head.get("cv_grouped_images", 0),
            "estimates": "the kept model" if STRATEGIES.get(outcome.cfg.strategy).trains == "head" or
            outcome.info.get("kept") == "probe" else "the head on frozen features"}


def cv_warning(results: dict) -> str | None:
    """A line when the head's cross-validated accuracy exceeds the val accuracy by more than
    CV_OPTIMISM (and the val split is big enough to say so)."""
    cv = results.get("cv")
    if not cv or cv["estimates"] != "the kept model" or results["num_val"] < 20:
        return None
    # (multi-label: the cross-validation measures mAP, so the val mAP is its counterpart)
    summary = results.get("metrics") or {}
    val = summary.get("map_macro") if summary.get("task") == "multilabel" else results["val_acc"]
    if val is None:
        return None
    gap = cv["accuracy"] - val
    if gap <= CV_OPTIMISM:
        return None
    return (f"the head cross-validates at {cv['accuracy']:.1%} on the training images but scores {val:.1%} "
            f"on val ({gap * 100:.1f} points lower): the val images differ from the training images more than these "
            f"differ from each other ({cv['groups']} groups of near-identical shots were kept apart in the folds); "
            "trust the val figure, and check the split (`transferkit doctor`)")


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
    with _own_rng(), _cache_for(cfg) as cache:
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
