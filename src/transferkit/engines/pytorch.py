"""PyTorch: BatchNorm folded, channels_last, bf16 where the CPU has it or AMP's dtype on CUDA,
traced for long passes (`features.Extractor`). What runs on a GPU, on CPUs with AMX for long
passes, when asked for (`--engine torch`) and where ONNX Runtime cannot run a network."""

from __future__ import annotations

from pathlib import Path

from .base import Choice, Engine, register
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


register(Engine(name="torch", features=features, bundle=bundle,
                summary="PyTorch (CPU or CUDA; bf16 where the hardware has it)"))
