"""OpenVINO on the CPU, in fp32: the same ONNX conversions ONNX Runtime runs (`convert`), compiled
by OpenVINO instead (`sessions.openvino.OvSession`, with ONNX Runtime's session interface, so
every predictor and extractor written for ONNX Runtime runs on it unchanged: a run folder's model
and the features of a frozen backbone). No torch here.

Chosen by name only (`--engine openvino`); `bench/engines.py` measures it beside ONNX Runtime, and
the README's engines table gives the rule.
"""

from __future__ import annotations

from ..errors import UserError
from ..sessions.openvino import require
from .base import Choice, Engine, Request, register


def offer(request: Request) -> Choice:
    """`--engine openvino`: the CPU, in fp32 (asked for by name only)."""
    device, precision = request.device, request.precision
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


register(Engine(name="openvino", features=features, bundle=bundle, offer=offer,
                summary="OpenVINO on the CPU in fp32: ONNX Runtime's conversions, compiled by OpenVINO"))
