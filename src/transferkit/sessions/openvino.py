"""OpenVINO sessions, behind ONNX Runtime's session interface (`OvSession`), of an ONNX model or an
exported IR (`export --formats openvino`: `save_ir`, its folder or model.xml: `ir_file`). What
the `openvino` engine (`engines.openvino`), the exported format and `predict` run. No torch here.

OpenVINO's CPU plugin computes in bf16 by default where the CPU has native bf16; the precision hint
is set to f32 here, so that its answers are fp32's, the answers ONNX Runtime gives on every CPU.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MissingExtra, UserError, first_line
from ..machine import session_threads
from .metadata import META_KEY

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


@functools.lru_cache(maxsize=1)
def shared_core():
    """The process's one OpenVINO `Core`, kept for its lifetime.

    Each `Core` whose CPU plugin loads replaces the main thread's alternate signal stack with one
    of its own (for AMX) and, when it is destroyed, puts back the stack it found and unmaps its
    own. Cores destroyed in another order than they were made (Python frees them when it likes)
    leave the thread on an unmapped stack: the next signal with a handler (a child's SIGCHLD under
    asyncio, faulthandler's) then kills the process with SIGSEGV. Seen here: a process that had
    opened several sessions died that way minutes later. One Core, never destroyed, makes one
    stack that stays mapped; OpenVINO's documentation recommends one Core per process anyway."""
    import openvino as ov

    return ov.Core()


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
        core = shared_core()
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

    try:
        model = shared_core().read_model(str(onnx_file))
        model.set_rt_info(json.dumps(meta), [META_KEY])
        folder.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, str(folder / IR_FILE), compress_to_fp16=False)
    except RuntimeError as exc:  # (an operator OpenVINO does not support: its message names it)
        raise UserError(f"OpenVINO cannot convert {onnx_file.name}: {first_line(exc)}") from None
