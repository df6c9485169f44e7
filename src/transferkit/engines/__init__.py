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
  by name: bench/engines.py measured it 1.3-2.2x ONNX Runtime's speed with the same answers (an
  Intel Xeon, an AMD EPYC), but it starts slower and is an optional extra: `auto` does not pick it;
- `--engine torch|onnxruntime` forces one; `--precision bf16` means PyTorch (ONNX Runtime has no
  bf16 kernels on CPU); ONNX Runtime missing, or a network it cannot run, means PyTorch.

Each engine is one module of this package that registers an `Engine`, with its `offer`: whether
it runs what a command asks, and why not; `auto` asks the engines by their `rank` (ONNX Runtime,
then PyTorch) and takes the first that offers. This module and those import no torch at the
top, so a command that runs on ONNX Runtime never imports it.
"""

from __future__ import annotations

from ..errors import UserError
from .base import ENGINES, Choice, Engine, Request, choices, normalized, register

__all__ = ["ENGINES", "Choice", "Engine", "Request", "choices", "choose", "fallback", "load_bundle", "register"]


def choose(engine: str = "auto", device: str = "auto", precision: str = "auto", images: int | None = None) -> Choice:
    """The engine for a pass over `images` images (None: an open-ended stream, as a server's;
    the rule does not depend on it today, the callers say it for the rules to come): the one
    named, or the first registered engine, by rank, that offers to run on `device` in `precision`.

    Raises `UserError` for a combination that cannot run (ONNX Runtime in bf16, or on a GPU)."""
    engine = normalized(engine)
    if engine != "auto":
        if engine not in ENGINES:
            raise UserError(f"--engine {engine}: choose from {', '.join(c for c in choices() if c != 'onnx')}")
        return ENGINES.get(engine).offer(Request(device, precision, named=True))
    why = None
    for candidate in sorted((e for e in ENGINES if e.rank is not None), key=lambda e: e.rank):
        answer = candidate.offer(Request(device, precision, why=why))
        if isinstance(answer, Choice):
            return answer
        why = answer
    raise UserError(f"no inference engine runs on {device} in {precision}: {why}")


def fallback(choice: Choice, why: str) -> Choice:
    """PyTorch in place of ONNX Runtime for a network it could not convert or run, in the same
    precision (fp32: what is cached under the choice's precision must be computed in it)."""
    from .pytorch import torch_choice

    return torch_choice(choice.device, choice.precision, f"ONNX Runtime could not run it: {why}")


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
