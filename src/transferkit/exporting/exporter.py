"""Building a run's export formats and checking each one (see `verify`) before anyone trusts it."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import ExportOptions
from ..console import Console
from ..errors import UserError
from ..data.discover import split_samples
from ..files import claim_out, write_json
from ..models import bundle
from ..models.with_ood import with_ood
from .registry import FORMATS, parse_formats
from ..task import Task, multi_hot
from .verify import ExportResult, accuracy, batched, by_structure, decode_images, failing_name, format_table, \
    mark_failed, measure, not_built, speed


def metadata(meta: bundle.BundleMeta) -> dict:
    """What an exported model carries about itself: classes, preprocessing, input and output."""
    return meta.export_metadata()


@dataclass
class ExportJob:
    """What a format's `build` gets: the fp32 model, an example input, the metadata, the files
    built so far in this export (by format name) and the calibration images (decoded on first use)."""

    model: torch.nn.Module
    example: torch.Tensor
    meta: dict
    calibration: Callable[[], np.ndarray]
    built: dict[str, Path] = field(default_factory=dict)
    run_dir: Path | None = None  # the run exported
    # the model with its out-of-distribution score as a second output (`models.with_ood`), where
    # the run has one: what the ONNX formats export, so ONNX Runtime alone gives the run's scores
    scored_model: torch.nn.Module | None = None


def export(run: str | Path, options: ExportOptions | None = None, console: Console | None = None) -> ExportResult:
    """Export RUN's model to `options.formats` under `options.out` (default RUN/export), check each
    artifact on the run's validation images and write export.json. An artifact whose accuracy drop
    exceeds `max_drop` points is kept, renamed *.FAILED.*, and listed in `result.failed`."""
    options, console = options or ExportOptions(), console or Console()
    names = parse_formats(options.formats)
    for name in names:  # (a format's missing extra: one line, before the model loads)
        if FORMATS.get(name).check is not None:
            FORMATS.get(name).check()
    model, bmeta, run_dir = bundle.load(run)
    model = model.float().eval()
    ood = bundle.read_ood(bmeta, run_dir)
    scored_model = with_ood(model, ood) if ood is not None else None
    split_file = run_dir / "split.json"
    if not split_file.is_file():
        raise UserError(f"{split_file} is missing: export checks each artifact on the run's validation images")
    meta = metadata(bmeta)
    ours = ("export.json", *(f.file for f in FORMATS), *(failing_name(Path(f.file)).name for f in FORMATS))
    out_dir = claim_out(options.out or run_dir / "export", ours, "an export folder", bundle.trained_on(run_dir))
    val, calib_paths = _run_images(split_file, bmeta.task, options.calib, console)
    with tempfile.TemporaryDirectory(prefix="transferkit-export-") as tmp:
        x_val, ok = decode_images([p for p, _ in val], meta, Path(tmp), "validation", console.warn)
        y_val = multi_hot([val[i][1] for i in ok], len(meta["classes"])) if bmeta.task.multi else \
            np.array([val[i][1] for i in ok])
        bench = _reference(model, x_val, y_val, meta, bmeta.task, options, out_dir, console)
        if scored_model is not None:
            bench.run_ood, bench.ood_threshold = batched(lambda x: _scores(scored_model, x), x_val), ood.threshold
        calibrated: list[int] = []

        def calibration() -> np.ndarray:
            x_cal, _ = decode_images(calib_paths, meta, Path(tmp), "calibration", console.warn)
            calibrated.append(len(x_cal))
            return x_cal

        job = ExportJob(model, torch.from_numpy(np.ascontiguousarray(x_val[:2])), meta, calibration, run_dir=run_dir,
                        scored_model=scored_model)
        # export.json names only what this export finished: an earlier one's goes first, so an
        # export stopped half-way never leaves a list naming files it has removed
        (out_dir / "export.json").unlink(missing_ok=True)
        for name in names:
            _export_format(name, job, out_dir, bench, console)
    result = bench.result
    write_json(out_dir / "export.json", {**result.to_dict(), "max_drop_pt": options.max_drop,
                                         "measure": "mAP (macro), predicted sets agreeing" if bmeta.task.multi else
                                         "accuracy, top-1 agreeing",
                                         "calibration_images": calibrated[0] if calibrated else 0, "metadata": meta})
    console.info(format_table(result))
    return result


@dataclass
class _Bench:
    """What each artifact is checked against: the validation images and their labels, the
    PyTorch fp32 model's outputs on them (`reference`) and its line of the result, the run's
    out-of-distribution scores of them (None: the run has none) and its threshold."""

    x_val: np.ndarray
    y_val: np.ndarray
    reference: np.ndarray
    result: ExportResult
    meta: dict
    task: Task
    options: ExportOptions
    run_ood: np.ndarray | None = None
    ood_threshold: float | None = None


def _run_images(split_file: Path, task: Task, calib: int, console: Console) -> tuple[list, list[str]]:
    """(the run's validation images that are still there, with their labels; up to `calib` of its
    training images, a fixed random sample, for INT8 calibration)."""
    listed = split_samples(split_file, "val")
    val = [(s.path, list(s.labels or ()) if task.multi else s.label) for s in listed if Path(s.path).exists()]
    if len(val) < len(listed):
        console.warn(f"{len(listed) - len(val)} validation image(s) of this run are gone; checking on the rest")
    train_paths = [s.path for s in split_samples(split_file, "train") if Path(s.path).exists()]
    return val, [train_paths[i] for i in np.random.default_rng(0).permutation(len(train_paths))[:calib]]


def _reference(model, x_val: np.ndarray, y_val: np.ndarray, meta: dict, task: Task, options: ExportOptions,
               out_dir: Path, console: Console) -> _Bench:
    """The PyTorch fp32 model measured on the validation images: what every artifact is checked against."""
    def torch_fp32(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    reference = batched(torch_fp32, x_val)
    ref_acc, ref_per_class = accuracy(reference, y_val, meta["classes"], task)
    result = ExportResult(out_dir, {"format": "pytorch fp32 eager", "accuracy": ref_acc,
                                    "measure": "mAP" if task.multi else "accuracy",
                                    "per_class_accuracy": ref_per_class, "num_val": len(y_val),
                                    **speed(torch_fp32, x_val, options.runs)})
    console.info(f"PyTorch fp32: {'mAP' if task.multi else 'accuracy'} {ref_acc:.4f} on {len(y_val)} validation images, "
                 f"batch-1 {result.reference['latency_ms_p50']:.1f} ms")
    return _Bench(x_val, y_val, reference, result, meta, task, options)


def _export_format(name: str, job: ExportJob, out_dir: Path, bench: _Bench, console: Console) -> None:
    """Build format `name` into `out_dir` and check it against `bench` (its line added to the
    result; renamed *.FAILED.* past the allowed drop); a format that cannot be built is a line."""
    fmt = FORMATS.get(name)
    path = out_dir / fmt.file
    for stale in (path, failing_name(path)):  # (ours: claim_out checked the folder)
        _remove(stale)
    console.info(f"exporting {name} ...")
    missing = [n for n in fmt.needs if n not in job.built]
    try:
        if missing:
            raise UserError(f"it is made from {', '.join(missing)}, which was not built")
        note = _build(fmt, job, path)
    except UserError as exc:  # (a converter that cannot handle the network: the other formats go on)
        console.warn(f"{name}: not exported: {exc}")
        bench.result.checks.append(not_built(name, path, str(exc)))
        return
    run = fmt.runner(path)
    if run is None:  # (not runnable on this OS: checked by its structure, gated where it runs)
        check = by_structure(name, path, "; ".join(filter(None, (note, fmt.inspect(path, bench.meta)))))
    else:
        check = measure(name, path, run, bench.x_val, bench.y_val, bench.reference, bench.result.reference,
                        bench.meta["classes"], bench.options.runs, bench.task)
        check.note = note or ""
    if bench.run_ood is not None and run is not None:
        check_ood(check, path, bench.x_val, bench.run_ood, bench.ood_threshold)
    if check.accuracy_drop_pt is not None and check.accuracy_drop_pt > bench.options.max_drop:
        mark_failed(check, path, bench.options.max_drop)
    job.built[name] = out_dir / check.file  # what a later format builds from (renamed if it failed)
    bench.result.checks.append(check)


def _scores(scored_model, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return scored_model(torch.from_numpy(x))[1].numpy()


def check_ood(check, path: Path, x: np.ndarray, run_ood: np.ndarray, threshold: float | None) -> None:
    """The artifact's out-of-distribution scores (the second output of an exported model that
    computes them) against the run's."""
    from ..prediction.exported import exported_kind, open_session

    if exported_kind(path) is None:
        return
    session = open_session(path)
    if len(session.get_outputs()) != 2:
        return
    got = batched(lambda b: session.run(None, {"input": b})[1].reshape(-1), x)
    check.ood_max_diff = float(np.abs(got - run_ood).max()) if len(got) else 0.0
    if threshold is not None and len(got):
        check.unknown_agreement = float(((got > threshold) == (run_ood > threshold)).mean())


def _build(fmt, job: ExportJob, path: Path):
    """`fmt.build` into a hidden partial name beside `path`, renamed to `path` once it is whole:
    an export killed or failing mid-way leaves no half-written artifact under a real name."""
    partial = path.with_name(f".{path.name}.partial")
    _remove(partial)
    try:
        note = fmt.build(job, partial)
        _remove(path)
        partial.replace(path)
    finally:
        _remove(partial)
    return note


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        import shutil

        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
