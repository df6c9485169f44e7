"""Inference engines: what runs a frozen network wherever transferkit only infers (feature
extraction in train, doctor and lr-find; eval; predict; serve). Training a network stays on
PyTorch.

`choose` decides, once per command, which engine runs and in which precision, and why:

- a CPU: ONNX Runtime in fp32 (the network converted once, cached by content and checked
  against PyTorch on real images: `convert`). On AMD Zen 4 it ran EfficientNet-Lite0 1.9x as fast
  as PyTorch bf16 and 4.3x as fast as PyTorch fp32, on Zen 5 1.1-1.2x as fast as PyTorch bf16; it
  needs no torch import (1.3-2.8 s); and its answers are the same on every CPU. On a CPU with
  Intel AMX, PyTorch bf16 computes 1.34x as fast (bench/engines.py), but its features differ
  from fp32's by up to 7% of their scale, which moved 4 of CIFAR-10's 1,000 val images
  (bench/same_answers.py): `auto` keeps the same answers, `--engine torch` takes the speed;
- a CUDA GPU: PyTorch on it, in bf16 (fp16 where the GPU lacks bf16);
- `--engine onnxruntime-int8`: features from the backbone quantized to INT8 (`int8`), faster,
  not fp32's answers: asked for by name only;
- `--engine openvino`: OpenVINO in fp32 on ONNX Runtime's conversions (`openvino`), asked for
  by name: bench/engines.py measured it 1.7-2.2x ONNX Runtime's speed with the same answers on one
  Intel Xeon, not yet on the AMD machines, so `auto` does not pick it;
- `--engine torch|onnxruntime` forces one; `--precision bf16` means PyTorch (ONNX Runtime has no
  bf16 kernels on CPU); ONNX Runtime missing, or a network it cannot run, means PyTorch.

Each engine is one module of this package that registers an `Engine`; this module and those
import no torch at the top, so a command that runs on ONNX Runtime never imports it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

from ..errors import UserError
from ..registry import Registry
from . import cpu

CHOICES = ("auto", "onnxruntime", "torch", "onnxruntime-int8", "openvino")


@dataclass(frozen=True)
class Engine:
    """One inference engine: how it extracts features and how it runs a run folder's model."""

    name: str
    summary: str
    features: Callable  # (network: convert.Network, choice, cache, say) -> an extractor (features.Extractor's API)
    bundle: Callable  # (run, choice, tta, threads, cache, say) -> a prediction.base.BasePredictor


ENGINES: Registry[Engine] = Registry("inference engine", package=__name__)
register = ENGINES.register


@dataclass(frozen=True)
class Choice:
    """The engine chosen, where and in which precision it runs, and why."""

    engine: str  # "onnxruntime" | "onnxruntime-int8" | "openvino" | "torch"
    device: str  # "cpu" | "cuda" | "cuda:N"
    precision: str  # "fp32" | "bf16" | "fp16" | "int8"
    reason: str

    @property
    def network_precision(self) -> str:
        """The precision of the network the engine's features come from, which keys them in the
        cache: INT8 features are the fp32 network's, quantized (`int8.features_key`)."""
        return "fp32" if self.precision == "int8" else self.precision

    def to_dict(self) -> dict:
        return {"name": self.engine, "device": self.device, "precision": self.precision, "reason": self.reason,
                **cpu.describe()}

    def line(self) -> str:
        """One console line."""
        return f"{self.engine} on {self.device} in {self.precision} ({self.reason})"

    @property
    def implementation(self) -> Engine:
        return ENGINES.get(self.engine)


def normalized(engine: str) -> str:
    """The engine's name ("onnx" is accepted for "onnxruntime")."""
    return "onnxruntime" if engine == "onnx" else engine


def choose(engine: str = "auto", device: str = "auto", precision: str = "auto", images: int | None = None) -> Choice:
    """The engine for a pass over `images` images (None: an open-ended stream, as a server's;
    the rule does not depend on it today, the callers say it for the rules to come).

    Raises `UserError` for a combination that cannot run (ONNX Runtime in bf16, or on a GPU)."""
    engine = normalized(engine)
    if engine not in CHOICES:
        raise UserError(f"--engine {engine}: choose from {', '.join(CHOICES)}")
    if engine == "onnxruntime-int8":  # (asked for by name only: its answers are not fp32's)
        from .int8 import choice

        return choice(device, precision)
    if engine == "openvino":  # (asked for by name: bench/engines.py measures it beside ONNX Runtime)
        from .openvino import choice as openvino

        return openvino(device, precision)
    if device.startswith("cuda") or (device == "auto" and engine != "onnxruntime" and _cuda_available()):
        if engine == "onnxruntime":
            raise UserError("--engine onnxruntime runs on the CPU: give --device cpu, or --engine torch for the GPU")
        return _torch_choice(device, precision, "a CUDA GPU: PyTorch runs on it")
    if engine == "torch":
        return _torch_choice("cpu", precision, "--engine torch")
    if precision == "bf16":
        if engine == "onnxruntime":
            raise UserError("--engine onnxruntime runs in fp32 on a CPU: drop --precision bf16 (or --engine torch)")
        return _torch_choice("cpu", precision, "--precision bf16: ONNX Runtime has no bf16 kernels on a CPU")
    if importlib.util.find_spec("onnxruntime") is None:
        if engine == "onnxruntime":
            raise UserError("--engine onnxruntime needs onnxruntime: pip install onnxruntime")
        return _torch_choice("cpu", precision, "onnxruntime is not installed")
    reason = "--engine onnxruntime" if engine == "onnxruntime" else (
        "fp32, the same answers on every CPU; --engine torch: PyTorch bf16, 1.34x the speed with AMX"
        if cpu.has_amx_bf16() else "the fastest engine on this CPU, fp32: the same answers on every CPU")
    return Choice("onnxruntime", "cpu", "fp32", reason)


def _torch_choice(device: str, precision: str, reason: str) -> Choice:
    from ..errors import require_torch

    require_torch(f"running on PyTorch ({reason})")  # (the light install: one line naming the extra)
    from ..runtime import Runtime

    runtime = Runtime.create(device, precision)
    return Choice("torch", str(runtime.device), runtime.precision, reason)


def _cuda_available() -> bool:
    if not cpu.cuda_driver_present() or importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def fallback(choice: Choice, why: str) -> Choice:
    """PyTorch in place of ONNX Runtime for a network it could not convert or run, in the same
    precision (fp32: what is cached under the choice's precision must be computed in it)."""
    return _torch_choice(choice.device, choice.precision, f"ONNX Runtime could not run it: {why}")


def load_bundle(run, engine: str = "auto", device: str = "auto", precision: str = "auto", tta: str = "none",
                images: int | None = None, threads: int = 0, cache=None, say=None, batch_size: int = 32):
    """A predictor of a run folder's model on the chosen engine (`choose`), with its `engine`
    (the `Choice`) set; ONNX Runtime falls back to PyTorch where the model does not convert,
    unless it was asked for by name. `say`: told of a conversion and of a fallback."""
    from ..cache import Cache
    from .convert import ConversionError

    say = say or (lambda message: None)
    choice = choose(engine, device, precision, images)
    cache = cache or Cache()
    if choice.engine != "torch":  # (ONNX Runtime's conversions: OpenVINO runs them too)
        try:
            return _as_fitted(choice.implementation.bundle(run, choice, tta, threads, cache.prepare(), say,
                                                           batch_size))
        except ConversionError as exc:
            if normalized(engine) != "auto":
                raise UserError(f"--engine {normalized(engine)}: {exc}") from None
            choice = fallback(choice, str(exc))
            say(f"warning: {choice.reason}; running it with PyTorch {choice.precision}")
    return choice.implementation.bundle(run, choice, tta, threads, cache, say, batch_size)


def _as_fitted(predictor):
    """An ONNX Runtime predictor's `engine` as its network runs: a run's head fitted on INT8
    features runs on that INT8 network (whichever CPU engine was asked for), any other run's
    network in fp32 (`--engine onnxruntime-int8` quantizes the features a run is fitted on; it
    does not quantize a model fitted on fp32's)."""
    import dataclasses

    int8 = "calibrated_on" in (getattr(predictor, "conversion", None) or {})
    if int8 != (predictor.engine.precision == "int8"):
        reason = ("the run was fitted on INT8 features: it runs on them" if int8 else
                  "the run was fitted on fp32 features: its network runs in fp32 (export --formats int8 quantizes it)")
        predictor.engine = dataclasses.replace(predictor.engine, engine="onnxruntime-int8" if int8 else "onnxruntime",
                                               precision="int8" if int8 else "fp32", reason=reason)
    return predictor
