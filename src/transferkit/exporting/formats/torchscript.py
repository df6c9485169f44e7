"""torchscript: a traced module with the same metadata as an extra file, for PyTorch-only targets."""

from __future__ import annotations

from pathlib import Path

from ..registry import ExportFormat, register


def build(job, path: Path) -> None:
    import json
    import warnings

    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still what users deploy
        traced = torch.jit.trace(job.model, job.example)
        torch.jit.save(traced, str(path), _extra_files={"transferkit.json": json.dumps(job.meta)})


def runner(path: Path):
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path)).eval()

    def run(x):
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()
    return run


register(ExportFormat(name="torchscript", file="model.torchscript.pt", order=1, build=build, runner=runner,
                      summary="traced TorchScript, metadata as the extra file transferkit.json"))
