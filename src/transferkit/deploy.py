"""Deployable artifacts of a run, each checked against the PyTorch model before anyone trusts it.

- ONNX: fp32, dynamic batch, opset 18, weights inside the file, and the class names and
  preprocessing in the model's metadata (`onnx_predict` reads them).
- TorchScript: a traced module with the same metadata as an extra file, for PyTorch-only targets.
- INT8: ONNX Runtime static post-training quantization of the ONNX model (its pre-processing
  step, then QDQ format, per-channel INT8 weights, UINT8 activations calibrated on N training
  images): the format Vitis AI and other NPU toolchains ingest.

Every artifact runs on the run's validation images, prepared by the torch-free code that
`transferkit predict model.onnx` uses: top-1 agreement and max |logit difference| with the
PyTorch fp32 model, accuracy overall and per class, the accuracy drop (gated by --max-drop),
size, batch-1 latency (p50, p90) and batch-32 throughput beside PyTorch fp32 eager.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import bundle
from .errors import ImageDecodeError, UserError
from .images import normalized_array
from .onnx_predict import META_KEY

FORMATS = ("onnx", "torchscript", "int8")
OPSET = 18
FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "int8": "model.int8.onnx"}


@dataclass
class Check:
    """One artifact measured against the PyTorch fp32 model on the validation images."""

    format: str
    file: str
    size_mb: float
    top1_agreement: float
    max_abs_logit_diff: float
    accuracy: float
    accuracy_drop_pt: float  # PyTorch fp32 accuracy minus this artifact's, in points
    per_class_accuracy: dict[str, float]
    latency_ms_p50: float
    latency_ms_p90: float
    throughput_b32: float  # images/s at batch 32
    passed: bool = True
    note: str = ""


@dataclass
class ExportResult:
    out: Path
    reference: dict  # the PyTorch fp32 model's accuracy and speed
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        return {"out": str(self.out), "reference": self.reference, "artifacts": [asdict(c) for c in self.checks]}


def parse_formats(value: str) -> list[str]:
    names = list(FORMATS) if value == "all" else [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise UserError(f"--format {value}: choose from {', '.join(FORMATS)} or all (comma-separated)")
    if "int8" in names and "onnx" not in names:
        names.insert(0, "onnx")  # INT8 quantizes the fp32 ONNX model
    return [n for n in FORMATS if n in names]


def metadata(meta: bundle.BundleMeta) -> dict:
    from . import __version__

    pre = meta.preprocess.to_dict()
    return {"transferkit": __version__, "backbone": meta.backbone, "classes": meta.classes,
            "preprocess": {k: pre[k] for k in ("input_size", "resize_size", "interpolation", "mean", "std", "rule")},
            "input": "float32 NCHW (batch, 3, input_size, input_size), RGB", "output": "logits (batch, classes)"}


def _images(paths: list[str], meta: dict, folder: Path, name: str,
            warn: Callable[[str], None]) -> tuple[np.ndarray, list[int]]:
    """The eval views of `paths`, decoded once into a memory-mapped float32 file in `folder` (so
    a large validation set is never held in memory), with the indices that could be read."""
    p = meta["preprocess"]
    size = p["input_size"]
    x = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.float32,
                                  shape=(max(1, len(paths)), 3, size, size))
    ok = []
    for i, path in enumerate(paths):
        try:
            x[len(ok)] = normalized_array(path, p["resize_size"], size, p["interpolation"], p["mean"], p["std"])
            ok.append(i)
        except (ImageDecodeError, OSError) as exc:
            warn(f"skipped {path}: {getattr(exc, 'reason', exc)}")
    if not ok:
        raise UserError(f"none of the run's {name} images could be read")
    return x[:len(ok)], ok


def _batched(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([fn(np.ascontiguousarray(x[i:i + batch])) for i in range(0, len(x), batch)])


def speed(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, runs: int) -> dict:
    """Batch-1 latency (p50, p90 over `runs` calls) and batch-32 throughput (median of a few)."""
    one = np.ascontiguousarray(x[:1])
    for _ in range(3):
        fn(one)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(one)
        times.append(time.perf_counter() - t)
    b32 = np.ascontiguousarray(x[np.arange(32) % len(x)])
    fn(b32)
    batch_times = []
    for _ in range(max(2, runs // 10)):
        t = time.perf_counter()
        fn(b32)
        batch_times.append(time.perf_counter() - t)
    return {"latency_ms_p50": float(np.percentile(times, 50) * 1e3), "latency_ms_p90": float(np.percentile(times, 90) * 1e3),
            "throughput_b32": float(32 / np.median(batch_times))}


def _accuracy(logits: np.ndarray, y: np.ndarray, classes: list[str]) -> tuple[float, dict[str, float]]:
    """Accuracy and per-class accuracy (= recall), by scikit-learn."""
    from sklearn.metrics import accuracy_score, recall_score

    pred = logits.argmax(1)
    recall = recall_score(y, pred, labels=list(range(len(classes))), average=None, zero_division=0)
    return float(accuracy_score(y, pred)), {c: float(r) for c, r in zip(classes, recall)}


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, meta: dict) -> None:
    import onnx

    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates its steps on stdout
        torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=OPSET,
                          dynamo=True, external_data=False)
    set_onnx_metadata(path, meta)
    onnx.checker.check_model(str(path))


def set_onnx_metadata(path: Path, meta: dict) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {META_KEY: json.dumps(meta)})
    onnx.save(proto, str(path))


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path, meta: dict) -> None:
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still what users deploy
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(path), _extra_files={"transferkit.json": json.dumps(meta)})


class _Calibration:
    """ONNX Runtime's CalibrationDataReader over preprocessed training images, in batches (MinMax
    calibration keeps running extremes: the batch size does not change the result)."""

    def __init__(self, x: np.ndarray, name: str, batch: int = 16):
        self.items = ({name: np.ascontiguousarray(x[i:i + batch])} for i in range(0, len(x), batch))

    def get_next(self):
        return next(self.items, None)


def export_int8(onnx_path: Path, path: Path, calib: np.ndarray, meta: dict) -> None:
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        # The classifier head stays fp32: one small matrix, no measurable latency, and the layer
        # where INT8 error lands directly on the logits (a head with very unequal weights, before
        # strategies.scale floored the feature scales: 52% top-1 agreement quantized, 96% fp32).
        head = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type in ("Gemm", "MatMul")]
        quantize_static(str(prepared), str(path), _Calibration(calib, "input"), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=head)
    set_onnx_metadata(path, meta)


def _onnx_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    from .onnx_predict import open_session

    session = open_session(path)
    return lambda x: session.run(None, {"input": x})[0]


def _torchscript_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path)).eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()
    return run


def export(run: str | Path, formats: str = "all", calib: int = 100, max_drop: float = 1.0,
           out: str | Path | None = None, runs: int = 50, log: Callable[[str], None] = print,
           warn: Callable[[str], None] = print) -> ExportResult:
    """Export RUN's model to `formats` under `out` (default RUN/export), check each artifact on the
    run's validation images and write export.json. An artifact whose accuracy drop exceeds
    `max_drop` points is kept, renamed *.FAILED.*, and listed in `result.failed`."""
    import tempfile

    names = parse_formats(formats)
    if calib < 1:
        raise UserError("--calib must be >= 1")
    model, bmeta, run_dir = bundle.load(run)
    model = model.float().eval()
    split_file = run_dir / "split.json"
    if not split_file.is_file():
        raise UserError(f"{split_file} is missing: export checks each artifact on the run's validation images")
    split = json.loads(split_file.read_text())
    meta = metadata(bmeta)
    ours = ("export.json", *FILES.values(), *(failing_name(Path(f)).name for f in FILES.values()))
    out_dir = bundle.claim_out(out or run_dir / "export", ours, "an export folder")
    val = [(p, int(label)) for p, label in split["val"] if Path(p).exists()]
    if len(val) < len(split["val"]):
        warn(f"{len(split['val']) - len(val)} validation image(s) of this run are gone; checking on the rest")
    train_paths = [p for p, _ in split["train"] if Path(p).exists()]
    calib_paths = [train_paths[i] for i in np.random.default_rng(0).permutation(len(train_paths))[:calib]]

    def torch_fp32(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    with tempfile.TemporaryDirectory(prefix="transferkit-export-") as tmp:
        x_val, ok = _images([p for p, _ in val], meta, Path(tmp), "validation", warn)
        y_val = np.array([val[i][1] for i in ok])
        reference = _batched(torch_fp32, x_val)
        ref_acc, ref_per_class = _accuracy(reference, y_val, meta["classes"])
        result = ExportResult(out_dir, {"format": "pytorch fp32 eager", "accuracy": ref_acc,
                                        "per_class_accuracy": ref_per_class, "num_val": len(y_val),
                                        **speed(torch_fp32, x_val, runs)})
        log(f"PyTorch fp32: accuracy {ref_acc:.4f} on {len(y_val)} validation images, "
            f"batch-1 {result.reference['latency_ms_p50']:.1f} ms")
        example = torch.from_numpy(np.ascontiguousarray(x_val[:2]))
        onnx_file = out_dir / FILES["onnx"]  # INT8's source (renamed if it failed its own check)
        calibrated = 0
        for name in names:
            path = out_dir / FILES[name]
            for stale in (path, failing_name(path)):
                stale.unlink(missing_ok=True)
            log(f"exporting {name} ...")
            if name == "onnx":
                export_onnx(model, example, path, meta)
            elif name == "torchscript":
                export_torchscript(model, example, path, meta)
            else:
                x_cal, _ = _images(calib_paths, meta, Path(tmp), "calibration", warn)
                calibrated = len(x_cal)
                export_int8(onnx_file, path, x_cal, meta)
            runner = _torchscript_runner(path) if name == "torchscript" else _onnx_runner(path)
            check = measure(name, path, runner, x_val, y_val, reference, result.reference, meta["classes"], runs)
            if name == "int8":
                check.note = f"{calibrated} calibration images from the training split"
            if check.accuracy_drop_pt > max_drop:
                mark_failed(check, path, max_drop)
                onnx_file = out_dir / check.file if name == "onnx" else onnx_file
            result.checks.append(check)
    bundle.write_json(out_dir / "export.json", {**result.to_dict(), "max_drop_pt": max_drop,
                                                "calibration_images": calibrated, "metadata": meta})
    log(format_table(result))
    return result


def measure(name: str, path: Path, runner, x: np.ndarray, y: np.ndarray, reference: np.ndarray,
            ref: dict, classes: list[str], runs: int) -> Check:
    """One artifact against the PyTorch fp32 logits `reference` on the same inputs."""
    logits = _batched(runner, x)
    acc, per_class = _accuracy(logits, y, classes)
    return Check(name, path.name, path.stat().st_size / 1e6, float((logits.argmax(1) == reference.argmax(1)).mean()),
                 float(np.abs(logits - reference).max()), acc, (ref["accuracy"] - acc) * 100, per_class,
                 **speed(runner, x, runs))


def mark_failed(check: Check, path: Path, max_drop: float) -> None:
    """Keep the artifact, under a name nobody deploys by mistake."""
    failed = failing_name(path)
    path.rename(failed)
    check.passed, check.file = False, failed.name
    check.note = (check.note + "; " if check.note else "") + (
        f"accuracy drop {check.accuracy_drop_pt:.2f} pt > --max-drop {max_drop}")


def failing_name(path: Path) -> Path:
    """model.int8.onnx -> model.int8.FAILED.onnx"""
    return path.with_name(f"{path.stem}.FAILED{path.suffix}")


def format_table(result: ExportResult) -> str:
    ref = result.reference
    lines = [f"{'artifact':<28} {'MB':>6} {'top-1 agree':>11} {'max |dlogit|':>12} {'accuracy':>8} {'drop pt':>7} "
             f"{'b1 p50 ms':>9} {'b1 p90 ms':>9} {'b32 img/s':>9}",
             f"{'pytorch fp32 eager':<28} {'':>6} {'':>11} {'':>12} {ref['accuracy']:8.4f} {'':>7} "
             f"{ref['latency_ms_p50']:9.1f} {ref['latency_ms_p90']:9.1f} {ref['throughput_b32']:9.1f}"]
    for c in result.checks:
        lines.append(f"{c.file:<28} {c.size_mb:6.1f} {c.top1_agreement:11.4f} {c.max_abs_logit_diff:12.2e} "
                     f"{c.accuracy:8.4f} {c.accuracy_drop_pt:7.2f} {c.latency_ms_p50:9.1f} {c.latency_ms_p90:9.1f} "
                     f"{c.throughput_b32:9.1f}" + ("" if c.passed else "  FAILED: " + c.note))
    lines.append(f"export.json: {result.out / 'export.json'}")
    return "\n".join(lines)
