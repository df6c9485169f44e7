"""`transferkit doctor DATA`: every check on a dataset, from the features `train` caches (the
same backbone, preprocessing and split, so neither extracts anything the other did). The cheap
part that `train` runs on its own features is `health`."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from ..cache import CACHE_FLAG, Cache
from ..config import DoctorOptions
from ..console import Console
from ..errors import UserError
from ..files import atomic_write, check_output_file, claim_out, fresh_dir, output_stream, refuse_inside, shown, text_bytes
from . import checks, copies, images, kinds
from .analysis import find_all
from .report import EXCLUDE_HEAD, build_report, exclude_text, summary_lines

ANALYSIS = "transferkit.doctor.analysis:find_all"  # what the helper process runs

def diagnose(data: str | Path, options: DoctorOptions | None = None, console: Console | None = None,
             worker=None) -> dict:
    """Check DATA; write doctor.json and doctor.html into `options.out` (and the exclude list when
    asked); return the report (with "out": the folder). `worker`: a `transferkit.worker.Worker`
    started with DOCTOR_MODULES (the CLI starts it before importing torch), where the analysis
    runs while this process reads the features; without one it runs here."""
    from ..distributed import joined

    with joined() as group:
        if not group.primary:
            console = Console(quiet=True, warnings=False)  # the primary speaks for the group
        return _diagnose(data, options, console, worker, group)


def _diagnose(data, options: DoctorOptions | None, console: Console | None, worker, group) -> dict:
    from ..data.discover import discover
    from ..data.table import resolve_data, table_of

    options, console = options or DoctorOptions(), console or Console()
    started = time.perf_counter()
    folder, table_file = resolve_data(str(data), options.labels, options)  # (DATA may be a label table)
    table = table_of(dataclasses.replace(options, labels=table_file))
    data = Path(folder).expanduser().absolute()
    if options.write_exclude:
        check_output_file(options.write_exclude, "--write-exclude", [data], EXCLUDE_HEAD, options.force)
    cache = Cache(options.cache_dir)
    refuse_inside(cache.root, [data], CACHE_FLAG)
    cache.prepare()
    split = discover(data, options.val_fraction, options.seed, cache.datasets(), table, label_delim=options.label_delim)
    out = group.decide(lambda: _out_dir(options.out, data))
    features = _features(data, split, options, cache, console, group)
    if features.sharded and split.task.multi:
        raise UserError(f"{shown(data)}: multi-label data is examined in one process so far: run doctor without "
                        "torchrun (or --nproc)")
    if features.sharded:
        found, paths, labels, splits, timings = _sharded_analysis(features, options, cache, group, started)
        if not group.primary:
            return {"rank": group.rank}
        return _write(data, options, console, features, out, found, paths, labels, splits, timings, started)
    paths, labels, splits = checks.samples_of(features.split)
    last = np.concatenate(features.last_layer()).astype(np.float32)
    n = features.num_images
    head_features = np.concatenate([features.x_train[:n], features.x_val]).astype(np.float32)
    hashes, props, thumbs = images.read_all(paths, cache.image_facts())
    timings = {"features_s": round(time.perf_counter() - started, 2)}
    multi_hot = features.split.targets(features.split.train + features.split.val) if split.task.multi else None
    args = (last, head_features, labels, splits, hashes, props, thumbs, len(split.classes), options.near_threshold,
            options.seed, multi_hot)
    key = _analysis_key(args)
    found = _stored_analysis(features.store, key)
    if found is None:
        found = worker.call(ANALYSIS, *args) if worker is not None else find_all(*args)
        _store_analysis(features.store, key, found)
    return _write(data, options, console, features, out, found, paths, labels, splits, timings, started)


def _sharded_analysis(features, options: DoctorOptions, cache: Cache, group, started: float):
    """The analysis with the features spread over a torchrun group (`doctor.sharded`): each
    process reads its images' facts (content hash, pixel properties, thumbnail) and the primary
    gathers those, not the features. (found on the primary, paths, labels, splits, timings)."""
    from . import sharded

    paths, labels, splits = checks.samples_of(features.split)
    n = features.num_images
    here = np.concatenate([features.train_index, len(features.split.train) + features.val_index]).astype(np.int64)
    last = np.concatenate(features.last_layer()).astype(np.float32)
    head_features = np.concatenate([features.x_train[:n], features.x_val]).astype(np.float32)
    mine = images.read_all([paths[i] for i in here], cache.image_facts())
    parts = group.gather((here, mine))  # to the primary alone
    facts = None
    if parts is not None:
        facts = ([None] * len(paths), [None] * len(paths), [None] * len(paths))
        for where, values in parts:
            for column, got in zip(facts, values):
                for i, v in zip(where.tolist(), got):
                    column[i] = v
    timings = {"features_s": round(time.perf_counter() - started, 2)}
    digest = _analysis_key((here, last, head_features))  # what this process holds
    digests = group.all_gather(digest)
    key = group.decide(lambda: _analysis_key((digests, labels, splits, *facts, len(features.split.classes),
                                                options.near_threshold, options.seed)))
    found = group.decide(lambda: _stored_analysis(features.store, key))
    if found is None:
        found = sharded.find_all(last, head_features, here, labels, splits, facts, len(features.split.classes),
                                 options.near_threshold, options.seed, group)
        if group.primary:
            _store_analysis(features.store, key, found)
    return found, paths, labels, splits, timings


def _write(data: Path, options: DoctorOptions, console: Console, features, out: Path, found: dict, paths, labels,
           splits, timings: dict, started: float) -> dict:
    """doctor.json, doctor_map.json, doctor.html (and the exclude list), the summary; the report."""
    report = build_report(data, options, features.split, paths, labels, splits, found, timings)
    timings["total_s"] = round(time.perf_counter() - started, 2)
    atomic_write(out / "doctor.json", (json.dumps(report, indent=2) + "\n").encode())
    atomic_write(out / "doctor_map.json",
                 json.dumps(_feature_map(found, paths, labels, splits, features.split)).encode())
    from .page import write_page

    write_page(out / "doctor.html", report)
    if options.write_exclude:
        with output_stream(options.write_exclude, "wb") as f:
            f.write(text_bytes(exclude_text(report)))
    report["out"] = str(out)
    for line in summary_lines(report):
        console.info(line) if not line.startswith("!") else console.warn(line[1:])
    return report


# The analysis's findings are kept in the feature cache under a digest of everything it read
# (features, labels, splits, hashes, pixel properties, thumbnails, thresholds, seed, this
# version): a doctor run on unchanged images reads them (warm: 1.2 s instead of 5 s).
ANALYSIS_VERSION = 2  # 2: the feature map and neighbours (doctor_map.json)


def _analysis_key(args: tuple) -> str:
    import hashlib

    # (the kinds found, each with its version: a check added or changed finds its part again)
    h = hashlib.sha256(repr((ANALYSIS_VERSION, copies.COPY_MATCH, copies.COPY_SUM, checks.NEIGHBOURS,
                             checks.OUTLIER_Z, [(k.name, k.version) for k in kinds.KINDS])).encode())
    for a in args:
        items = a if isinstance(a, list) else [a]
        for x in items:
            if isinstance(x, np.ndarray):
                h.update(repr((x.dtype.str, x.shape)).encode())
                h.update(np.ascontiguousarray(x).tobytes())
            else:
                h.update(repr(x).encode())
    return h.hexdigest()


def _stored_analysis(store, key: str) -> dict | None:
    data = store.get(key, "doctor") if store is not None else None
    if data is None:
        return None
    try:
        return json.loads(data.tobytes().decode())
    except (ValueError, UnicodeDecodeError):
        return None


def _store_analysis(store, key: str, found: dict) -> None:
    if store is not None:
        store.put(key, "doctor", np.frombuffer(json.dumps(found).encode(), dtype=np.uint8))
        store.flush()


def _feature_map(found: dict, paths, labels, splits, split) -> dict:
    """doctor_map.json: every image on the features' plane (PCA), its nearest images ("more like
    this") and the out-of-fold head's opinion of its class (what `transferkit studio` draws);
    multi-label data: each image's label set (class indices) and its most probable class."""
    m = found.get("map") or {}
    predicted = m.get("predicted")
    if split.task.multi:
        labels = [list(s.labels) for s in split.train + split.val]
    return {"classes": split.classes, "task": split.task.kind, "paths": list(paths),
            "labels": [x if isinstance(x, list) else int(x) for x in labels],
            "splits": [str(s) for s in splits], "xy": m.get("xy", []), "neighbours": m.get("neighbours", []),
            "predicted": predicted}


def _out_dir(out: str | None, data: Path) -> Path:
    if out is not None:
        return claim_out(Path(out).expanduser().absolute(), ("doctor.json", "doctor.html"), "a doctor folder", [data])
    target = Path("runs") / f"doctor-{data.name}"
    refuse_inside(target, [data], "the report folder (default: ./runs/doctor-<data>; --out elsewhere)")
    target.parent.mkdir(parents=True, exist_ok=True)
    return fresh_dir(target)


def _run_model(model: str):
    """(meta, run folder) where --model names a run folder (one with model.json), else None; a
    `UserError` for a run whose head was not fitted on frozen features (its backbone changed)."""
    from ..models.bundle import read_meta

    if not (Path(model).expanduser() / "model.json").is_file():
        return None
    meta, run_dir = read_meta(Path(model).expanduser())
    if meta.frozen_features is None:
        raise UserError(f"--model {model}: this run fine-tuned its backbone, so its features are not a frozen "
                        "backbone's; give a run fitted on frozen features (linear, the default) or a backbone name")
    return meta, run_dir


def _features(data: Path, split, options: DoctorOptions, cache: Cache, console: Console, group=None):
    """The split's features as `train` (default strategy) extracts and caches them."""
    from .. import engines
    from ..machine import default_workers
    from ..engines.ort import frozen_network
    from ..features.dataset import CachedFeatures, features_key, int8_key
    from ..models import backbones
    from ..models.lazy import LazyClassifier, identify_weights

    run = _run_model(options.model)
    # train's default choice for this split, so that both read the same cached features
    engine = engines.choose(options.engine, "auto", "auto", len(split.train) + len(split.val))
    console.info(f"features: {engine.line()}")
    workers = default_workers() if options.workers is None else options.workers
    if run is not None:  # a run folder: its frozen backbone's features, as it extracted (and carries) them
        meta, run_dir = run
        ident = meta.frozen_features
        return CachedFeatures.for_key(split, ident["features"], ident["multi"], meta.preprocess, None, engine, cache,
                                      console, 0, options.seed, max(1, workers), group,
                                      sharded=group is not None and group.distributed, data=data,
                                      network=frozen_network(meta, run_dir), backbone=meta.backbone).get(console)
    spec = backbones.get(options.model)
    pre = spec.with_input_size(None)  # the linear default: the backbone's own size
    weights = identify_weights(spec, "imagenet")
    key = features_key(spec, "standard", weights.identity, pre, engine.network_precision)
    multi = spec.has_multi_layer  # as train's default (--features auto): one pass serves both
    models = LazyClassifier(spec, len(split.classes), "imagenet", 0.0, cache.backbone_file(key), "standard",
                            "multi" if multi else "last")
    key = int8_key(engine, key, multi, pre, models, cache, [s.path for s in split.train], console, group)
    # in a torchrun group each process extracts and keeps its share (`doctor.sharded`)
    return CachedFeatures.for_key(split, key, multi, pre, models, engine, cache, console, 0, options.seed,
                                  max(1, workers), group, sharded=group is not None and group.distributed,
                                  data=data).get(console)
