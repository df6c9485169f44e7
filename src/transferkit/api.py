"""The Python API: `train`, `load`, `evaluate`. The CLI is a thin layer over these."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import backbones, bundle, metrics
from .config import TrainConfig
from .data import Sample, discover, eval_files
from .errors import UserError
from .features import default_cache_dir, feature_cache, model_key
from .model import LazyClassifier, identify_weights
from .predict import Predictor
from .report import Worker
from .runtime import Runtime, default_workers
from .strategies import FEATURE_STRATEGIES, STRATEGIES, Context, check_teacher, param_groups, start_feature_pass


@dataclass
class Run:
    """A finished training run: its folder and its results (results.json)."""

    path: Path
    results: dict

    @property
    def val_acc(self) -> float:
        return self.results["val_acc"]


class Console:
    """Where messages go: results to stdout, warnings and progress to stderr."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def info(self, msg: str) -> None:
        print(msg, flush=True)

    def warn(self, msg: str) -> None:
        print(f"warning: {msg}", file=sys.stderr, flush=True)

    def progress(self, total: int, desc: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, leave=False, disable=True if self.quiet else None,
                    file=sys.stderr, dynamic_ncols=True)


def train(data: str | Path | None = None, *, config: TrainConfig | None = None,
          console: Console | None = None, started: float | None = None, worker: Worker | None = None,
          **options) -> Run:
    """Train a classifier on the image folder `data` and write a run folder.

    Args:
        data: DATA/train/<class>/images (and optionally DATA/val/<class>/images), or
            DATA/<class>/images; without a val folder a stratified split is held out.
        config: a full `TrainConfig` (its `data` is replaced by `data`); or give options as keywords,
            e.g. ``strategy="finetune", epochs=5``. Unknown keywords raise `UserError`.
            ``resume="runs/x"`` continues that interrupted run (no `data` needed; options given
            now, such as more epochs, override its saved ones).
        worker: a `report.Worker` for the evaluation and the report, started early (the CLI starts
            one before importing torch); one is started here otherwise. It is closed at the end.
    Returns:
        `Run` with the run folder and results (``run.val_acc``).
    Raises:
        UserError: a missing folder, a bad option, fewer than 2 classes, ...

    Example: ``transferkit.train("data").val_acc``
    """
    started = time.perf_counter() if started is None else started
    with worker or Worker() as worker:  # scikit-learn and matplotlib load there meanwhile
        return _train(data, config, console, started, worker, options)


def _train(data, config: TrainConfig | None, console: Console | None, started: float, worker: Worker,
           options: dict) -> Run:
    """`train`, with its `worker` running."""
    resume = options.get("resume") or (config.resume if config else None)
    if resume:
        config, checkpoint = _resume_config(resume, data, options)
    else:
        if data is None:
            raise UserError("give the dataset folder (or --resume RUN)")
        base = config.to_dict() if config else {}
        config = TrainConfig.from_mapping({**base, **options, "data": str(Path(data).expanduser().absolute())})
        checkpoint = None
    cfg = config.resolved()
    console = console or Console(cfg.quiet)
    worker.warn = console.warn
    ctx, tmp_cache = _context(cfg, console)
    ctx.resume = checkpoint
    split, spec, runtime, run_dir = ctx.split, ctx.models.spec, ctx.runtime, ctx.run_dir
    weights, pre = ctx.models.info, ctx.pre
    console.info(
        f"training {spec.name} ({cfg.strategy}) on {len(split.classes)} classes: "
        f"{len(split.train)} train / {len(split.val)} val images ({split.val_source}), "
        f"{runtime.device.type} {runtime.precision}"
    )
    try:
        outcome = STRATEGIES[cfg.strategy](ctx)
    finally:
        if tmp_cache:
            tmp_cache.cleanup()
    cfg = ctx.cfg  # auto replaced itself by the strategy it chose
    for item in split.skipped:
        console.warn(f"skipped {item['path']}: {item['reason']}")
    if outcome.fit.interrupted:
        console.warn(f"interrupted: keeping the best epoch so far ({outcome.fit.best_epoch}); "
                     f"continue with: transferkit train --resume {run_dir}")
    elif ctx.checkpoint.exists():
        ctx.checkpoint.unlink()  # finished: the bundle is what remains

    meta = bundle.BundleMeta(spec.name, spec.arch, split.classes, pre, cfg.strategy, cfg.dropout,
                             weights.source, weights.sha256, ctx.models.stem)
    bundle.save(run_dir, outcome.state, meta)
    results = write_outputs(run_dir, cfg, split, outcome, runtime, started, worker)
    console.info(metrics.format_table(results["metrics"]))
    kept = (f"logistic regression, {outcome.fit.best_epoch} L-BFGS iterations" if outcome.fit.unit == "iteration"
            else f"best epoch {results['best_epoch']}/{len(outcome.fit.history)}")
    console.info(f"val accuracy {results['val_acc']:.4f} ({results['num_val']} images), {kept}, "
                 f"{results['wall_s']:.1f} s\noutputs: {run_dir}")
    return Run(run_dir, results)


def _context(cfg: TrainConfig, console: Console, run_name: str | None = None, with_features: bool | None = None):
    """Check every user input (data, model, weights, options), then make the run folder and the
    strategy's context; `with_features` (default: the strategy uses cached features) starts the
    feature pass. Returns (context, temporary cache or None)."""
    spec = backbones.get(cfg.model)
    runtime = Runtime.create(cfg.device, cfg.precision)
    tmp_cache = tempfile.TemporaryDirectory(prefix="transferkit-") if cfg.no_cache else None
    cache_root = Path(tmp_cache.name) if tmp_cache else Path(cfg.cache_dir or default_cache_dir())
    split = discover(cfg.data, cfg.val_fraction, cfg.seed, cache_root)
    # Without pretrained weights, images of a fixed small size (CIFAR) are used at that size.
    size = cfg.image_size or (split.image_size if cfg.weights == "none" else None)
    pre = spec.with_input_size(size)
    stem = cfg.stem if cfg.stem != "auto" else (
        "small" if cfg.weights == "none" and pre.input_size <= 64 and backbones.has_small_stem(spec) else "standard")
    weights = identify_weights(spec, cfg.weights)
    net_key = spec.name + ("+small-stem" if stem == "small" else "")
    features = feature_cache(cache_root, model_key(net_key, weights.sha256, pre, runtime.precision))
    workers = default_workers() if cfg.workers is None else cfg.workers
    if with_features is None:
        with_features = cfg.strategy in FEATURE_STRATEGIES
    # Images whose features are missing start decoding now, while the network is built, in at
    # least one worker process even on 2 cores: it overlaps the build and then the forward
    # (measured, 2 cores, ants/bees cold: 9.2-10.4 s with none, 7.7 s with one; 4x the images:
    # 24.3 s vs 20.8 s).
    pass_workers = max(1, workers) if cfg.workers is None else workers
    feature_pass = start_feature_pass(cfg, split, pre, features, pass_workers) if with_features else None
    torch.manual_seed(cfg.seed)
    models = LazyClassifier(spec, len(split.classes), cfg.weights, cfg.dropout,
                            features.dir / "backbone.safetensors", stem)
    models.prepare()  # weights that do not fit the architecture fail here, before any output
    if cfg.strategy == "distill":
        check_teacher(cfg.teacher, split.classes)
    run_dir = make_run_dir(cfg, run_name)
    cfg.to_yaml(run_dir / "config.yaml")  # written first: --resume reads it
    ctx = Context(
        cfg=cfg, split=split, models=models, pre=pre, runtime=runtime,
        feature_cache=features, cache_root=cache_root,
        workers=workers, log=console.info, progress=console.progress, run_dir=run_dir,
        feature_pass=feature_pass,
    )
    return ctx, tmp_cache


def lr_find(data: str | Path, *, config: TrainConfig | None = None, console: Console | None = None,
            steps: int | None = None, start_lr: float = 1e-7, end_lr: float = 1.0, **options):
    """LR range test for the chosen strategy on `data`: prints and returns the suggested LR and
    writes `lr_find.png` and `lr_find.json` into a fresh run folder (or --out).
    Steps default to 100 on cached features (linear), 50 for the network strategies."""
    from torch import nn
    from torch.utils.data import TensorDataset

    from . import lrfind
    from .strategies import cached_features, network_setup, train_loader, unfreeze_top, _loss

    values = {**(config.to_dict() if config else {}), **options, "data": str(data)}
    if values.get("optimizer") is None and values.get("strategy", "linear") == "linear":
        values["optimizer"] = "adamw"  # L-BFGS, linear's default, has no LR: find one for epoch training
    cfg = TrainConfig.from_mapping(values).resolved()
    if not start_lr > 0 or not end_lr > start_lr:
        raise UserError("need 0 < --start-lr < --end-lr")
    if cfg.strategy == "auto":
        raise UserError("lr-find needs a fixed --strategy (auto chooses one while training)")
    if cfg.optimizer == "lbfgs":
        raise UserError("the linear head is fitted by L-BFGS (logistic regression), which has no learning "
                        "rate: add --optimizer adamw (or adam, sgd) to find one for an epoch-trained head")
    console = console or Console(cfg.quiet)
    ctx, tmp_cache = _context(cfg, console, run_name=f"lr-find-{cfg.strategy}",
                              with_features=cfg.strategy == "linear")
    try:
        if cfg.strategy == "linear":
            x, y, _, _, _ = cached_features(ctx)
            torch.manual_seed(cfg.seed)
            model = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(x.shape[1], len(ctx.split.classes)))
            loader = train_loader(cfg, TensorDataset(x, y), y)
            groups = [{"params": list(model.parameters()), "lr": 1.0}]
            args = (model, loader, groups, _loss(cfg, y, len(ctx.split.classes)),
                    Runtime(torch.device("cpu"), torch.float32), lambda t: t)
            steps = steps or 100
        else:
            net = network_setup(ctx)
            if cfg.strategy == "gradual":  # the test covers the fully unfrozen network
                unfreeze_top(net.model, net.stages, len(net.stages))
            args = (net.model, net.loader, net.groups, net.loss, ctx.runtime, net.prepare)
            steps = steps or 50
        result = lrfind.range_test(*args, optimizer=cfg.optimizer, weight_decay=cfg.weight_decay,
                                   start_lr=start_lr, end_lr=end_lr, steps=steps)
    finally:
        if tmp_cache:
            tmp_cache.cleanup()
    lrfind.plot(result, ctx.run_dir / "lr_find.png")
    bundle.write_json(ctx.run_dir / "lr_find.json", result.to_dict())
    console.info(f"suggested learning rate for --optimizer {cfg.optimizer}: {result.suggestion:.2e} (steepest loss descent, "
                 f"{len(result.lrs)} steps)\nplot: {ctx.run_dir / 'lr_find.png'}")
    return result


def _resume_config(run: str, data, options: dict) -> tuple[TrainConfig, dict]:
    """The interrupted run's own options (its config.yaml), with the options given now on top
    (e.g. more --epochs), and its last checkpoint."""
    from .engine import load_checkpoint

    run_dir = Path(run).expanduser()
    ckpt = run_dir / "checkpoint.pt"
    if not (run_dir / "config.yaml").is_file() or not ckpt.is_file():
        raise UserError(f"nothing to resume in {run_dir}: it has no config.yaml and checkpoint.pt "
                        "(a finished run keeps no checkpoint)")
    saved = TrainConfig.from_yaml(run_dir / "config.yaml").to_dict()
    given = {k: v for k, v in options.items() if k != "resume"}
    if data is not None and str(Path(data).expanduser().absolute()) != saved["data"]:
        raise UserError(f"{run_dir} was trained on {saved['data']}; resume it without a DATA folder")
    cfg = TrainConfig.from_mapping({**saved, **given, "out": str(run_dir), "resume": str(run_dir)})
    try:
        checkpoint = load_checkpoint(ckpt)
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint is a user-facing condition
        raise UserError(f"{ckpt} cannot be read ({str(exc).splitlines()[0]})") from None
    return cfg, checkpoint


def make_run_dir(cfg: TrainConfig, run_name: str | None = None) -> Path:
    if cfg.out:
        return bundle.claim_out(cfg.out, ("model.json", "checkpoint.pt"), "a transferkit run")
    default = f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model.replace(':', '-')}-{run_name or cfg.strategy}"
    return bundle.fresh_dir(Path(cfg.runs_dir) / (cfg.name or default))


def write_outputs(run_dir: Path, cfg: TrainConfig, split, outcome, runtime: Runtime, started: float,
                  worker: Worker) -> dict:
    """results.json, metrics.csv, split.json, and by `worker` the evaluation files and (unless
    --no-report) the report."""
    y_val = np.array([s.label for s in split.val], dtype=np.int64)
    summary = worker.evaluate(run_dir, [s.path for s in split.val], y_val, outcome.val_logits.float().numpy(),
                              split.classes, {"skipped_files": split.skipped})
    fit = outcome.fit  # config.yaml was written when the run folder was made
    metrics.write_history_csv(run_dir / "metrics.csv", fit.history, fit.unit)
    bundle.write_json(run_dir / "split.json", {
        "val_source": split.val_source, "seed": cfg.seed, "val_fraction": cfg.val_fraction,
        "classes": split.classes,
        "train": [[s.path, s.label] for s in split.train],
        "val": [[s.path, s.label] for s in split.val],
    })
    results = {
        "val_acc": summary["accuracy"],
        "balanced_accuracy": summary["balanced_accuracy"],
        "best_epoch": fit.best_epoch if fit.unit == "epoch" else None,
        "epochs_run": len(fit.history) if fit.unit == "epoch" else None,
        "head_iterations": fit.best_epoch if fit.unit == "iteration" else None,
        "stopped_early": fit.stopped_early,
        "interrupted": fit.interrupted,
        "strategy": cfg.strategy,
        "strategy_reason": outcome.info.get("strategy_reason"),
        "backbone": cfg.model,
        "classes": split.classes,
        "num_train": len(split.train),
        "num_val": len(split.val),
        "val_source": split.val_source,
        "skipped_files": split.skipped,
        "device": runtime.device.type,
        "precision": runtime.precision,
        "metrics": summary,
        "strategy_info": outcome.info,
        "wall_s": round(time.perf_counter() - started, 3),
    }
    bundle.write_json(run_dir / "results.json", results)
    if not cfg.no_report:
        worker.render(run_dir)  # plots, misclassified.csv, report.html
    return results


def load(path: str | Path, device: str = "auto", precision: str = "auto") -> Predictor:
    """Load a run folder's bundle as a `Predictor` (``.predict(paths, top_k)``)."""
    model, meta, run_dir = bundle.load(path)
    return Predictor(model, meta, run_dir, device, precision)


def evaluate(run: str | Path, data: str | Path | None = None, device: str = "auto",
             precision: str = "auto", console: Console | None = None, out: str | Path | None = None) -> dict:
    """Re-evaluate a saved run: on DATA/val (or DATA's class folders) when `data` is given,
    else on the run's own validation split. Writes metrics.json, the plots, misclassified.csv and
    report.html into `out` (default: a new RUN/eval-<name> folder) and returns the metrics
    (with "out": that folder)."""
    from . import report

    predictor = load(run, device, precision)
    classes = predictor.classes
    if data is not None:
        samples = eval_files(data, classes)
    else:
        split_file = predictor.run_dir / "split.json"
        if not split_file.is_file():
            raise UserError(f"{split_file} is missing: pass the DATA folder to evaluate on")
        samples = [Sample(p, int(label)) for p, label in json.loads(split_file.read_text())["val"]]
        missing = [s.path for s in samples if not Path(s.path).exists()]
        if missing:
            raise UserError(f"{len(missing)} validation image(s) of this run are gone, e.g. {missing[0]}; "
                            "pass the DATA folder to evaluate on")
    out_dir = _eval_dir(predictor.run_dir, data, out)
    logits, errors = predictor.logits([s.path for s in samples])
    ok = [i for i in range(len(samples)) if i not in errors]
    skipped = [{"path": samples[i].path, "reason": r} for i, r in errors.items()]
    console = console or Console()
    for item in skipped:
        console.warn(f"skipped {item['path']}: {item['reason']}")
    summary = report.write_evaluation(
        out_dir, [samples[i].path for i in ok], np.array([samples[i].label for i in ok], dtype=np.int64),
        logits[ok], classes, {"skipped_files": skipped, "run": str(predictor.run_dir),
                              "data": str(data) if data is not None else "the run's validation split"})
    report.render(out_dir)
    summary["out"] = str(out_dir)
    return summary


def _eval_dir(run_dir: Path, data, out) -> Path:
    """--out, or a fresh RUN/eval-<dataset name> (eval-val for the run's own split), never an
    existing folder of the user's that is not an eval folder."""
    if out is not None:
        return bundle.claim_out(out, ("metrics.json",), "an eval folder")
    return bundle.fresh_dir(run_dir / f"eval-{Path(data).expanduser().absolute().name if data is not None else 'val'}")


def export(run: str | Path, formats: str = "all", calib: int = 100, max_drop: float = 1.0,
           out: str | Path | None = None, runs: int = 50, console: Console | None = None):
    """Export RUN's model to ONNX, TorchScript and/or INT8 ONNX, each checked on the run's
    validation images against the PyTorch model (see `transferkit.deploy`); returns the
    `ExportResult` (``.failed`` lists artifacts whose accuracy drop exceeds `max_drop` points)."""
    from . import deploy

    console = console or Console()
    return deploy.export(run, formats, calib, max_drop, out, runs, console.info, console.warn)


def report(run: str | Path) -> Path:
    """Rebuild the plots, misclassified.csv and report.html of a run or eval folder from its
    metrics.json and predictions.csv; returns the report's path."""
    from . import report as report_mod

    return report_mod.render(run)


def summary(model: str, num_classes: int = 1000, input_size: int | None = None,
            strategy: str = "finetune", depth: int = 3, unfreeze: int = 2) -> str:
    """The per-layer table (torchinfo) of `model` with a new head for `num_classes`, as the
    strategy will train it: under "linear" the backbone is marked frozen. No weights are needed."""
    import torchinfo

    from .model import Classifier

    spec = backbones.get(model)
    backbone = spec.build()
    net = Classifier(backbone, backbone.num_features, num_classes)
    param_groups(net, spec.stages(backbone), strategy, 1.0, unfreeze=unfreeze)  # marks what trains
    size = input_size or spec.preprocess.input_size
    stats = torchinfo.summary(net, input_size=(1, 3, size, size), depth=depth, verbose=0,
                              col_names=("output_size", "num_params", "trainable"))
    return f"{spec.name} for {num_classes} classes, input {size}x{size}, strategy {strategy}\n{stats}"


def clear_cache(cache_dir: str | None = None) -> tuple[Path, int]:
    """Delete the feature/decode cache; returns (folder, bytes freed)."""
    root = Path(cache_dir or default_cache_dir())
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.exists() else 0
    if root.exists():
        shutil.rmtree(root)
    return root, size
