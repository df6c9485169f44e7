"""What an inference engine declares, the registry of them, and the choice of one (`Choice`); no
torch here. `engines.choose` makes the choice; each engine is one module of this package that
registers an `Engine`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .. import machine
from ..registry import Registry


@dataclass(frozen=True)
class Request:
    """What a command asks of the engines: a device and a precision ("auto" or named), whether
    --engine named the engine asked, and why the engines `auto` asked before it declined."""

    device: str = "auto"
    precision: str = "auto"
    named: bool = False
    why: str | None = None


@dataclass(frozen=True)
class Engine:
    """One inference engine: whether it runs what a command asks, how it extracts features and
    how it runs a run folder's model."""

    name: str
    summary: str
    features: Callable  # (network: convert.Network, choice, cache, say) -> an extractor (features.Extractor's API)
    bundle: Callable  # (run, choice, tta, threads, cache, say) -> a prediction.base.BasePredictor
    # (Request) -> its `Choice` where it runs what is asked; where it does not, a `UserError` when
    # --engine named it, else one line saying why (the reason of the engine `auto` picks next)
    offer: Callable
    # the order in which `auto` asks the engines; None: asked for by name only (its answers are
    # not fp32's, or it is an optional extra)
    rank: int | None = None


ENGINES: Registry[Engine] = Registry("inference engine", package=__package__)
register = ENGINES.register


def choices() -> tuple[str, ...]:
    """What --engine accepts: auto, every registered engine, and "onnx" for "onnxruntime"."""
    return ("auto", *ENGINES.names(), "onnx")


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
                **machine.describe()}

    def line(self) -> str:
        """One console line."""
        return f"{self.engine} on {self.device} in {self.precision} ({self.reason})"

    @property
    def implementation(self) -> Engine:
        return ENGINES.get(self.engine)


def normalized(engine: str) -> str:
    """The engine's name ("onnx" is accepted for "onnxruntime")."""
    return "onnxruntime" if engine == "onnx" else engine
