"""coreml, coreml-fp16: a Core ML model package (mlprogram; weights and compute in fp32, or fp16)
made by coremltools from the network captured by `torch.export`, for Apple's Vision and Core ML.

The package takes an **image** (RGB, input_size x input_size, resized and centre-cropped as the
model's metadata says) and normalizes it inside the graph, exactly as transferkit does: (pixel -
255 mean) / (255 std) per channel. A single-label model is a Core ML **classifier**: `classLabel`
and `classLabel_probs` (the softmax at the run's calibrated temperature) over the run's classes. A
multi-label model gives `probabilities` (each class's sigmoid; a class is predicted at the
thresholds in the metadata). The metadata `export` writes for every format is in the package's
user-defined metadata under `transferkit`.

Core ML predicts on macOS only. Here the package is checked by its structure (`inspect`: the
image input and its size, the outputs, the class labels, the metadata); on macOS `runner` runs it
and the accuracy gate measures it as every other format. Needs the coreml extra
(`pip install 'transferkit[coreml]'`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import platform
import warnings
from pathlib import Path

import numpy as np

from ...errors import MissingExtra, UserError, first_line
from ...sessions.metadata import META_KEY
from ..registry import ExportFormat, register

EXTRA = "coreml"
IMAGE = "image"  # the package's input
LABEL, PROBS, MULTI_OUTPUT = "classLabel", "classLabel_probs", "probabilities"


def check() -> None:
    import importlib.util

    if importlib.util.find_spec("coremltools") is None:
        raise MissingExtra(f"--formats coreml needs coremltools: pip install 'transferkit[{EXTRA}]'")


@contextlib.contextmanager
def _quiet():
    """coremltools narrates (progress bars, version notes, its missing macOS runtime) on import
    and conversion: kept off the user's console."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            import coremltools  # noqa: F401 - imported here, quietly

            yield
    finally:
        logger.setLevel(level)


def _with_preprocessing(model, meta: dict):
    """The classifier taking 0-255 RGB pixels: normalized in the graph, its probabilities out."""
    import torch

    from ...task import Task

    pre, task = meta["preprocess"], Task.from_dict(meta.get("task"), len(meta["classes"]))

    class Packaged(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(pre["mean"], dtype=torch.float32).view(1, 3, 1, 1) * 255)
            self.register_buffer("std", torch.tensor(pre["std"], dtype=torch.float32).view(1, 3, 1, 1) * 255)

        def forward(self, x):
            logits = self.model((x - self.mean) / self.std)
            return torch.sigmoid(logits) if task.multi else torch.softmax(logits / task.temperature, 1)

    return Packaged().eval(), task


def build_package(job, path: Path, precision: str) -> str:
    """Convert `job.model` (see the module) and save it as the package `path`."""
    check()
    import torch

    with _quiet():
        import coremltools as ct

        packaged, task = _with_preprocessing(job.model, job.meta)
        size = job.meta["preprocess"]["input_size"]
        example = torch.rand(1, 3, size, size) * 255
        try:
            program = torch.export.export(packaged, (example,)).run_decompositions({})
            package = ct.convert(program, inputs=[ct.ImageType(name=IMAGE, shape=example.shape,
                                                               color_layout=ct.colorlayout.RGB)],
                                 outputs=None if not task.multi else [ct.TensorType(name=MULTI_OUTPUT)],
                                 classifier_config=None if task.multi else ct.ClassifierConfig(job.meta["classes"]),
                                 convert_to="mlprogram", minimum_deployment_target=ct.target.iOS15,
                                 compute_precision=ct.precision.FLOAT16 if precision == "fp16" else
                                 ct.precision.FLOAT32)
        except Exception as exc:  # noqa: BLE001 - torch.export and coremltools raise many kinds
            raise UserError(f"Core ML cannot convert {job.meta.get('backbone')}: {first_line(exc)}") from None
        package.short_description = f"transferkit {job.meta.get('backbone')} classifier: {len(job.meta['classes'])} classes"
        package.user_defined_metadata[META_KEY] = json.dumps(job.meta)
        staged = path.with_name(path.name + ".mlpackage")  # (coremltools saves only under that extension)
        try:
            package.save(str(staged))
            staged.replace(path)
        finally:
            if staged.exists():
                import shutil

                shutil.rmtree(staged, ignore_errors=True)
    return (f"mlprogram, {precision}, image input {size}x{size} RGB normalized in the graph; "
            + ("probabilities (sigmoid)" if task.multi else "classifier (softmax at the run's temperature)"))


def inspect(path: Path, meta: dict) -> str:
    """The package's structure against the run's: an image input of its size, the outputs, the
    class labels, the metadata. A mismatch is a UserError; what was checked is returned."""
    with _quiet():
        import coremltools as ct

        package = ct.models.MLModel(str(path), skip_model_load=True)
    spec, size = package.get_spec(), meta["preprocess"]["input_size"]
    inputs = {i.name: i for i in spec.description.input}
    image = inputs.get(IMAGE)
    problems = []
    if len(inputs) != 1 or image is None or image.type.WhichOneof("Type") != "imageType":
        problems.append(f"one image input named {IMAGE} expected, found {sorted(inputs)}")
    elif (image.type.imageType.width, image.type.imageType.height) != (size, size):
        problems.append(f"the image input is {image.type.imageType.width}x{image.type.imageType.height}, not {size}")
    outputs = [o.name for o in spec.description.output]
    multi = (meta.get("task") or {}).get("kind") == "multilabel"
    expected = [MULTI_OUTPUT] if multi else [LABEL, PROBS]
    if outputs != expected:
        problems.append(f"outputs {outputs}, expected {expected}")
    if not multi:
        labels = _class_labels(spec)
        if labels != meta["classes"]:
            problems.append(f"class labels {labels[:5]}..., not the run's {meta['classes'][:5]}...")
    if json.loads(package.user_defined_metadata.get(META_KEY, "null") or "null") != json.loads(json.dumps(meta)):
        problems.append("its transferkit metadata is not the run's")
    if problems:
        raise UserError(f"{path.name}: " + "; ".join(problems))
    return (f"checked by structure (Core ML predicts on macOS only): {IMAGE} {size}x{size} RGB, outputs "
            f"{', '.join(outputs)}, {len(meta['classes'])} class labels, metadata; the gate runs on macOS")


def _class_labels(spec) -> list[str]:
    """The class labels a classifier package's program names (its classify op's constant list)."""
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                if op.type == "classify":
                    for argument in op.inputs["classes"].arguments:
                        values = argument.value.immediateValue.list.values
                        return [v.immediateValue.tensor.strings.values[0] for v in values]
    return []


def runner(path: Path):
    """On macOS: (N, 3, S, S) normalized inputs -> log-probabilities (the gate's logits up to a
    constant per image: the same argmax and accuracy). Elsewhere None: `inspect` checks it."""
    if platform.system() != "Darwin":
        return None
    from PIL import Image

    with _quiet():
        import coremltools as ct

        package = ct.models.MLModel(str(path))
    meta = json.loads(package.user_defined_metadata[META_KEY])
    mean, std = (np.asarray(meta["preprocess"][k], np.float32).reshape(1, 3, 1, 1) for k in ("mean", "std"))
    classes, multi = meta["classes"], (meta.get("task") or {}).get("kind") == "multilabel"

    def run(x: np.ndarray) -> np.ndarray:
        pixels = np.clip(np.rint((x * std + mean) * 255), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        out = []
        for row in pixels:
            answer = package.predict({IMAGE: Image.fromarray(row)})
            p = np.asarray(answer[MULTI_OUTPUT]).reshape(-1) if multi else \
                np.array([answer[PROBS][c] for c in classes], np.float64)
            p = np.clip(p, 1e-12, 1 - 1e-7)
            out.append(np.log(p / (1 - p)) if multi else np.log(p))
        return np.asarray(out, np.float32)

    return run



def _format(name: str, file: str, precision: str, order: int) -> ExportFormat:
    return ExportFormat(name=name, file=file, order=order, in_all=False, check=check, inspect=inspect, runner=runner,
                        build=lambda job, path: build_package(job, path, precision),
                        summary=f"Core ML model package (mlprogram, {precision}): image in, classes out; checked by "
                                "structure here, gated on macOS")


register(_format("coreml", "model.mlpackage", "fp32", 5))
register(_format("coreml-fp16", "model.fp16.mlpackage", "fp16", 6))
