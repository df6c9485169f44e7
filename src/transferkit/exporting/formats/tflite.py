"""tflite, tflite-int8: LiteRT (TensorFlow Lite) flatbuffers made by litert-torch from the network
captured by `torch.export`, for Android, the Edge TPU's compiler and microcontrollers' toolchains.

- `model.tflite`: fp32, the run's model as its ONNX export is (input: a float32 NCHW RGB batch
  of one normalized image, output: the logits);
- `model.int8.tflite`: the fp32 flatbuffer quantized by ai-edge-quantizer, LiteRT's own
  post-training quantizer (its `static_wi8_ai8` recipe: INT8 weights and INT8 activations,
  calibrated on the export's `--calib` images drawn from the training split); INT8 in and out,
  with the scale and zero point the interpreter reports. (PT2E quantization in torch before the
  conversion was measured first: with the quantizer's config handed to the converter, 25%
  accuracy on 4 classes; without it, the flatbuffer kept fp32 weights and ran 20x slower.)

The model's transferkit metadata (classes, preprocessing, task, its calibration) rides in the
flatbuffer's own metadata table under the key `transferkit`, as it does in an ONNX model's
properties. Each is checked on the run's validation images with the LiteRT interpreter here, as
every other format is (the gate; batch-32 throughput is 32 images one after another, the shape the
model was converted for). Needs the tflite extra (`pip install 'transferkit[tflite]'`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from ...errors import MissingExtra, UserError, first_line
from ...sessions.litert import write_metadata
from ..registry import ExportFormat, register
from .onnx_fp32 import runner

EXTRA = "tflite"


def check() -> None:
    import importlib.util

    for module in ("litert_torch", "ai_edge_litert"):
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(f"--formats tflite needs litert-torch: pip install 'transferkit[{EXTRA}]'")


@contextlib.contextmanager
def _quiet():
    """litert-torch narrates every conversion step and absl logs: kept off the user's console
    (a failure still raises, with its message)."""
    from ...sessions.litert import quiet_native

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()), quiet_native():
        warnings.simplefilter("ignore")
        level = logging.root.level
        logging.root.setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.root.setLevel(level)


def build(job, path: Path) -> str:
    """Convert `job.model` (batch 1) to the fp32 flatbuffer `path`, with the metadata."""
    check()
    # a run with an out-of-distribution score: its second output, k-th neighbour found without a sort
    # (the interpreter has none), so LiteRT alone gives the run's scores as ONNX Runtime does
    model = job.model if job.scored_model is None else job.scored_model.without_sort()
    _convert_model(model, job.meta, path)
    write_metadata(path, job.meta)
    size = job.meta["preprocess"]["input_size"]
    outputs = "logits and the OOD score" if job.scored_model is not None else "logits"
    return f"fp32; input (1, 3, {size}, {size}) normalized, {outputs} out"


def build_int8(job, path: Path) -> str:
    """The fp32 flatbuffer quantized to INT8 (see the module), calibrated on the calibration images.

    Without the unknown score: quantized, it moved by up to 0.33 and flipped 5% of the unknown
    decisions (the default run, 153 val images), so the INT8 flatbuffer is made from the plain
    model and its metadata names no score (ONNX, OpenVINO and the fp32 flatbuffer carry it)."""
    check()
    import tempfile

    calib = job.calibration()
    meta = job.meta if job.scored_model is None else {k: v for k, v in job.meta.items() if k != "ood"}
    with tempfile.TemporaryDirectory(prefix="transferkit-tflite-") as tmp:
        source = Path(job.built["tflite"])
        if job.scored_model is not None:
            source = Path(tmp) / "plain.tflite"
            _convert_model(job.model, job.meta, source)
        np.save(Path(tmp) / "calib.npy", np.ascontiguousarray(calib))
        _in_child(_quantize, str(source), str(Path(tmp) / "calib.npy"), str(path))
    write_metadata(path, meta)
    return (f"INT8 weights and activations (ai-edge-quantizer static_wi8_ai8), calibrated on {len(calib)} training "
            "images" + ("; without the unknown score (its INT8 values are not the run's)"
                        if job.scored_model is not None else ""))


def _convert_model(model, meta: dict, out: Path) -> None:
    """`model` (batch 1) as the fp32 flatbuffer `out`, converted in a child process (`_convert`)."""
    import tempfile

    import torch

    with tempfile.TemporaryDirectory(prefix="transferkit-tflite-") as tmp:
        torch.save(model.eval(), Path(tmp) / "model.pt")
        _in_child(_convert, str(Path(tmp) / "model.pt"), meta["preprocess"]["input_size"], str(out),
                  str(meta.get("backbone")))


def _in_child(fn, *args: str) -> None:
    """`fn(*args)` in a fresh Python process of its own: litert-torch imports JAX, whose threads do
    not survive a later fork of the process that imported it, so neither it nor the quantizer is
    ever imported into the caller (nor is the caller's main module run again, as multiprocessing's
    spawn would). A UserError in the child is raised here with its message."""
    import subprocess
    import sys

    code = (f"import sys\nfrom {__name__} import {fn.__name__} as fn\nfrom transferkit.errors import UserError\n"
            "try:\n    fn(*sys.argv[1:])\nexcept UserError as exc:\n    print(exc, file=sys.stderr)\n    sys.exit(2)\n")
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    if done.returncode == 2:
        raise UserError(done.stderr.strip().splitlines()[-1])
    if done.returncode != 0:
        tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:] or [f"exit {done.returncode}"]
        raise UserError(f"the LiteRT conversion failed: {tail[0][:300]}")


def _convert(model_file: str, size: str, out: str, backbone: str) -> None:
    """(In the child) the pickled model at `model_file` to the fp32 flatbuffer `out`."""
    import torch

    size = int(size)
    model = torch.load(model_file, weights_only=False)  # (written by `build` a moment ago, in a private folder)
    with _quiet():
        import litert_torch

        try:
            litert_torch.convert(model, (torch.zeros(1, 3, size, size),)).export(out)
        except Exception as exc:  # noqa: BLE001 - torch.export and the converter raise many kinds
            raise UserError(f"LiteRT cannot convert {backbone}: {first_line(exc)}") from None


def _quantize(source: str, calib_file: str, out: str) -> None:
    """(In the child) the flatbuffer `source` quantized to INT8 on the images in `calib_file`, to `out`."""
    from ai_edge_litert.interpreter import Interpreter

    calib = np.load(calib_file)
    with _quiet():
        from ai_edge_quantizer import quantizer, recipe

        signature, names = next(iter(Interpreter(model_path=source).get_signature_list().items()))
        try:
            qt = quantizer.Quantizer(source)
            qt.load_quantization_recipe(recipe.static_wi8_ai8())
            result = qt.calibrate({signature: [{names["inputs"][0]: row[None]} for row in calib]})
            staged = Path(out).with_name(Path(out).name + ".tflite")  # (the quantizer writes only under that extension)
            qt.quantize(result).export_model(str(staged), overwrite=True)
            staged.replace(out)
        except Exception as exc:  # noqa: BLE001 - the quantizer raises many kinds
            raise UserError(f"LiteRT's quantizer cannot quantize {Path(source).name}: {first_line(exc)}") from None



register(ExportFormat(name="tflite", file="model.tflite", order=7, in_all=False, check=check, runner=runner,
                      build=build,
                      summary="LiteRT / TensorFlow Lite fp32 flatbuffer, metadata inside (Android, Edge TPU's "
                              "compiler, microcontrollers)"))
register(ExportFormat(name="tflite-int8", file="model.int8.tflite", order=8, in_all=False, check=check, runner=runner,
                      build=build_int8, needs=("tflite",),
                      summary="LiteRT INT8 flatbuffer (ai-edge-quantizer: INT8 weights and activations), calibrated "
                              "on --calib training images"))
