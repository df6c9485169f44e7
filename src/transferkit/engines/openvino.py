"""OpenVINO on the CPU, in fp32: the same ONNX conversions ONNX Runtime runs (`convert`), compiled
by OpenVINO instead. No torch here.

`OvSession` gives a compiled OpenVINO model the interface of an ONNX Runtime session (`run`,
`get_inputs`, `get_outputs`, `get_modelmeta`), so every predictor and extractor written for ONNX
Runtime runs on it unchanged: a run folder's model (`--engine openvino`), the features of a frozen
backbone, and an exported OpenVINO IR (`export --formats openvino`; its transferkit metadata in the
IR's runtime info under the key ONNX uses, `META_KEY`).

OpenVINO's CPU plugin computes in bf16 by default where the CPU has native bf16; the precision hint
is set to f32 here, so that its answers are fp32's, the answers ONNX Runtime gives on every CPU.
Chosen by name only (`--engine openvino`); `bench/engines.py` measures it beside ONNX Runtime, and
the README's engines table gives the rule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MissingExtra, UserError, first_line
from . import Choice, Engine, register
from .cpu import session_threads

EXTRA = "openvino"
IR_FILE = "model.xml"  # an exported IR's graph (its weights: model.bin beside it)


def require() -> None:
    """One line naming the extra where OpenVINO is not installed."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        raise MissingExtra(f"OpenVINO is not installed: pip install 'transferkit[{EXTRA}]'")


def ir_file(path: str | Path) -> Path | None:
    """The IR's model.xml when `path` is an exported OpenVINO model (its folder, or the .xml), else None."""
    p = Path(path).expanduser()
    if p.is_dir() and (p / IR_FILE).is_file():
        return p / IR_FILE
    return p if p.suffix == ".xml" and p.is_file() else None


@dataclass
class Port:
    name: str
    shape: list  # ints, and "?" for a dynamic dimension (ONNX Runtime's symbolic dimensions are strings too)


@dataclass
class ModelMeta:
    custom_metadata_map: dict = field(default_factory=dict)


class OvSession:
    """A model compiled by OpenVINO for the CPU in fp32, as an ONNX Runtime session is used:
    `model` is an ONNX model's bytes, an ONNX file or an IR's model.xml; `threads` as ONNX
    Runtime's (0: one per core this process may use, or OMP_NUM_THREADS)."""

    def __init__(self, model: bytes | str | Path, threads: int = 0):
        require()
        import openvino as ov

        core = ov.Core()
        try:
            self.model = core.read_model(model if isinstance(model, bytes) else str(Path(model).expanduser()))
            self.compiled = core.compile_model(self.model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                  "INFERENCE_NUM_THREADS": session_threads(threads)})
        except RuntimeError as exc:  # (OpenVINO raises RuntimeError for what it cannot read or compile)
            what = "the model" if isinstance(model, bytes) else model
            raise UserError(f"{what}: OpenVINO cannot run it ({first_line(exc, 200)})") from None
        self._request = self.compiled.create_infer_request()

    def run(self, names, feeds: dict) -> list[np.ndarray]:
        """The outputs for `feeds` ({input name: array}), all of them (`names` is None)."""
        result = self._request.infer(list(feeds.values()))
        return [np.asarray(result[port]) for port in self.compiled.outputs]

    def get_inputs(self) -> list[Port]:
        return [_port(p) for p in self.compiled.inputs]

    def get_outputs(self) -> list[Port]:
        return [_port(p) for p in self.compiled.outputs]

    def get_modelmeta(self) -> ModelMeta:
        """The transferkit metadata an exported IR carries (`set_metadata`), as ONNX's."""
        from ..prediction.onnx_predictor import META_KEY

        if self.model.has_rt_info([META_KEY]):
            return ModelMeta({META_KEY: self.model.get_rt_info([META_KEY]).astype(str)})
        return ModelMeta()


def _port(port) -> Port:
    shape = [d.get_length() if d.is_static else "?" for d in port.get_partial_shape()]
    return Port(port.get_any_name(), shape)


def save_ir(onnx_file: Path, folder: Path, meta: dict) -> None:
    """The ONNX model at `onnx_file` as an OpenVINO IR in `folder` (model.xml, model.bin; fp32
    weights), `meta` (JSON) in its runtime info."""
    require()
    import openvino as ov

    from ..prediction.onnx_predictor import META_KEY

    try:
        model = ov.Core().read_model(str(onnx_file))
        model.set_rt_info(json.dumps(meta), [META_KEY])
        folder.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, str(folder / IR_FILE), compress_to_fp16=False)
    except RuntimeError as exc:  # (an operator OpenVINO does not support: its message names it)
        raise UserError(f"OpenVINO cannot convert {onnx_file.name}: {first_line(exc)}") from None


def choice(device: str, precision: str) -> Choice:
    """`--engine openvino`: the CPU, in fp32."""
    if device.startswith("cuda"):
        raise UserError("--engine openvino runs on the CPU here: give --device cpu, or --engine torch for the GPU")
    if precision not in ("auto", "fp32"):
        raise UserError(f"--engine openvino runs in fp32 (its answers are ONNX Runtime's): drop --precision {precision}")
    require()
    return Choice("openvino", "cpu", "fp32", "--engine openvino")


def features(network, choice: Choice, cache, say):
    from .ort import OrtExtractor

    return OrtExtractor(network, choice, cache, say)


def bundle(run, choice: Choice, tta: str, threads: int, cache, say, batch_size: int = 32, workers: int = 0):
    from .ort import bundle as on_sessions

    return on_sessions(run, choice, tta, threads, cache, say, batch_size, workers)


register(Engine(name="openvino", features=features, bundle=bundle,
                summary="OpenVINO on the CPU in fp32: ONNX Runtime's conversions, compiled by OpenVINO"))
