"""A run's set-up, before its strategy trains: the options checked against the data, the split
adjusted (--exclude, --fixes, --add), the cache, the engine and the precision, the run folder made
(never inside the data, never over another run), and the `Context` a strategy gets."""
from __future__ import annotations

import contextlib
import dataclasses
import sys
import tempfile
import time
from pathlib import Path


from ..cache import CACHE_FLAG, Cache
from ..config import TrainConfig
from ..console import Console
from .. import engines
from ..data.discover import OWN_MARKER, discover, is_own_output
from ..data.table import table_of
from ..data.views import SMALL
from ..errors import UserError
from ..files import claim_out, fresh_dir, refuse_inside, shown
from ..runs import OUTPUT_FILES
from ..models import backbones
from ..models.lazy import LazyClassifier, identify_weights
from ..distributed import Group, check_sync_bn
from ..machine import default_workers
from . import elastic
from .checkpoint import load_checkpoint
from .context import CachedFeatures, Context
from .options import for_strategy, read_saved
from .parent import Parent
from ..features.dataset import features_key, int8_key
from .strategies.base import STRATEGIES


def own_rng():
    """The run may seed and draw from the global torch RNG (model init, dropout, loaders without a
    generator); it is put back as it was afterwards, so a caller's own random stream is not
    disturbed. A caller that has not imported torch has no stream to disturb (and a warm head
    on cached features never imports it)."""
    if "torch" not in sys.modules:
        return contextlib.nullcontext()
    import torch

    return torch.random.fork_rng(devices=[])


@contextlib.contextmanager
def cache_for(cfg: TrainConfig, group: Group | None = None):
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
    split = _data_split(cfg, strategy, cache, console)
    pre, stem = _input(cfg, spec, split, strategy)
    weights = identify_weights(spec, cfg.weights, cfg.seed)
    uses_features = strategy.uses_features if with_features is None else with_features
    engine = _feature_engine(cfg, split, device, group) if uses_features else None
    # (a network strategy's backbone weights are cached under its training precision's key; INT8
    # features under their quantized network's, `int8_key` below)
    key = features_key(spec, stem, weights.identity, pre, engine.network_precision if engine
                       else _training_precision(device, cfg))
    workers = default_workers() if cfg.workers is None else cfg.workers
    # --features auto | multi: the earlier stages' pooled activations are extracted too (one pass)
    multi = _multi_layer(cfg, spec)
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
    return Context(cfg=cfg, split=split, models=models, pre=pre, device=device, cache=cache, workers=workers,
                   console=console, features=features, run_dir=group.decide(lambda: _new_run_dir(cfg, run_name)),
                   engine=engine,
                   features_ident={"features": key, "multi": multi} if uses_features else None, resume=resume,
                   group=group, started=started, parent=parent)


def _feature_engine(cfg: TrainConfig, split, device, group: Group):
    """The engine that extracts the features, chosen by the primary for the group (the same
    precision everywhere), for as many images as the pass gives."""
    images = len(split.train) * (1 + (cfg.aug_views or 0)) + len(split.val)
    return group.decide(lambda: engines.choose(cfg.engine, device, cfg.precision, images))


def _new_run_dir(cfg: TrainConfig, run_name: str | None) -> Path:
    """The run folder, made, with config.yaml written first (--resume reads it)."""
    run_dir = make_run_dir(cfg, run_name)
    cfg.to_yaml(run_dir / "config.yaml")
    elastic.started(cfg, run_dir)
    return run_dir


def _data_split(cfg: TrainConfig, strategy, cache: Cache, console: Console):
    """The data's split, as the options adjust it, checked against the options that depend on
    its task (a multi-label loss, what multi-label data refuses)."""
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
    return split


def _input(cfg: TrainConfig, spec, split, strategy) -> tuple:
    """(the preprocessing, the stem) the network gets the images with. Without pretrained
    weights, images of a fixed small size (CIFAR) are used at that size."""
    size = cfg.image_size or (split.image_size if cfg.weights == "none" else None)
    upscaled = size is None and strategy.trains not in ("head", "chosen") and cfg.weights != "none"
    pre = network_preprocess(spec, split) if upscaled else spec.with_input_size(size)
    stem = cfg.stem if cfg.stem != "auto" else (
        "small" if cfg.weights == "none" and pre.input_size <= 64 and backbones.has_small_stem(spec) else "standard")
    return pre, stem


def _multi_layer(cfg: TrainConfig, spec) -> bool:
    """Whether the earlier stages' pooled activations are extracted too (--features auto | multi),
    and the options that need a timm backbone checked."""
    multi = cfg.features == "multi" or (cfg.features == "auto" and spec.has_multi_layer)
    if multi and not spec.has_multi_layer:
        raise UserError(f"--features multi needs a timm backbone (its feature_info names the stages); "
                        f"{spec.name} is built by torchvision")
    if cfg.drop_path and spec.family != "timm":
        raise UserError(f"--drop-path needs a timm backbone (efficientnet_lite*, timm:<name>); {spec.name} is built "
                        f"by torchvision")
    return multi


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
