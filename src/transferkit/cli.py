"""`transferkit` command line: parse -> config -> Python API -> print. No logic lives here."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import fields
from pathlib import Path

from . import config
from .config import (DoctorOptions, ExportOptions, LRFindOptions, PredictOptions, ServeOptions, StudioOptions,
                     SummaryOptions, TrainConfig)
from .errors import Terminated, UserError, extra_line, missing_training_module, os_error_line
from .console import printable

_TYPES = {"int": int, "float": float, "str": str}


def add_options(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (),
                aliases: dict[str, str] | None = None) -> None:
    """One --option per field of the options class `cls`, same name with dashes, its help and
    default from the field. Values are checked by `config`, the same as from Python."""
    for f in fields(cls):
        if f.name in skip:
            continue
        flags = [config.flag(f.name)] + ([aliases[f.name]] if aliases and f.name in aliases else [])
        kind = config.field_type(f)
        help_text = f"{f.metadata.get('help', '')} [default: {_default_text(cls, f)}]"
        if kind == "bool":
            parser.add_argument(*flags, action="store_true", default=argparse.SUPPRESS, help=help_text)
        elif f.metadata.get("repeat"):
            parser.add_argument(*flags, action="append", default=argparse.SUPPRESS, metavar=f.name.upper(),
                                help=help_text)
        else:
            parser.add_argument(*flags, type=_TYPES.get(kind, str), default=argparse.SUPPRESS,
                                metavar=f.name.upper(), help=help_text)


def _default_text(cls: type, f) -> str:
    """The default --help states: a training option left None is each strategy's value."""
    if cls is config.TrainConfig and f.default is None and not f.metadata.get("shown"):
        from .training.options import strategy_defaults

        return strategy_defaults(f)
    return config.default_text(f)


def _options(args: argparse.Namespace, cls: type) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def _strategies_help() -> str:
    from .training.strategies import STRATEGIES

    return "strategies:\n" + "\n".join(f"  {s.name:<9} {s.summary}" for s in STRATEGIES)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="transferkit",
        description="Train, evaluate and use an image classifier built on an ImageNet-pretrained CNN.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    raw = argparse.RawDescriptionHelpFormatter

    _training_commands(sub, raw)
    _prediction_commands(sub, raw)
    _data_and_tool_commands(sub, raw)
    return parser


def _training_commands(sub, raw) -> None:
    """train, lr-find, eval, export, report."""
    p = sub.add_parser("train", help="train a classifier on a folder of images", formatter_class=raw,
                       description="Train on DATA/train/<class>/* (and DATA/val/<class>/* if present).\n\n"
                                   + _strategies_help())
    p.add_argument("data", nargs="?", help="dataset folder (not needed with --resume)")
    p.add_argument("--config", help="YAML file of options (command-line flags override it)")
    p.add_argument("--nproc", type=int, metavar="N", help="train with N processes on this machine (one per GPU, "
                   "or sharing the CPU cores): launches `torchrun --standalone --nproc-per-node N` for you; "
                   "--batch-size is per process. Several machines: run torchrun yourself (README, Scaling out)")
    add_options(p, TrainConfig, skip=("data",), aliases={"from_run": "--from"})

    p = sub.add_parser("lr-find", help="LR range test: suggest a learning rate",
                       description="Raises the LR exponentially over a few steps of the chosen "
                                   "strategy, prints the LR of steepest loss descent and saves the plot.")
    p.add_argument("data", help="dataset folder")
    p.add_argument("--config", help="YAML file of options (command-line flags override it)")
    add_options(p, LRFindOptions)
    # the sweep runs --steps batches: what concerns epochs, the report or resuming does not apply
    add_options(p, TrainConfig, skip=("data", "resume", "from_run", "no_report", "epochs", "patience", "budget"))

    p = sub.add_parser("eval", help="re-evaluate a saved run",
                       description="Per-class precision, recall and F1, confusion matrix, top losses and "
                                   "report.html of RUN's model on DATA/val (or DATA's class folders), or "
                                   "on the run's own val split.")
    p.add_argument("run", help="run folder")
    p.add_argument("data", nargs="?", help="dataset folder (default: the run's validation split)")
    add_options(p, PredictOptions, skip=("top_k", "reject", "unknown_label"))
    p.add_argument("--out", help="folder for metrics.json, plots and report.html "
                                 "[default: a new RUN/eval-<dataset name> folder]")
    p.add_argument("--labels", help="CSV/TSV naming DATA's images and labels (as train --labels); DATA may be it")
    for column in ("path", "label", "split"):
        p.add_argument(f"--{column}-col", help=f"--labels: the column of {column}s (as train's)")
    p.add_argument("--label-delim", help="--labels: splits a label cell into several labels (default: the "
                                         "multi-label run's own delimiter)")

    from .exporting.registry import help_text

    p = sub.add_parser("export", help="export deployable models, each checked",
                       description="Exports RUN's model and checks every artifact on the run's validation "
                                   "images against the PyTorch model (top-1 agreement, logit difference, "
                                   "accuracy per class, latency, throughput); results in export.json. Exits "
                                   "with status 1 when an artifact loses more than --max-drop points of accuracy "
                                   "(the artifact is kept, renamed *.FAILED.*). Formats: " + help_text())
    p.add_argument("run", help="run folder")
    add_options(p, ExportOptions, aliases={"formats": "--format"})

    p = sub.add_parser("report", help="rebuild a run's report.html and plots",
                       description="Regenerates the plots, misclassified.csv and the self-contained "
                                   "report.html of a run (or eval) folder from its metrics.json and "
                                   "predictions.csv; the model is not needed.")
    p.add_argument("run", help="run or eval folder")


def _prediction_commands(sub, raw) -> None:
    """predict, suggest."""
    p = sub.add_parser("predict", help="predict labels of images or folders",
                       description="Walks folders recursively; writes CSV (default) or JSON.")
    p.add_argument("run", help="run folder, or an exported model.onnx / model.int8.onnx (ONNX Runtime "
                                "only: torch is not needed)")
    p.add_argument("inputs", nargs="*", metavar="IMAGE_OR_FOLDER")
    add_options(p, PredictOptions)
    p.add_argument("--files-from", metavar="LIST", help="also predict the files listed in LIST, one path (or file:// "
                                                        "URI) a line, read as they are needed")
    p.add_argument("--out-dir", metavar="DIR",
                   help="write the predictions in chunks into DIR (chunks/, manifest.json): resumable, and what runs "
                        "under --nproc / torchrun, each process its share of the chunks")
    p.add_argument("--merge", action="store_true", help="with --out-dir: also DIR/predictions.csv, the chunks in order")
    p.add_argument("--chunk-size", type=int, default=4096, metavar="N", help="files per chunk [default: 4096]")
    p.add_argument("--nproc", type=int, metavar="N", help="predict with N processes on this machine (torchrun), "
                                                          "into --out-dir")
    p.add_argument("--output", help="preds.csv or preds.json (default: CSV on stdout); never inside an input "
                                    "folder; an existing file only if predict wrote it (or with --force); a FIFO "
                                    "or device is written through")
    p.add_argument("--force", action="store_true", help="replace an existing --output file that predict did not write")
    p.add_argument("--explain", metavar="DIR", help="also write where each answer comes from: DIR/<image path relative "
                                                    "to the folder given>.cam.png (a heatmap of the image's size) and "
                                                    ".cam.jpg (an overlay); never inside an input folder or the data")
    p.add_argument("--every", type=float, default=1.0, metavar="SECONDS",
                   help="videos (.mp4, .mov, .mkv, ... or a stream's rtsp:// or http(s):// URL): predict one frame every "
                        "SECONDS of the video; each row is a frame with its time, and the label of its segment (the "
                        "probabilities smoothed over 2 s) [default: 1]")
    p.add_argument("--duration", type=float, metavar="SECONDS",
                   help="videos: predict at most the first SECONDS of each (a stream's URL needs it)")

    p = sub.add_parser("suggest", help="which unlabelled images to label next",
                       description="Ranks the images in UNLABELLED (files and folders, walked) by how much labelling "
                                   "them would help RUN's model: how unsure it is (calibrated probabilities), spread "
                                   "over the feature space (not 100 near copies of one photo), and images unlike "
                                   "every training image (perhaps a new class) where there are more of them than "
                                   "usual. Writes the best --n with the model's guess and the reason, as CSV "
                                   "(default, on stdout) or JSON. Images the run was trained on are left out; "
                                   "nothing in UNLABELLED is changed.")
    p.add_argument("run", help="run folder, or an exported model.onnx (its class probabilities give the diversity)")
    p.add_argument("inputs", nargs="*", metavar="UNLABELLED")
    p.add_argument("--n", type=int, default=100, help="images to suggest [default: 100]")
    p.add_argument("--engine", default="auto", choices=config.engine_choices(), help="what runs the model [default: auto]")
    p.add_argument("--files-from", metavar="LIST", help="also rank the files listed in LIST, one path a line")
    p.add_argument("--output", help="suggestions.csv or .json (default: CSV on stdout); never inside an input "
                                    "folder; an existing file only if suggest wrote it (or with --force)")
    p.add_argument("--force", action="store_true", help="replace an existing --output file that suggest did not write")


def _data_and_tool_commands(sub, raw) -> None:
    """doctor, serve, models, summary, studio, runs, cache."""
    p = sub.add_parser("doctor", help="find what is wrong with a dataset before training on it",
                       description="Exact and near duplicates (and train/val leakage), images with two labels, "
                                   "likely label errors (cleanlab), outliers, class balance, blank, dark, tiny or "
                                   "greyscale images and unreadable files. Prints a summary; writes doctor.json and "
                                   "doctor.html. Uses train's feature cache: a doctor after a train (or before) "
                                   "extracts nothing twice. Nothing in DATA is changed.")
    p.add_argument("data", help="dataset folder")
    p.add_argument("--nproc", type=int, metavar="N", help="examine with N processes on this machine (torchrun): each "
                                                          "extracts and keeps its share of the features")
    add_options(p, DoctorOptions)

    p = sub.add_parser("serve", help="serve a model over HTTP: an API and a web page",
                       description="The web page at /, POST /predict (multipart files or a raw image body, "
                                   "?top_k=), GET /model, /health, /ready and the API docs at /docs. Images of "
                                   "concurrent requests are batched for the model. Listens on 127.0.0.1 unless "
                                   "--host says otherwise, which needs --token (or $TRANSFERKIT_TOKEN) or "
                                   "--no-auth.")
    p.add_argument("model", help="run folder, or an exported model.onnx / model.int8.onnx (ONNX Runtime only: "
                                 "torch is not imported)")
    add_options(p, ServeOptions)

    p = sub.add_parser("models", help="list the available backbones")

    p = sub.add_parser("summary", help="per-layer table of a model as it will be trained",
                       description="Layers, output shapes and parameters (torchinfo) of MODEL with a "
                                   "new head for --num-classes; frozen parts are marked.")
    p.add_argument("model", help="backbone name (see `transferkit models`) or timm:<name>")
    add_options(p, SummaryOptions)

    p = sub.add_parser("studio", help="a local web app: look at the data, fix it, train, compare runs, ship",
                       description="The studio over the datasets DATA (and the runs in --runs-dir): open the "
                                   "address it prints in a browser.")
    p.add_argument("data", nargs="*", metavar="DATA", help="dataset folders")
    add_options(p, StudioOptions, aliases={"runs_dir": "--runs"})

    p = sub.add_parser("runs", help="list the runs in a folder, or compare two", formatter_class=raw,
                       description="transferkit runs [DIR]: a table of the runs in DIR (default: runs/).\n"
                                   "transferkit runs compare A B: settings that differ, metrics and per-class "
                                   "deltas,\nand the validation images one run gets right and the other wrong.")
    p.add_argument("args", nargs="*", metavar="DIR | compare A B",
                   help="the folder of runs (default: runs), or: compare RUN_A RUN_B")
    p.add_argument("--sort", default="when", help="when (default: the latest last) | name | val_acc | "
                                                   "balanced_accuracy | val_map (multi-label) | wall_s | cpu_s | size_mb (the highest first)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("cache", help="show, compact or clear the feature cache")
    p.add_argument("action", choices=["info", "compact", "clear"],
                   help="info: what it holds, per kind, backbone and dataset | compact: rewrite the feature "
                        "shards as few, each entry once | clear: remove it")
    p.add_argument("--cache-dir", help="cache folder [default: $TRANSFERKIT_CACHE or ~/.cache/transferkit]")
    p.add_argument("--dry-run", action="store_true", help="clear: say what would be removed, remove nothing")


def _config_and_options(args: argparse.Namespace) -> tuple[TrainConfig, dict]:
    """The YAML config (or defaults) and the TrainConfig options given as flags (flags win)."""
    options = _options(args, TrainConfig)
    options.pop("data", None)
    return (TrainConfig.from_yaml(args.config) if args.config else TrainConfig()), options


def _launch(nproc: int, argv: list[str]) -> int:
    """--nproc N: the command in N processes under torchrun (`launch`); --nproc 1 runs it here."""
    from .launch import check_nproc, launch, without_nproc

    if nproc != 1:
        return launch(nproc, argv)  # (it checks --nproc itself)
    check_nproc(nproc)
    return main(without_nproc(argv))


def cmd_train(args: argparse.Namespace, started: float, argv: list[str]) -> int:
    if args.nproc is not None:
        return _launch(args.nproc, argv)
    from .distributed import is_primary_process
    from .worker import Worker

    # started before torch is imported: its own imports run meanwhile (by the primary of a group)
    worker = Worker(spawn=is_primary_process())
    from . import api

    cfg, options = _config_and_options(args)
    run = api.train(args.data, config=cfg, started=started, worker=worker, **options)
    return {"SIGINT": 130, "SIGTERM": 143}.get(run.results.get("stopped_by"), 0)


def cmd_lr_find(args: argparse.Namespace) -> int:
    from . import api

    cfg, options = _config_and_options(args)
    api.lr_find(args.data, config=cfg, **_options(args, LRFindOptions), **options)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from . import api
    from .evaluation import metrics
    from .files import Record, read_json_object

    if args.labels and not args.data:
        raise UserError("--labels names the images of a DATA folder: give DATA too (or the table as DATA)")
    summary = api.evaluate(args.run, args.data, out=args.out, labels=args.labels, path_col=args.path_col,
                           label_col=args.label_col, split_col=args.split_col, label_delim=args.label_delim,
                           **_options(args, PredictOptions))
    print(metrics.format_table(summary))
    results = read_json_object(Path(args.run) / "results.json") or Record()
    # multi-label: the mAP (macro) is the figure compared
    name, key = ("mAP", "map_macro") if summary.get("task") == "multilabel" else ("accuracy", "accuracy")
    value = summary.get(key) or 0.0
    saved = results.record("metrics").number(key) if key == "map_macro" else results.number("val_acc")
    if args.data is None and saved is not None:
        print(f"{name} {value:.4f} on {summary['num_images']} images "
              f"(results.json: {saved:.4f}, difference {abs(value - saved):.4f}"
              + (f"; --tta {tta}, the run's figure without" if (tta := getattr(args, "tta", "none")) != "none"
                 else "") + ")")
    else:
        print(f"{name} {value:.4f} on {summary['num_images']} images")
    print(f"metrics: {Path(summary['out']) / 'metrics.json'}\nreport: {Path(summary['out']) / 'report.html'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from . import api

    result = api.export(args.run, **_options(args, ExportOptions))
    for check in result.failed:
        kept = "" if check.checked == "not built" else f"; kept as {result.out / check.file}"
        print(f"error: {check.format}: {check.note}{kept}", file=sys.stderr)
    return 1 if result.failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from . import api

    print(f"report: {api.report(args.run)}")
    return 0


def cmd_predict(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    from .distributed import under_torchrun
    from .files import check_output_file
    from .prediction.batch import iter_inputs
    from .prediction.outputs import OWN_HEADS

    options = PredictOptions(**_options(args, PredictOptions))
    if not args.inputs and not args.files_from:
        raise UserError("give images or folders to predict, or --files-from LIST")
    if args.chunk_size < 1:
        raise UserError("--chunk-size must be 1 or more")
    if args.files_from and not Path(args.files_from).expanduser().is_file():  # before the model loads
        raise UserError(f"--files-from {args.files_from}: no such file")
    if args.nproc is not None:
        if not args.out_dir:
            raise UserError("--nproc writes into --out-dir DIR (each process its share of the chunks)")
        return _launch(args.nproc, argv or [])
    if args.explain and (args.out_dir or args.files_from):
        raise UserError("--explain writes heatmaps of the images and folders given: not with --out-dir or --files-from")
    if args.out_dir:
        return _predict_to_folder(args, options)
    if under_torchrun():
        raise UserError("predict under torchrun writes into --out-dir DIR (each process its share of the chunks)")
    if args.output:
        datasets = [*args.inputs, *_run_data(args.run)]
        from .prediction.video import VIDEO_HEADS

        check_output_file(args.output, "--output", datasets, OWN_HEADS + VIDEO_HEADS, args.force)
    from .prediction.video import is_stream, is_video

    streams = [i for i in args.inputs if is_stream(i)]
    files = list(iter_inputs([i for i in args.inputs if not is_stream(i)], args.files_from))
    videos = streams + [f for f in files if is_video(f)]
    if videos:
        if len(videos) == len(files) + len(streams):
            return _predict_videos(args, options, videos)
        files = [f for f in files if not is_video(f)]
        print(printable(f"warning: {len(videos)} video(s) left out, e.g. {videos[0]}: predict videos in a command of "
                        "their own (their rows are frames)", lines=False), file=sys.stderr)
    if not files:
        raise UserError("no files found in the given inputs")
    if args.explain:
        _check_explain(args)
    predictor = _open_predictor(args, options, len(files), _say, explain=bool(args.explain))
    predictor.set_reject(options.reject, options.unknown_label)
    _write_predictions(args, predictor, files, min(options.top_k, len(predictor.classes)))
    if args.output:
        print(f"{len(files)} predictions written to {args.output}")
    if args.explain:
        print(f"heatmaps written to {args.explain}", file=sys.stderr)
    return 0


def _run_data(run: str) -> list[str]:
    """The data a run folder was trained on (nothing for an exported model): never written into."""
    from .models.bundle import trained_on

    return trained_on(Path(run)) if Path(run).is_dir() else []


def _check_explain(args: argparse.Namespace) -> None:
    """--explain DIR: never inside an input folder or the data, and a run folder's model (an
    exported model has no spatial maps)."""
    from .files import refuse_inside

    refuse_inside(args.explain, [*args.inputs, *_run_data(args.run)], "--explain")
    if _exported(args.run):
        raise UserError(f"--explain: {args.run} is an exported model, which gives only its outputs, no spatial "
                        "maps; explain with the run folder")


def _write_predictions(args: argparse.Namespace, predictor, files: list[str], top_k: int) -> None:
    """`files`' predictions (and with --explain their heatmaps) as CSV or JSON to --output or
    stdout, written as they come (`prediction.command.write_predictions`)."""
    from .console import Console
    from .prediction.command import write_predictions

    kind = "json" if args.output and args.output.endswith(".json") else "csv"
    bar = Console().progress(len(files), "predict")
    with predictor, _output_stream(args.output) as stream:
        write_predictions(predictor, files, top_k, stream, kind, bar, _say,
                          Path(args.explain) if args.explain else None, args.inputs)
    bar.close()


def _say(message: str) -> None:
    """One line on stderr (stdout may hold the predictions' CSV), its control characters escaped."""
    print(printable(message, lines=False), file=sys.stderr, flush=True)


SUGGEST_COLUMNS = ("rank", "path", "guess", "probability", "uncertainty", "margin", "entropy", "ood_score", "novel",
                   "reason")
SUGGEST_HEADS = (b"rank,path,guess,", b'[\n  {\n    "rank": ', b"[]\n")  # what suggest replaces: its own files


def cmd_suggest(args: argparse.Namespace) -> int:
    import json

    from . import api
    from .files import check_output_file, csv_table

    if not args.inputs and not args.files_from:
        raise UserError("give the unlabelled images or folders to rank, or --files-from LIST")
    if args.files_from and not Path(args.files_from).expanduser().is_file():
        raise UserError(f"--files-from {args.files_from}: no such file")
    if args.output:
        datasets = [*args.inputs, *_run_data(args.run)]
        check_output_file(args.output, "--output", datasets, SUGGEST_HEADS, args.force)
    from .console import Console

    console = Console(info_stream=sys.stderr)  # stdout may hold the CSV
    found = api.suggest(args.run, args.inputs, args.n, args.engine, console, args.files_from)
    rows = [{k: row[k] for k in SUGGEST_COLUMNS} for row in found["suggestions"]]
    with _output_stream(args.output) as stream:
        if args.output and args.output.endswith(".json"):
            stream.write(json.dumps(rows, indent=2, ensure_ascii=False) + "\n" if rows else "[]\n")
        else:
            stream.write(csv_table(list(SUGGEST_COLUMNS), [[row[k] for k in SUGGEST_COLUMNS] for row in rows]))
    space = "the backbone's features" if found["features"] else "the class probabilities (no features in this model)"
    print(f"{len(rows)} of {found['images']} images suggested (diversity on {space})"
          + (f"; {found['already_labelled']} left out: the run was trained or validated on them"
             if found["already_labelled"] else "")
          + (f"; written to {args.output}" if args.output else ""), file=sys.stderr)
    return 0


def _predict_videos(args: argparse.Namespace, options: PredictOptions, videos: list[str]) -> int:
    """predict on videos: a row per sampled frame (CSV) or an object per video with its frames and
    segments (JSON); each video's segments said on stderr. A video that cannot be read is named in
    a warning and the others are predicted."""
    import math

    from .prediction import video
    from .prediction.command import write_videos

    if args.explain or args.out_dir:
        raise UserError("--explain and --out-dir take images: predict videos without them")
    if not (math.isfinite(args.every) and args.every > 0):
        raise UserError("--every must be a number of seconds above 0")
    if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
        raise UserError("--duration must be a number of seconds above 0")
    unbounded = [v for v in videos if video.is_stream(v)] if args.duration is None else []
    if unbounded:
        raise UserError(f"{unbounded[0]} is a stream: give --duration SECONDS (how long to predict it)")
    video.require_av()  # (the extra, checked before the model loads)
    predictor = _open_predictor(args, options, len(videos), _say)
    top_k = min(options.top_k, len(predictor.classes))
    as_json = bool(args.output and args.output.endswith(".json"))
    with predictor, _output_stream(args.output) as stream:
        failed = write_videos(predictor, videos, args.every, args.duration, top_k, stream, as_json, _say)
    if failed == len(videos):
        raise UserError(f"no video could be read ({failed} given)")
    if args.output:
        print(f"{len(videos) - failed} video(s) predicted into {args.output}")
    return 0


def _exported(model: str) -> bool:
    """Whether `model` names an exported model (model.onnx, an OpenVINO IR) rather than a run folder."""
    from .prediction.exported import exported_kind

    return exported_kind(model) is not None


def _open_predictor(args: argparse.Namespace, options: PredictOptions, count: int, say, explain: bool = False):
    """The model predict runs (`api.open_predictor`): an exported model on its runtime alone, else
    the run folder's on the engine `engines.choose` picks for `count` inputs (`explain`: one that
    gives spatial maps)."""
    from . import api

    predictor = api.open_predictor(args.run, options.device, options.precision, options.tta, options.engine,
                                   images=count, say=say)
    if _exported(args.run):
        return predictor
    if explain and not predictor.can_explain:  # (a converted model gives no maps: PyTorch's layers do)
        if options.engine != "auto":
            raise UserError(f"--explain: --engine {options.engine} runs this model without its spatial maps; "
                            "leave --engine out (PyTorch gives them)")
        predictor.close()
        predictor = api.load(args.run, options.device, options.precision, options.tta, "torch", images=count, say=say)
    say(f"engine: {predictor.engine.line()}")
    return predictor


def _predict_to_folder(args: argparse.Namespace, options: PredictOptions) -> int:
    """predict --out-dir: chunked, resumable, shared out over a torchrun group (prediction.batch)."""
    from .distributed import joined
    from .files import refuse_inside
    from .prediction.batch import claim_out_dir, predict_to_folder

    if args.output:
        raise UserError("--output and --out-dir: give one (with --out-dir, --merge writes DIR/predictions.csv)")
    out = Path(args.out_dir).expanduser().absolute()
    claim_out_dir(out, args.inputs)  # before the model loads: one line, nothing written
    refuse_inside(out, _run_data(args.run), "--out-dir")
    with joined(options.device) as group:
        from . import api

        predictor = api.open_predictor(args.run, group.device(options.device), options.precision, options.tta,
                                       options.engine, images=args.chunk_size, say=_say if group.primary else None)
        if group.primary and not _exported(args.run):
            _say(f"engine: {predictor.engine.line()}")
        predictor.set_reject(options.reject, options.unknown_label)
        top_k = min(options.top_k, len(predictor.classes))
        identity = {"model": str(Path(args.run).expanduser().absolute()), "tta": options.tta,
                    "reject": options.reject, "unknown_label": options.unknown_label}
        with predictor:
            manifest = predict_to_folder(predictor, args.inputs, args.files_from, Path(args.out_dir), args.chunk_size,
                                         top_k, group, args.merge, identity, _say)
        if group.primary:
            print(f"{manifest['files']} predictions in {len(manifest['chunks'])} chunk(s) in {args.out_dir} "
                  f"({manifest['errors']} unusable file(s); {manifest['resumed_chunks']} chunk(s) already there)"
                  + (f"; merged: {Path(args.out_dir) / 'predictions.csv'}" if args.merge else ""))
    return 0


@contextlib.contextmanager
def _output_stream(output: str | None):
    """stdout, or `output` (`files.output_stream`: a file is written beside it and renamed over
    it once complete, so a failure leaves no half-written file under the name)."""
    if not output:
        yield sys.stdout
        return
    from .files import TEXT_ERRORS, output_stream

    with output_stream(output, "w", encoding="utf-8", errors=TEXT_ERRORS, newline="") as f:
        yield f


def cmd_doctor(args: argparse.Namespace, argv: list[str]) -> int:
    if args.nproc is not None:
        return _launch(args.nproc, argv)
    from .distributed import under_torchrun
    from .worker import DOCTOR_MODULES, Worker

    # imports scikit-learn and cleanlab while torch is imported here (under torchrun the analysis is
    # the group's: it runs in each process)
    worker = Worker(preload=DOCTOR_MODULES, spawn=not under_torchrun())
    from . import api

    report = api.doctor(args.data, worker=worker, **_options(args, DoctorOptions))
    if "out" not in report:  # another process of a torchrun group: the primary reports
        return 0
    print(f"report: {Path(report['out']) / 'doctor.html'}")
    if getattr(args, "write_exclude", None):
        print(f"files to leave out: {args.write_exclude} (train --exclude {args.write_exclude})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serving.server import serve

    options = ServeOptions(**_options(args, ServeOptions))
    try:
        serve(args.model, options)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: uvicorn finished the requests in flight and stopped
        print("stopped", file=sys.stderr)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .errors import require_torch
    from .models import backbones

    require_torch("listing the backbones (what training builds)")  # (before the table's first line)

    print(f"{'name':<20} {'params':>12} {'input':>5} {'top1':>5}  weights offline")
    for name in backbones.names():
        spec = backbones.get(name)
        offline = "yes" if spec.imagenet and spec.imagenet.available() else "no"
        top1 = f"{spec.top1:.1f}" if spec.top1 else "-"
        params = f"{spec.params:,}" if spec.params else "-"
        print(f"{name:<20} {params:>12} {spec.preprocess.input_size:>5} {top1:>5}  {offline}")
    print("any timm architecture: timm:<name> (ImageNet weights from the Hugging Face or torch hub "
          "cache, or --weights PATH)")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from .api import summary

    print(summary(args.model, **_options(args, SummaryOptions)))
    return 0


def cmd_studio(args: argparse.Namespace) -> int:
    from .studio.server import studio

    try:
        studio(args.data, StudioOptions(**_options(args, StudioOptions)))
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    import json

    from . import runs

    if args.args[:1] == ["compare"]:
        if len(args.args) != 3:
            raise UserError("usage: transferkit runs compare RUN_A RUN_B")
        comparison = runs.compare(args.args[1], args.args[2])
        shown = json.dumps(comparison.to_dict(), indent=2) if args.json else runs.format_comparison(comparison)
        print(shown if args.json else printable(shown))
        return 0
    if len(args.args) > 1:
        raise UserError("usage: transferkit runs [DIR] (one folder), or transferkit runs compare RUN_A RUN_B")
    rows = runs.list_runs(args.args[0] if args.args else "runs", args.sort)
    print(json.dumps([r.to_dict() for r in rows], indent=2) if args.json else printable(runs.format_runs(rows)))
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from . import api

    if args.action == "clear":
        root, removed, size = api.clear_cache(args.cache_dir, args.dry_run)
        names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in removed) or "nothing"
        verb = "would remove" if args.dry_run else "removed"
        print(f"{root}: {verb} {names} ({size / 1e6:.1f} MB)")
        return 0
    if args.action == "compact":
        root, stores, (swept, swept_bytes) = api.compact_cache(args.cache_dir)
        if swept:
            print(f"{swept} temporary file(s) left by killed processes removed ({swept_bytes / 1e6:.1f} MB)")
        for d in stores:
            print(f"{d['store']}: {d['shards_before']} -> {d['shards_after']} shards, "
                  f"{d['bytes_before'] / 1e6:.1f} -> {d['bytes_after'] / 1e6:.1f} MB "
                  f"({d['entries_before'] - d['entries_after'] - d['dropped']} duplicate and {d['dropped']} "
                  f"damaged entries dropped)")
        print(f"{root}: {len(stores)} stores compacted" if stores else f"{root}: no feature shards to compact")
        return 0
    info = api.cache_info(args.cache_dir)
    files_, size = (sum(k[f] for k in info["kinds"].values()) for f in ("files", "bytes"))
    print(f"{info['root']}: {files_} files, {size / 1e6:.1f} MB")
    for name, kind in info["kinds"].items():
        print(f"  {name + '/':12} {kind['files']:>9} files {kind['bytes'] / 1e6:>11.1f} MB")
    for model in info["features"]:
        print(f"  features/{model['model']}: {model['shards']} shards, {model['bytes'] / 1e6:.1f} MB")
        for d in model["datasets"]:
            print(f"    {d.get('data')}: {d.get('backbone', '?')}, {d.get('images', 0)} images, "
                  f"{d.get('bytes', 0) / 1e6:.1f} MB (last used {d.get('used', '?')})")
    for variant in info["decoded"]:
        print(f"  decoded/{variant['variant']}: {variant['files']} images, {variant['bytes'] / 1e6:.1f} MB")
    return 0


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    from .distributed import under_torchrun

    if under_torchrun():  # a process torchrun started ends with torchrun, even when that is killed
        from .processes import die_with_parent

        die_with_parent()
    try:
        if args.command == "train":
            return cmd_train(args, started, argv)
        with_argv = {"predict": cmd_predict, "doctor": cmd_doctor}  # (--nproc hands the command line to torchrun)
        if args.command in with_argv:
            return with_argv[args.command](args, argv)
        handlers = {"lr-find": cmd_lr_find, "eval": cmd_eval, "models": cmd_models, "summary": cmd_summary,
                    "cache": cmd_cache, "report": cmd_report, "export": cmd_export, "serve": cmd_serve,
                    "runs": cmd_runs, "studio": cmd_studio, "suggest": cmd_suggest}
        return handlers[args.command](args)
    except UserError as exc:
        print(printable(f"error: {exc}", lines=False), file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # the light install: what needs the train extra says so
        module = missing_training_module(exc)
        if module is None:
            raise
        print(printable(f"error: {extra_line(f'transferkit {args.command}', module)}", lines=False), file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a read-only folder, a full disk, a file in the way: one line, not a traceback
        print(printable(f"error: {os_error_line(exc)}", lines=False), file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - only a peer's failure is answered here
        if not _peer_failed(exc):
            raise
        print("error: another process of this torchrun group stopped (its error is above); this one stopped too",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # before any model was trained: nothing to keep
        print("interrupted: nothing was trained yet, so there is nothing to keep (features computed so far "
              "are cached)" if args.command == "train" else "interrupted", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130


def _peer_failed(exc: Exception) -> bool:
    """Whether `exc` is a collective of a torchrun group that failed because another process of
    the group ended (that process reports its own error)."""
    from .distributed import under_torchrun

    if not under_torchrun() or "torch" not in sys.modules:
        return False
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and (
        "Connection closed by peer" in text or "Connection reset by peer" in text or "gloo" in text.lower()))


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (not the 25-line usage first), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def run() -> None:
    """The console script: `main` with fewer garbage collections, then a direct exit. Tearing the
    interpreter down after torch, timm, scikit-learn and matplotlib were loaded takes 0.4-0.8 s
    (measured on 2 cores) and only frees memory the OS reclaims anyway. By now every output file
    is written atomically and closed, temporary folders are removed and DataLoader workers have
    stopped, so the streams are flushed and the process ends at once."""
    import gc
    import os

    # Importing torch, timm and scikit-learn allocates millions of objects, and at the default
    # threshold (700) the collector keeps rescanning them: one collection per 100,000 allocations
    # saves about 0.15 s of a warm or a cold `train` (measured, 3 pairs each). Training loops
    # allocate about as much as they free, so this changes little else; cycles are still collected.
    gc.set_threshold(100_000, 50, 100)
    import signal

    from .distributed import under_torchrun

    if under_torchrun():
        # torchrun stops a group (to restart it, or on Ctrl-C) with SIGTERM: a process ends at
        # once, and the run continues from its last checkpoint (a restart, or --resume).
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    else:
        signal.signal(signal.SIGTERM, _on_sigterm)
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        pass
    os._exit(code)


if __name__ == "__main__":
    run()
