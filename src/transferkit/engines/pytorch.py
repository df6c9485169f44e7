"""PyTorch: BatchNorm folded, channels_last, bf16 where the CPU has it or AMP's dtype on CUDA,
traced for long passes (`features.Extractor`). What runs on a GPU, on CPUs with AMX for long
passes, when asked for (`--engine torch`) and where ONNX Runtime cannot run a network."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .. import machine
from .base import Choice, Engine, Request, register
from .convert import Network


def features(network: Network, choice: Choice, cache, say):
    from ..runtime import Extractor, Runtime

    return Extractor(network.build(), network.pre, Runtime.create(choice.device, choice.precision))


def bundle(run: str | Path, choice: Choice, tta: str, threads: int, cache, say, batch_size: int = 32,
           workers: int | None = None):
    """A predictor of a run folder's model on PyTorch; its `engine` is set to the choice."""
    import torch

    from ..models import bundle as bundles
    from ..prediction.torch_predictor import Predictor

    if threads:
        torch.set_num_threads(threads)
    model, meta, run_dir = bundles.load(run)
    predictor = Predictor(model, meta, run_dir, choice.device, choice.precision, batch_size, workers, tta)
    predictor.engine = choice
    return predictor


def offer(request: Request) -> Choice:
    """PyTorch runs whatever is asked: on a CUDA GPU where there is one (or one is named), else on
    the CPU (in bf16 where asked: ONNX Runtime has no bf16 kernels on a CPU)."""
    if request.device.startswith("cuda") or (request.device == "auto" and cuda_available()):
        return torch_choice(request.device, request.precision, "a CUDA GPU: PyTorch runs on it")
    why = "--engine torch" if request.named else request.why or "PyTorch on the CPU"
    return torch_choice("cpu", request.precision, why)


def torch_choice(device: str, precision: str, reason: str) -> Choice:
    from ..errors import require_torch

    require_torch(f"running on PyTorch ({reason})")  # (the light install: one line naming the extra)
    from ..runtime import Runtime

    runtime = Runtime.create(device, precision)
    return Choice("torch", str(runtime.device), runtime.precision, reason)


def cuda_available() -> bool:
    if not machine.cuda_driver_present() or importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


register(Engine(name="torch", features=features, bundle=bundle, offer=offer, rank=20,
                summary="PyTorch (CPU or CUDA; bf16 where the hardware has it)"))
