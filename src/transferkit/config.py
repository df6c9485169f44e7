"""Every option of every command as a typed dataclass field: its default, its help, its
constraints, and their checks. No torch here. The bottom layer: it imports only leaves (the
registries' declarations, for the names an option may take); the strategies declare which
training options they take, and `training.options` resolves a `TrainConfig` against them.

The same names are used by the CLI (``--batch-size``), a YAML file (``batch_size:``) and Python
(``transferkit.train(data, batch_size=...)``), and the same checks run for all three: a number
out of range or not finite, an unknown choice, or (`training.options`) an option that does not
apply to the chosen strategy is one `UserError` line, raised before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from .data.augment import AUGMENTS
from .engines.base import choices as engine_choices  # what runs a network: auto, or a registered engine
from .errors import UserError
from .task import TASKS
from .tracking.registry import TRACKERS
from .training.strategies.base import STRATEGIES

STEMS = ("auto", "standard", "small")
CLASS_WEIGHTS = ("none", "auto")
OPTIMIZERS = ("lbfgs", "adamw", "adam", "sgd")
SCHEDULES = ("cosine", "onecycle", "constant")
PRECISIONS = ("auto", "bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
FEATURES = ("auto", "last", "multi")
ENGINE_HELP = ("what runs the frozen network: auto (ONNX Runtime in fp32 on a CPU, the network converted once, "
               "cached and checked against PyTorch: the same answers on every CPU; PyTorch on a GPU) | onnxruntime "
               "| torch (bf16 where the CPU has it: faster with AMX, answers a little different) | onnxruntime-int8 "
               "(features from the network quantized once, calibrated on training images: faster, answers differ "
               "from fp32's) | openvino (OpenVINO in fp32 on the same conversions; the openvino extra)")
TTA = ("none", "flip", "flip-crops")  # test-time augmentation (prediction.base): the views averaged per image


def opt(default: Any, help: str, *, choices: tuple | Callable[[], list] | None = None,
        low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False,
        epochs: bool = False, shown: str | None = None, repeat: bool = False) -> Any:
    """A config field with its one-line help (shown by `--help`) and its constraints: `choices`
    (or a callable giving them), a range [low, high] (`*_open`: the bound itself excluded; floats
    must be finite), and `epochs`: used only where a model trains for epochs (not by the
    logistic-regression head, which is fitted to convergence). `shown`: the default as --help
    states it, where the field's own (None) means something else. `repeat`: a list of choices,
    kept as one comma-separated string (the flag repeated, comma-separated, or a YAML list)."""
    return field(default=default, metadata={"help": help, "choices": choices, "low": low, "high": high,
                                            "low_open": low_open, "high_open": high_open, "epochs": epochs,
                                            "shown": shown, "repeat": repeat})


TABLE_HELP = {
    "labels": "CSV/TSV file naming each image and its label, instead of class folders (paths relative to DATA or to "
              "the file's folder); a metadata.csv in DATA with file_name and label columns is read without it",
    "path_col": "--labels: the column of image paths (default: the first)",
    "label_col": "--labels: the column of labels (default: the second)",
    "split_col": "--labels: the column of splits: train | val | valid | validation | test, or a true/false is_valid "
                 "(default: none, the seeded stratified split)",
    "label_delim": "--labels (or DATA/metadata.csv): splits a label cell into several labels, e.g. ' ' or ';' "
                   "(multi-label; default: a cell is one label)",
}


def table_opt(name: str) -> Any:
    """One of the label table's options (`data.table`), as train and doctor both take them."""
    return opt(None, TABLE_HELP[name])


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class TrainConfig:
    """Options of `transferkit train`. ``None`` means "the strategy's default" (or, for an option
    the strategy does not take, "not used")."""

    data: str = opt("", "dataset folder: DATA/train/<class>/..., optional DATA/val/<class>/...")
    model: str = opt("efficientnet_lite0", "backbone name, see `transferkit models`")
    weights: str | None = opt(None, "imagenet | none (random init) | PATH to a state dict",
                              shown="imagenet; none (scratch)")
    strategy: str = opt("linear", "one of the strategies listed above", choices=STRATEGIES.names)
    budget: float | None = opt(None, "auto: seconds the whole command may take, from its start: fine-tuning gets the "
                               "epochs that fit, timed on a few steps (None: no limit)", low=0, low_open=True)
    teacher: str | None = opt(None, "distill: the trained run (folder) whose predictions the model learns from")
    temperature: float | None = opt(None, "distill: softmax temperature of the teacher's and the student's logits",
                                    low=0, low_open=True)
    alpha: float | None = opt(None, "distill: weight of the teacher term; 1 - alpha weighs the labels' "
                                    "cross-entropy", low=0, high=1)
    stem: str = opt("auto", "auto (small for <= 64 px images without pretrained weights, where the backbone "
                    "has one) | standard | small (CIFAR-style: stride-1 3x3 stem conv, no max-pool)", choices=STEMS)
    image_size: int | None = opt(None, "network input size (None: the backbone's; CIFAR-10 from scratch: 32)",
                                 low=16, high=1024)
    unfreeze: int | None = opt(None, "partial: how many of the backbone's last stages train", low=0, low_open=True)
    lr_decay: float | None = opt(None, "gradual: LR multiplier per stage, from the top stage down",
                                 low=0, high=1, low_open=True)
    epochs: int | None = opt(None, "training epochs", low=0, low_open=True, epochs=True)
    batch_size: int | None = opt(None, "images (or cached feature rows) per step", low=0, low_open=True, high=65536,
                                 epochs=True)
    lr: float | None = opt(None, "peak learning rate of the head", low=0, low_open=True, epochs=True)
    backbone_lr_mult: float | None = opt(None, "the backbone's LR = lr * this", low=0, low_open=True)
    weight_decay: float | None = opt(None, "decoupled weight decay (AdamW), L2 (SGD/Adam) or the logistic "
                                     "regression's L2 on standardized features (lbfgs; default: chosen by "
                                     "cross-validation)", low=0)
    optimizer: str | None = opt(None, "lbfgs (linear only: a logistic regression, its default) | adamw "
                                "(the default elsewhere) | adam | sgd", choices=OPTIMIZERS)
    schedule: str | None = opt(None, "cosine | onecycle | constant", choices=SCHEDULES, epochs=True)
    warmup_epochs: float | None = opt(None, "linear warm-up before the schedule (cosine only)", low=0, epochs=True)
    label_smoothing: float | None = opt(None, "cross-entropy label smoothing", low=0, high=1, high_open=True,
                                        epochs=True)
    loss: str = opt("bce", "multi-label data's loss when a network (or an epoch-trained head) trains: bce (each "
                    "class's binary cross-entropy) | asl (asymmetric loss, Ridnik et al. 2021: easy negatives "
                    "down-weighted, gamma- 4, gamma+ 0, clip 0.05)", choices=("bce", "asl"))
    class_weights: str = opt("none", "none | auto (inverse class frequency in the loss)", choices=CLASS_WEIGHTS)
    balanced_sampler: bool = opt(False, "draw training images so that every class is equally frequent")
    sync_bn: bool | None = opt(None, "under torchrun on GPUs: BatchNorm statistics over the whole group's batch "
                               "(SyncBatchNorm) instead of each process's own")
    dropout: float | None = opt(None, "dropout before the new head", low=0, high=1, high_open=True, epochs=True)
    augment: str | None = opt(None, "training views: none (the center crop) | basic (random resized crop + flip) | "
                              "randaugment (basic, then RandAugment 2 ops at magnitude 9) | trivial (basic, then "
                              "TrivialAugmentWide; its ops, like MixUp/CutMix, stop for the last quarter of the "
                              "epochs); torchvision transforms v2 on the cached uint8 images",
                              choices=lambda: AUGMENTS.names())
    mixup: float | None = opt(None, "MixUp: image pairs and their labels mixed by Beta(A, A) weights, soft-target "
                              "loss (0: off; 0.2 is usual)", low=0)
    cutmix: float | None = opt(None, "CutMix: a box of one image pasted into another, the labels mixed by area, "
                               "Beta(A, A) (0: off; 1.0 is usual; with --mixup, one or the other per batch)", low=0)
    ema: float | None = opt(None, "exponential moving average of the weights, this decay per step (warmed up: "
                            "at step t at most 1 - (1 + t)^(-2/3); and at most 1 - 10 / the run's steps, so "
                            "it averages no more than the last tenth of a short run); the averaged weights are "
                            "what is measured each epoch and saved (0: off; 0.999 is usual)",
                            low=0, high=1, high_open=True)
    layer_decay: float | None = opt(None, "layer-wise LR decay (timm's convention): the backbone's layer i of L "
                                    "(timm's fine-grained groups: stem, each block, the last conv) trains at "
                                    "its LR x F^(L - i), the head at lr (1: off; 0.65-0.85 is usual)",
                                    low=0, high=1, low_open=True)
    drop_path: float | None = opt(None, "stochastic depth of timm backbones: the rate at the last block "
                                  "(timm's drop_path_rate; 0: off)", low=0, high=1, high_open=True)
    patience: int | None = opt(None, "stop after this many epochs without a better val accuracy (0: off)", low=0,
                               epochs=True)
    seed: int = opt(0, "seeds the split, the augmentation and the initialization", low=0, high=2**32 - 1)
    val_fraction: float = opt(0.2, "used when DATA has no val/ folder: stratified split", low=0, high=1,
                              low_open=True, high_open=True)
    aug_views: int | None = opt(None, "augmented crops per training image whose features are cached too", low=0)
    features: str | None = opt(None, "the head's input: last (the backbone's pooled output) | multi (plus earlier "
                               "stages' pooled activations, same forward pass) | auto (whichever cross-validates "
                               "better on the training images)", choices=FEATURES)
    labels: str | None = table_opt("labels")
    path_col: str | None = table_opt("path_col")
    label_col: str | None = table_opt("label_col")
    split_col: str | None = table_opt("split_col")
    label_delim: str | None = table_opt("label_delim")
    task: str = opt("auto", "auto (multi-label where any image has several labels) | single | multilabel (one "
                    "sigmoid per class: an image may have any of them, or none)", choices=TASKS)
    exclude: str | None = opt(None, "file of image paths to leave out, one per line (# starts a comment), e.g. "
                              "written by `transferkit doctor --write-exclude`")
    fixes: str | None = opt(None, "CSV of decisions about images (path relative to DATA, exclude | relabel, the "
                            "new label, reason, time), e.g. made in `transferkit studio`; DATA is not changed")
    add: str | None = opt(None, "CSV/TSV of more labelled images, anywhere on disk (path,label as --labels reads; "
                          "paths absolute or relative to the file), e.g. the studio's label-next answers: images of "
                          "DATA's classes join the training split only (validation stays DATA's), a new class's are "
                          "split like DATA's; nothing is copied into DATA")
    cache_dir: str | None = opt(None, "feature/decode cache (default: $TRANSFERKIT_CACHE or ~/.cache/transferkit)")
    no_cache: bool = opt(False, "compute features in a temporary cache, leave the user's cache alone")
    cache_limit: str = opt("auto", "the most the decoded-image cache (fine-tuning) may hold, e.g. 50GB or 800MiB: "
                           "the least recently used images are evicted, and decoded again when needed | auto (half "
                           "the disk space free for it, at most 64 GB) | none (unbounded) | 0 (keep none)")
    no_report: bool = opt(False, "skip the plots and report.html (about 0.45 s of a warm run; "
                          "`transferkit report RUN` makes them later)")
    precision: str = opt("auto", "auto (networks train in bf16 where the CPU has it, AMP on CUDA; features: "
                         "the engine's) | bf16 | fp32", choices=PRECISIONS)
    device: str = opt("auto", "auto | cpu | cuda", choices=DEVICES)
    engine: str = opt("auto", ENGINE_HELP, choices=engine_choices)
    workers: int | None = opt(None, "DataLoader worker processes (None: chosen for the machine)", low=0, high=64)
    track: str | None = opt(None, "log the run to experiment trackers: mlflow | tensorboard (repeat the flag or "
                            "comma-separate; optional extras: pip install transferkit[mlflow,tensorboard])",
                            choices=lambda: TRACKERS.names(), repeat=True)
    out: str | None = opt(None, "run folder (default: a fresh folder under runs_dir)")
    runs_dir: str = opt("runs", "where fresh run folders are made")
    name: str | None = opt(None, "run folder name under runs_dir")
    quiet: bool = opt(False, "print warnings and errors only (no progress, no results table)")
    resume: str | None = opt(None, "continue the interrupted run in this folder from its last checkpoint")
    from_run: str | None = opt(None, "start from this finished run: its backbone and settings (options given now win); "
                                     "finetune, partial and gradual continue its weights, its classes' head rows kept "
                                     "and new classes' rows started from their images' mean features; linear refits "
                                     "the head on every image, extracting only the new ones' features")

    # -- YAML ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: Path) -> None:
        """Write every option to `path` atomically (--resume reads it back)."""
        from .files import atomic_write

        atomic_write(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False).encode())

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a dict (a YAML file or keyword arguments); unknown keys are rejected."""
        return cls(**coerce(values, cls))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        return cls.from_mapping(read_yaml(path))


def default_text(f: dataclasses.Field) -> str:
    """The default --help states for field `f`: its `shown` text, or its value (a training
    option's None is each strategy's value: `training.options.strategy_defaults`)."""
    return f.metadata.get("shown") or str(f.default)


# -- the options of the other commands ---------------------------------------------------------


@dataclass
class ExportOptions:
    """Options of `transferkit export`."""

    formats: str = opt("all", "formats, comma-separated, or all", choices=None)
    calib: int = opt(100, "INT8 calibration images drawn from the training split", low=1)
    max_drop: float = opt(1.0, "largest accuracy drop allowed, in points; an artifact past it is renamed "
                          "*.FAILED.* and the command exits with status 1", low=0)
    out: str | None = opt(None, "output folder (default: RUN/export)")
    runs: int = opt(50, "batch-1 latency samples per artifact", low=1, high=10000)

    def __post_init__(self) -> None:
        check_values(self)  # (--formats: read by `exporting.registry.parse_formats` before any work)


REJECT_HELP = ("which predictions are unknown, their ood_score (how unlike the training images) above: auto (the "
               "model's threshold, set to keep 95 in 100 of its val images) | off | a score in [0, 2]")
UNKNOWN_HELP = "the label of an unknown image (default: the predicted class; the unknown column says it)"


@dataclass
class PredictOptions:
    """Options of `transferkit predict` and `transferkit.load(...).predict`."""

    top_k: int = opt(3, "labels per image", low=1)
    engine: str = opt("auto", ENGINE_HELP, choices=engine_choices)
    device: str = opt("auto", "auto | cpu | cuda", choices=DEVICES)
    precision: str = opt("auto", "auto | bf16 (PyTorch) | fp32", choices=PRECISIONS)
    tta: str = opt("none", "test-time augmentation, the probabilities of the views averaged: none | flip (and "
                   "its mirror image: 2x the compute) | flip-crops (also the view without the crop margin: 4x)",
                   choices=TTA)
    reject: str = opt("auto", REJECT_HELP)
    unknown_label: str | None = opt(None, UNKNOWN_HELP)

    def __post_init__(self) -> None:
        check_values(self)
        check_reject(self)




def check_reject(options) -> None:
    """--reject (auto | off | a score in the score's range) and --unknown-label, checked: one line."""
    from .ood import parse_reject

    try:
        options.reject = parse_reject(options.reject)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if options.unknown_label is not None and not str(options.unknown_label).strip():
        raise UserError("--unknown-label must be a name")


@dataclass
class ServeOptions:
    """Options of `transferkit serve` and `transferkit.serve(...)`: where it listens, who may call
    it, how requests are batched for the model and what a request may hold."""

    host: str = opt("127.0.0.1", "address to listen on; any other than loopback needs --token or --no-auth")
    port: int = opt(8000, "port (0: a free one, printed at start)", low=0, high=65535)
    token: str | None = opt(None, "Bearer token that /predict and /model require (also read from "
                            "$TRANSFERKIT_TOKEN, which keeps it out of the process list); 16 characters or more",
                            shown="$TRANSFERKIT_TOKEN or none")
    no_auth: bool = opt(False, "serve a non-loopback address without a token (anyone who reaches it may use it)")
    workers: int = opt(1, "worker processes, each with its own copy of the model", low=1, high=64)
    max_batch: int = opt(32, "most model inputs run together: images of concurrent requests are batched",
                         low=1, high=1024)
    max_wait_ms: float = opt(2.0, "how long a batch waits for more images once the model is free, in ms",
                             low=0, high=1000)
    max_body_mb: float = opt(20.0, "largest request body in MB: a bigger one gets 413", low=0, low_open=True,
                             high=4096)
    max_files: int = opt(16, "most images in one request", low=1, high=1024)
    top_k: int = opt(3, "labels per image when the request does not say (?top_k=)", low=1)
    cors: str | None = opt(None, "origins allowed to call the API from other sites' pages, comma-separated "
                           "(* for any); CORS is off without it")
    engine: str = opt("auto", ENGINE_HELP, choices=engine_choices)
    device: str = opt("auto", "auto | cpu | cuda (a run folder's model)", choices=DEVICES)
    precision: str = opt("auto", "auto | bf16 | fp32 (a run folder's model under PyTorch)", choices=PRECISIONS)
    tta: str = opt("none", "test-time augmentation: none | flip | flip-crops", choices=TTA)
    reject: str = opt("auto", REJECT_HELP)
    unknown_label: str | None = opt(None, UNKNOWN_HELP)

    def __post_init__(self) -> None:
        check_values(self)
        check_exposure(self, "the model")
        check_reject(self)


def check_delim(delim: str | None) -> str | None:
    """`delim` (--label-delim) if it can separate labels in a cell; else a UserError."""
    if delim is not None and not (0 < len(delim) <= 8 and delim not in ("\n", "\r", '"')):
        raise UserError(f"--label-delim {delim!r}: one to eight characters that separate the labels in a cell, "
                        "e.g. ' ' or ';'")
    return delim


def check_exposure(options, what: str) -> None:
    """A server's host and token (serve, studio): the token from $TRANSFERKIT_TOKEN when not given,
    long enough; any address but loopback needs it (or, to serve anyone, --no-auth)."""
    import ipaddress

    if options.token is None:
        options.token = os.environ.get("TRANSFERKIT_TOKEN") or None
    if options.token is not None and (len(options.token) < 16 or any(c.isspace() for c in options.token)):
        raise UserError("--token must be 16 characters or more, without spaces (e.g. `openssl rand -hex 16`)")
    if options.token and options.no_auth:
        raise UserError("give --token or --no-auth, not both")
    try:
        loopback = options.host == "localhost" or ipaddress.ip_address(options.host).is_loopback
    except ValueError:
        raise UserError(f"--host must be an IP address or localhost (got '{options.host}')") from None
    if not loopback and not (options.token or options.no_auth):
        raise UserError(f"--host {options.host} lets other machines reach {what}: give --token (or set "
                        "$TRANSFERKIT_TOKEN) so that only callers who know it may use it, or --no-auth "
                        "to serve it to anyone")


@dataclass
class StudioOptions:
    """Options of `transferkit studio`."""

    runs_dir: str = opt("runs", "the runs it lists and where the runs it starts go (their fixes files too, in "
                        "RUNS/fixes)")
    host: str = opt("127.0.0.1", "address to listen on; any other than loopback needs --token or --no-auth")
    port: int = opt(8765, "port (0: a free one, printed at start)", low=0, high=65535)
    token: str | None = opt(None, "token the page and the API require (also read from $TRANSFERKIT_TOKEN); "
                            "16 characters or more", shown="$TRANSFERKIT_TOKEN or none")
    no_auth: bool = opt(False, "listen on a non-loopback address without a token (anyone who reaches it may "
                        "use it, and start training)")
    cache_dir: str | None = opt(None, "cache folder [default: $TRANSFERKIT_CACHE or ~/.cache/transferkit]")
    label_delim: str | None = opt(None, "splits the label cells of the datasets' metadata.csv into several labels, "
                                  "e.g. ' ' or ';' (multi-label; passed to the training and doctor runs it starts)")

    def __post_init__(self) -> None:
        check_values(self)
        check_exposure(self, "the studio")
        check_delim(self.label_delim)


@dataclass
class DoctorOptions:
    """Options of `transferkit doctor`."""

    model: str = opt("efficientnet_lite0", "backbone whose features compare the images (train's default: the "
                     "features are shared with train through the cache), or a run folder fitted on frozen features: "
                     "its backbone, as the run carries it (no torch needed)")
    out: str | None = opt(None, "folder for doctor.json and doctor.html (default: a new runs/doctor-<data> folder)")
    write_exclude: str | None = opt(None, "write the files it would leave out to this file, one per line, for "
                                    "`train --exclude` (never into DATA; an existing file only if doctor wrote it)")
    force: bool = opt(False, "replace an existing --write-exclude file that doctor did not write")
    labels: str | None = table_opt("labels")
    path_col: str | None = table_opt("path_col")
    label_col: str | None = table_opt("label_col")
    split_col: str | None = table_opt("split_col")
    label_delim: str | None = table_opt("label_delim")
    near_threshold: float = opt(0.90, "cosine similarity of two images' features from which they are the same "
                                "scene (near copies are confirmed by comparing the images themselves)",
                                low=0, high=1, low_open=True)
    val_fraction: float = opt(0.2, "share held out for validation without a val/ folder (as train: the same split)",
                              low=0, high=1, low_open=True, high_open=True)
    seed: int = opt(0, "the split's seed (as train's)", low=0, high=2**31 - 1)
    cache_dir: str | None = opt(None, "cache folder [default: $TRANSFERKIT_CACHE or ~/.cache/transferkit]")
    workers: int | None = opt(None, "decoding processes (None: as train)", low=0, high=64)
    engine: str = opt("auto", ENGINE_HELP, choices=engine_choices)
    quiet: bool = opt(False, "print only the summary")

    def __post_init__(self) -> None:
        check_values(self)


@dataclass
class LRFindOptions:
    """Options of `transferkit lr-find` besides the training options."""

    steps: int | None = opt(None, "steps of the sweep (None: 100 on cached features, 50 otherwise)", low=2)
    start_lr: float = opt(1e-7, "first learning rate", low=0, low_open=True)
    end_lr: float = opt(1.0, "last learning rate", low=0, low_open=True)

    def __post_init__(self) -> None:
        check_values(self)
        if not self.end_lr > self.start_lr:
            raise UserError(f"need --start-lr < --end-lr (got {self.start_lr}, {self.end_lr})")


@dataclass
class SummaryOptions:
    """Options of `transferkit summary`."""

    num_classes: int = opt(1000, "classes of the new head", low=1, high=100_000)
    input_size: int | None = opt(None, "input side in pixels (None: the backbone's)", low=16, high=1024)
    strategy: str = opt("finetune", "what is marked trainable: as this strategy trains it",
                        choices=lambda: [s.name for s in STRATEGIES if s.trains != "chosen"])
    unfreeze: int = opt(2, "partial: stages that train", low=1)
    depth: int = opt(3, "nesting depth of the table", low=1)

    def __post_init__(self) -> None:
        check_values(self)


# -- checks shared by every options class ------------------------------------------------------


def check_values(obj: Any) -> None:
    """Each field's value: finite, in its range, one of its choices (None passes: unset)."""
    for f in fields(obj):
        value, meta = getattr(obj, f.name), f.metadata
        if value is None or isinstance(value, bool):
            continue
        choices = meta.get("choices")
        if choices is not None:
            known = list(choices() if callable(choices) else choices)
            for item in (value.split(",") if meta.get("repeat") else [value]):
                if item not in known:
                    raise UserError(f"{flag(f.name)} must be one of {', '.join(known)} (got '{item}')")
        if isinstance(value, (int, float)):
            _check_number(f.name, value, meta)


def _check_number(name: str, value: float, meta: dict) -> None:
    if not math.isfinite(value):
        raise UserError(f"{flag(name)} must be a finite number (got {value})")
    low, high = meta.get("low"), meta.get("high")
    too_low = low is not None and (value <= low if meta.get("low_open") else value < low)
    too_high = high is not None and (value >= high if meta.get("high_open") else value > high)
    if not (too_low or too_high):
        return
    if high is None:
        raise UserError(f"{flag(name)} must be {'>' if meta.get('low_open') else '>='} {_fmt(low)} (got {value})")
    if low is None:
        raise UserError(f"{flag(name)} must be {'<' if meta.get('high_open') else '<='} {_fmt(high)} (got {value})")
    left, right = "(" if meta.get("low_open") else "[", ")" if meta.get("high_open") else "]"
    raise UserError(f"{flag(name)} must be in {left}{_fmt(low)}, {_fmt(high)}{right} (got {value})")


def _fmt(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def read_yaml(path: str | Path) -> dict[str, Any]:
    from .files import DamagedFile, load_yaml_object, shown

    p = Path(path).expanduser()
    try:
        return dict(load_yaml_object(p, limit=1 << 20))
    except FileNotFoundError:
        raise UserError(f"config file not found: {shown(p)}") from None
    except OSError as exc:
        raise UserError(f"config file {shown(p)} cannot be read: {exc.strerror or exc}") from None
    except DamagedFile as exc:
        raise UserError(f"config file {shown(p)} {exc}" + (": it must hold a mapping of option: value"
                                                           if "mapping" in str(exc) else "")) from None


def field_type(f: dataclasses.Field) -> str:
    """int / float / str / bool of a field (Optional unwrapped)."""
    return str(f.type).replace(" | None", "").strip()


def coerce(values: dict[str, Any], cls: type) -> dict[str, Any]:
    """`values` checked against `cls`'s fields: unknown names are refused with the closest known
    one, and values of the wrong type with a one-line error. A float written as YAML reads it
    without a dot (`lr: 1e-3` is a string to YAML 1.1) is accepted as a float."""
    known = {f.name: field_type(f) for f in fields(cls)}
    repeated = {f.name for f in fields(cls) if f.metadata.get("repeat")}
    out = {}
    for key, value in values.items():
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"unknown option '{key}'{hint}")
        out[key] = _listed(key, value) if key in repeated else _typed(key, value, known[key])
    return out


def _listed(key: str, value: Any) -> str | None:
    """A repeatable option's value (a string, comma-separated or not, or a list of them) as one
    comma-separated string, each name once, in the order given; None or empty: None."""
    items = value if isinstance(value, (list, tuple)) else [value] if value is not None else []
    if not all(isinstance(item, str) for item in items):
        raise UserError(f"option '{key}' must be a name or a list of names (got {value!r})")
    names = [n.strip() for item in items for n in item.split(",") if n.strip()]
    return ",".join(dict.fromkeys(names)) or None


_PY_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _typed(key: str, value: Any, declared: str) -> Any:
    allowed = _PY_TYPES.get(declared)
    if value is None or allowed is None:
        return value
    if declared == "float" and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, allowed) or (declared != "bool" and isinstance(value, bool)):
        raise UserError(f"option '{key}' must be of type {declared} (got {value!r})")
    return value
