"""The Python API. Each function builds its options (checked by `config`), calls the stage that
does the work and returns its result; the CLI is a thin layer over these."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .cache import Cache
from .config import DoctorOptions, ExportOptions, LRFindOptions, PredictOptions, SummaryOptions, TrainConfig
from .console import Console
from .errors import UserError
from .worker import Worker
from .data.discover import split_samples
from .files import claim_out, fresh_dir
from .training.options import validate
from .training.result import Run

__all__ = ["Run", "train", "lr_find", "load", "evaluate", "export", "report", "summary", "doctor", "cache_usage", "cache_info", "compact_cache",
           "clear_cache"]


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
        worker: a `evaluation.worker.Worker` for the evaluation and the report, started early (the
            CLI starts one before importing torch); one is started here otherwise. It is closed at
            the end.
    Returns:
        `Run` with the run folder and results (``run.val_acc``).
    Raises:
        UserError: a missing folder, a bad option, fewer than 2 classes, ...

    Example: ``transferkit.train("data").val_acc``
    """
    from .distributed import is_primary_process
    from .training import run

    started = time.perf_counter() if started is None else started
    try:
        data, options = _frames(data, options, options.get("cache_dir") or (config.cache_dir if config else None))
        _path(data, "data", optional=True)
        cfg, checkpoint = _train_config(data, config, options)
        validate(cfg)
    except BaseException:
        if worker is not None:
            worker.close()
        raise
    # started once the options check out; not in the processes of a torchrun group but the primary
    with worker or Worker(spawn=is_primary_process()) as report_worker:
        return run.train(cfg, console or Console(cfg.quiet), report_worker, started, checkpoint)


def _frames(data, options: dict, cache_dir: str | None) -> tuple:
    """A pandas DataFrame given as `data` or `labels`, as the label table `--labels` reads: written
    once (by its content) into the cache's datasets folder, never next to the user's files. With
    `data` a DataFrame, its paths are absolute or relative to the current folder, and DATA is the
    folder that holds them all."""
    frame = data if _is_frame(data) else options.get("labels") if _is_frame(options.get("labels")) else None
    if frame is None:
        return data, options
    import hashlib
    import io

    from .files import atomic_write

    columns = [str(c) for c in frame.columns]
    path_col = options.get("path_col") or (columns[0] if columns else None)
    if path_col not in columns:
        raise UserError(f"path_col {path_col}: the DataFrame has no such column; it has {', '.join(columns)}")
    frame = frame.copy()
    label_col = options.get("label_col") or (columns[1] if len(columns) > 1 else None)
    if label_col in columns and frame[label_col].map(lambda v: isinstance(v, (list, tuple, set, frozenset))).any():
        # multi-label: a cell holding a list of labels is written joined by the delimiter, which the table is read with
        delim = options.get("label_delim") or ";"
        frame[label_col] = frame[label_col].map(lambda v: delim.join(str(x) for x in v)
                                                if isinstance(v, (list, tuple, set, frozenset)) else v)
        options = {**options, "label_delim": delim}
    if _is_frame(data):
        paths = [Path(str(p)).expanduser().absolute() for p in frame[path_col]]
        if not paths:
            raise UserError("the DataFrame has no rows")
        data = os.path.commonpath([str(p.parent) for p in paths])
        frame[path_col] = [str(p) for p in paths]
    text = io.StringIO()
    frame.to_csv(text, index=False)
    raw = text.getvalue().encode("utf-8", "surrogateescape")
    file = Cache(cache_dir).prepare().datasets() / "tables" / f"{hashlib.sha256(raw).hexdigest()[:16]}.csv"
    if not file.is_file():
        atomic_write(file, raw)
    return data, {**options, "labels": str(file)}


def _is_frame(value) -> bool:
    return type(value).__name__ == "DataFrame" and hasattr(value, "to_csv")


def _path(value, what: str, optional: bool = False):
    """A path argument of the API: a str or os.PathLike naming something, else one UserError
    (never a TypeError from deep inside, nor a number taken for a folder name)."""
    if value is None and optional:
        return None
    if isinstance(value, (str, os.PathLike)) and str(value).strip():
        return value
    raise UserError(f"{what} must be a path (a str or pathlib.Path), not {type(value).__name__} {str(value)[:40]!r}")


def _train_config(data, config: TrainConfig | None, options: dict) -> tuple[TrainConfig, dict | None]:
    """The options of a new run, or of the interrupted run `resume` names and its checkpoint."""
    from .training.setup import resume_config

    resume = options.get("resume") or (config.resume if config else None)
    if resume:
        return resume_config(resume, data, options)
    if data is None:
        raise UserError("give the dataset folder (or --resume RUN)")
    base = config.to_dict() if config else {}
    parent = options.get("from_run") or base.get("from_run")
    if parent:  # RUN's settings, under those set now (a config's values that differ from the defaults, and options)
        from .training.parent import continue_config

        defaults = TrainConfig().to_dict()
        given = {**{k: v for k, v in base.items() if v != defaults.get(k)}, **options}
        given.pop("from_run", None)
        return continue_config(parent, str(Path(data).expanduser().absolute()), given), None
    return TrainConfig.from_mapping({**base, **options, "data": str(Path(data).expanduser().absolute())}), None


def lr_find(data: str | Path, *, config: TrainConfig | None = None, console: Console | None = None,
            steps: int | None = None, start_lr: float = 1e-7, end_lr: float = 1.0, **options):
    """LR range test for the chosen strategy on `data`: prints and returns the suggested LR and
    writes `lr_find.png` and `lr_find.json` into a fresh run folder (or --out).
    Steps default to 100 on cached features (linear), 50 for the network strategies."""
    from .training import run

    sweep = LRFindOptions(steps, start_lr, end_lr)
    values = {**(config.to_dict() if config else {}), **options, "data": str(data)}
    if values.get("optimizer") is None and values.get("strategy", "linear") == "linear":
        values["optimizer"] = "adamw"  # L-BFGS, linear's default, has no LR: find one for epoch training
    cfg = TrainConfig.from_mapping(values)
    return run.lr_find(cfg, sweep, console or Console(cfg.quiet))


def load(path: str | Path, device: str = "auto", precision: str = "auto", tta: str = "none", engine: str = "auto",
         images: int | None = None, say=None):
    """Load a run folder's bundle as a predictor. Use it as a context manager (or call
    ``close()``) to stop its decoding threads when done. On ONNX Runtime (a CPU's default) torch is
    imported only to convert a model the cache does not hold yet.

    Args:
        path: the run folder.
        device, precision: auto | cpu | cuda, and auto | bf16 | fp32 (PyTorch's).
        tta: test-time augmentation: none | flip | flip-crops.
        engine: auto, or a registered engine (`engines.choose`); `images`, how many will be
            predicted, informs the choice.
        say: told of a conversion and of a fallback to PyTorch.

    Returns:
        A predictor: ``.predict(images, top_k)`` takes paths, the files' bytes or PIL images and
        gives `Prediction`s; its ``engine`` says what runs it and why.

    Raises:
        UserError: no such run, a damaged bundle, or an option that cannot run here.
    """
    from . import engines

    _path(path, "the run folder")
    options = PredictOptions(device=device, precision=precision, tta=tta, engine=engine)
    return engines.load_bundle(path, options.engine, options.device, options.precision, options.tta, images,
                               say=say)


def open_predictor(model: str | Path, device: str = "auto", precision: str = "auto", tta: str = "none",
                   engine: str = "auto", images: int | None = None, say=None, threads: int = 0):
    """A predictor of `model`, whatever it is: the one place predict, suggest and serve ask.

    Args:
        model: a run folder (`load`), or an exported model: a model.onnx (ONNX Runtime), an
            OpenVINO IR's folder or model.xml (OpenVINO), a model.tflite (LiteRT); an exported
            model imports no torch (`prediction.exported`).
        device, precision, tta, engine, images, say: as `load`'s (an exported model runs on its
            own runtime: an engine or precision it does not take is refused).
        threads: an exported model's intra-op threads (0: one per core this process may use).

    Returns:
        A predictor, as `load`'s.
    """
    from .prediction.exported import exported_kind, open_exported

    if exported_kind(model) is not None:
        return open_exported(model, engine, precision, tta, threads)
    return load(model, device, precision, tta, engine, images, say)


def evaluate(run: str | Path, data: str | Path | None = None, device: str = "auto",
             precision: str = "auto", console: Console | None = None, out: str | Path | None = None,
             tta: str = "none", engine: str = "auto", labels: str | None = None, path_col: str | None = None,
             label_col: str | None = None, split_col: str | None = None, label_delim: str | None = None) -> dict:
    """Re-evaluate a saved run, writing metrics.json, predictions.csv, the plots, misclassified.csv
    and report.html.

    Args:
        run: the run folder.
        data: DATA/val (or DATA's class folders) to evaluate on; None: the run's own validation split.
        device, precision, tta, engine: as `load`'s.
        out: the folder to write (default: a new RUN/eval-<name> folder).
        labels, path_col, label_col, split_col: a label table naming DATA's images and labels, as
            train takes it (DATA may be the table itself).
        label_delim: how a table's cells join several labels (default: the multi-label run's own).

    Returns:
        The metrics (metrics.json's), with "out": the folder written and "engine": what ran the model.

    Raises:
        UserError: no such run or data, the run's validation images gone, a bad option.
    """
    from types import SimpleNamespace

    from .data.discover import targets_of
    from .models import bundle

    console = console or Console()
    _path(run, "the run folder"), _path(data, "data", optional=True), _path(out, "out", optional=True)
    meta, run_dir = bundle.read_meta(run)
    columns = SimpleNamespace(path_col=path_col, label_col=label_col, split_col=split_col, label_delim=label_delim)
    data, samples = _eval_samples(meta, run_dir, data, labels, columns)
    with load(run, device, precision, tta, engine, images=len(samples), say=console.info) as predictor:
        console.info(f"engine: {predictor.engine.line()}")
        out_dir = _eval_dir(run_dir, data, out)
        logits, ood, errors = predictor.scored([s.path for s in samples], progress=console.progress)
        classes = predictor.classes
        threshold = predictor.threshold
    from .evaluation import report

    ok = [i for i in range(len(samples)) if i not in errors]
    skipped = [{"path": samples[i].path, "reason": r} for i, r in errors.items()]
    for item in skipped:
        console.warn(f"skipped {item['path']}: {item['reason']}")
    summary = report.write_evaluation(
        out_dir, [samples[i].path for i in ok], targets_of([samples[i] for i in ok], meta.task, len(classes)),
        logits[ok], classes, {"skipped_files": skipped, "run": str(predictor.run_dir),
                              "data": str(data) if data is not None else "the run's validation split",
                              "tta": tta, "engine": predictor.engine.to_dict()}, meta.task.to_dict(),
        ood[ok] if ood is not None else None, threshold)
    from .evaluation.explained import report_heatmaps

    report_heatmaps(out_dir, predictor.run_dir, console.warn, console.info)
    report.render(out_dir)
    summary["out"] = str(out_dir)
    summary["engine"] = predictor.engine.to_dict()
    return summary


def suggest(run: str | Path, inputs: list[str], n: int = 100, engine: str = "auto", console: Console | None = None,
            files_from: str | None = None) -> dict:
    """Which of the unlabelled images `inputs` (files and folders, walked) to label first, for the
    model of `run` (a run folder, or an exported model.onnx): the `n` best as `suggest.rank`
    orders them, each with its path, the model's guess and the reason. Images the run was trained
    or validated on are left out. Returns {"suggestions": [...], "skipped": [{path, reason}],
    "already_labelled": count, "images": count ranked, "features": whether the diversity was
    measured on the backbone's features (else on the class probabilities), "engine": ...}."""
    from . import suggest as ranking
    from .prediction.batch import iter_inputs
    from .prediction.exported import RUNTIMES, exported_kind

    console = console or Console()
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise UserError(f"--n must be 1 or more (got {n!r})")
    files = list(dict.fromkeys(iter_inputs(inputs, files_from)))  # (the same file given twice counts once)
    if not files:
        raise UserError("no files found in the given inputs")
    known: set[str] = set()
    exported = exported_kind(run) is not None
    if not exported:
        _path(run, "the run folder")
        split_file = Path(run).expanduser() / "split.json"
        if split_file.is_file():
            known = {os.path.realpath(s.path) for role in ("train", "val") for s in split_samples(split_file, role)}
    fresh = [f for f in files if os.path.realpath(f) not in known]
    if not fresh:
        raise UserError(f"all {len(files)} image(s) given are ones the run was trained or validated on: nothing "
                        "unlabelled to rank")
    # (an exported model gives its outputs only, no features)
    predictor = open_predictor(run, engine=engine, images=len(fresh), say=console.info)
    with predictor:
        choice = getattr(predictor, "engine", None)  # (an exported model runs on ONNX Runtime, no choice made)
        console.info(f"engine: {choice.line() if choice is not None else f'{predictor.kind} (an exported model)'}")
        logits, ood, features, errors = predictor.embedded(fresh, progress=console.progress)
        classes, task, threshold = predictor.classes, predictor.task, predictor.threshold
    ran = choice.to_dict() if choice is not None else {"engine": RUNTIMES[predictor.kind]}
    skipped = [{"path": fresh[i], "reason": r} for i, r in sorted(errors.items())]
    for item in skipped:
        console.warn(f"skipped {item['path']}: {item['reason']}")
    ok = [i for i in range(len(fresh)) if i not in errors]
    picked = ranking.rank(task.probabilities(logits[ok]), task, classes, n,
                          features[ok] if features is not None else None,
                          ood[ok] if ood is not None else None, threshold) if ok else []
    for row in picked:
        row["path"] = fresh[ok[row.pop("index")]]
    return {"suggestions": picked, "skipped": skipped, "already_labelled": len(files) - len(fresh),
            "images": len(ok), "features": features is not None, "engine": ran}


def _eval_samples(meta, run_dir: Path, data, labels: str | None, columns) -> tuple:
    """(data, the samples to evaluate on): DATA's (its folders, or the label table `labels` with
    `columns`), or with no DATA the run's own validation split, every image of it still there."""
    from types import SimpleNamespace

    from .data.discover import eval_files
    from .data.table import resolve_data, table_of

    if data is not None:
        data, labels = resolve_data(str(data), labels, columns)
        return data, eval_files(data, meta.classes, labels=table_of(SimpleNamespace(labels=labels, **vars(columns))),
                                task=meta.task)
    split_file = run_dir / "split.json"
    if not split_file.is_file():
        raise UserError(f"{split_file} is missing: pass the DATA folder to evaluate on")
    samples = split_samples(split_file, "val")
    missing = [s.path for s in samples if not Path(s.path).exists()]
    if missing:
        raise UserError(f"{len(missing)} validation image(s) of this run are gone, e.g. {missing[0]}; "
                        "pass the DATA folder to evaluate on")
    return data, samples


def _eval_dir(run_dir: Path, data, out) -> Path:
    """--out, or a fresh RUN/eval-<dataset name> (eval-val for the run's own split), never an
    existing folder of the user's that is not an eval folder."""
    from .models.bundle import trained_on

    datasets = [*trained_on(run_dir), *([data] if data is not None else [])]
    if out is not None:
        return claim_out(out, ("metrics.json",), "an eval folder", datasets)
    return fresh_dir(run_dir / f"eval-{Path(data).expanduser().absolute().name if data is not None else 'val'}",
                     datasets, "the eval folder")


def export(run: str | Path, formats: str = "all", calib: int = 100, max_drop: float = 1.0,
           out: str | Path | None = None, runs: int = 50, console: Console | None = None):
    """Export RUN's model, each artifact checked on the run's validation images against PyTorch.

    Args:
        run: the run folder.
        formats: formats of `exporting.registry`, comma-separated, or "all" (those needing no extra).
        calib: INT8 calibration images drawn from the training split.
        max_drop: the accuracy drop, in points, past which an artifact is renamed *.FAILED.*.
        out: the folder to write (default: RUN/export).
        runs: batch-1 latency samples per artifact.

    Returns:
        The `ExportResult`: a check per artifact (``.checks``), those past `max_drop` (``.failed``).

    Raises:
        UserError: no such run, an unknown format, or a format's extra missing (before any work).
    """
    from .exporting.exporter import export as run_export

    _path(run, "the run folder"), _path(out, "out", optional=True)
    options = ExportOptions(formats, calib, max_drop, None if out is None else str(out), runs)
    return run_export(run, options, console or Console())


def report(run: str | Path) -> Path:
    """Rebuild the plots, misclassified.csv and report.html of a run or eval folder.

    Args:
        run: a run or eval folder (its metrics.json and predictions.csv are read).

    Returns:
        The path of report.html.
    """
    from .evaluation.report import render

    return render(_path(run, "the run or eval folder"))


def summary(model: str, num_classes: int = 1000, input_size: int | None = None,
            strategy: str = "finetune", depth: int = 3, unfreeze: int = 2) -> str:
    """The per-layer table (torchinfo) of `model` with a new head for `num_classes`, as the
    strategy will train it: under "linear" the backbone is marked frozen. No weights are needed."""
    import torchinfo

    from .models import backbones
    from .models.classifier import Classifier
    from .training.network import param_groups

    options = SummaryOptions(num_classes, input_size, strategy, unfreeze, depth)
    spec = backbones.get(model)
    backbone = spec.build()
    net = Classifier(backbone, backbone.num_features, options.num_classes)
    param_groups(net, spec.stages(backbone), options.strategy, 1.0, unfreeze=options.unfreeze)  # marks what trains
    size = options.input_size or spec.preprocess.input_size
    stats = torchinfo.summary(net, input_size=(1, 3, size, size), depth=options.depth, verbose=0,
                              col_names=("output_size", "num_params", "trainable"))
    return f"{spec.name} for {options.num_classes} classes, input {size}x{size}, strategy {options.strategy}\n{stats}"


def doctor(data: str | Path, console: Console | None = None, worker: Worker | None = None, **options) -> dict:
    """Check the dataset DATA for duplicates and train/val leakage, images with two labels, likely
    label errors, outliers, imbalance and bad images; write doctor.json and doctor.html. Nothing in
    DATA is changed.

    Args:
        data: the dataset folder (or a label table), as train takes it.
        console, worker: where it reports, and the helper process it may use.
        **options: `config.DoctorOptions`'s fields (``write_exclude=FILE``: the files to leave out).

    Returns:
        The report (doctor.json's), ``report["out"]``: the folder written.

    Raises:
        UserError: no such data, or a bad option.

    Example: ``transferkit.doctor("data")["label_issues"][:5]``
    """
    from .doctor.diagnose import diagnose

    try:
        _path(data, "data")
        options = DoctorOptions(**options)
    except UserError:
        if worker is not None:
            worker.close()
        raise
    try:
        return diagnose(data, options, console or Console(options.quiet), worker)
    finally:
        if worker is not None:
            worker.close()


def cache_usage(cache_dir: str | None = None) -> tuple[Path, int, int]:
    """(cache folder, files, bytes)."""
    cache = Cache(cache_dir)
    return (cache.root, *cache.usage())


def cache_info(cache_dir: str | None = None) -> dict:
    """What the cache holds (`Cache.info`): per kind, per backbone configuration with the datasets
    recorded, per decoded resolution."""
    return Cache(cache_dir).info()


def compact_cache(cache_dir: str | None = None) -> tuple[Path, list[dict], tuple[int, int]]:
    """Rewrite every sharded store as few shards, each entry once (`ShardedCache.compact`), after
    removing the temporary files killed processes left; returns (folder, stores, (files, bytes)
    of those temporary files)."""
    cache = Cache(cache_dir)
    swept = cache.sweep()
    return cache.root, cache.compact(), swept


def clear_cache(cache_dir: str | None = None, dry_run: bool = False) -> tuple[Path, list[Path], int]:
    """Delete what the feature/decode cache wrote (nothing else: a folder that is not a transferkit
    cache is refused); returns (folder, what was, or with `dry_run` would be, removed, bytes)."""
    cache = Cache(cache_dir)
    removed, size = cache.clear(dry_run)
    return cache.root, removed, size
