"""The classifier a run trains, built on first use only (`LazyClassifier`), and the identity of
its weights (`identify_weights`). No torch here: a linear run whose features, head and backbone
weights are all cached never builds the network, and never imports torch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import files
from ..errors import UserError
from . import backbones
from .weights import WeightsInfo

if TYPE_CHECKING:
    import torch

    from .classifier import Classifier


def identify_weights(spec: backbones.BackboneSpec, weights: str, seed: int = 0) -> WeightsInfo:
    """Source and sha256 of the weights, without building the network (fails early when the
    file or package is missing, or the published checksum does not match); random init ("none")
    is identified by `seed`."""
    if weights == "none":
        return WeightsInfo("none", None, seed)
    if weights == "imagenet":
        return WeightsInfo("imagenet", spec.imagenet_file()[1])
    if not Path(weights).is_file():
        raise UserError(f"weights file not found: {weights}")
    return WeightsInfo(str(weights), files.file_sha256(weights))


class LazyClassifier:
    """The classifier, built (timm, weights mapping) on first use only.

    The backbone's prepared weights are kept in a checksummed cache file keyed by the weights'
    sha256: a linear run whose features are all cached then never builds the network, which
    saves the 2.2 s of importing timm (and with it torchvision and torch._dynamo). The cache file is only written after the weights were
    validated against the architecture, and is only used while its checksum holds."""

    def __init__(self, spec: backbones.BackboneSpec, num_classes: int, weights: str,
                 dropout: float = 0.0, cache_file: Path | None = None, stem: str = "standard",
                 features: str = "last", seed: int = 0, drop_path: float = 0.0):
        self.spec, self.num_classes, self.weights, self.dropout = spec, num_classes, weights, dropout
        self.stem, self.features, self.drop_path = stem, features, drop_path
        self.info = identify_weights(spec, weights, seed)
        self.cache_file = cache_file if self.info.sha256 else None  # random init is not cached
        self._model: Classifier | None = None
        self._state: dict[str, np.ndarray] | None = None  # the verified cache file, read once

    @property
    def built(self) -> bool:
        return self._model is not None

    def prepare(self) -> None:
        """Validate the weights now (building the model) unless a verified cache file exists."""
        if self._cached_state() is None:
            self.get()

    def get(self) -> Classifier:
        if self._model is None:
            import torch

            from .classifier import build_classifier

            with torch.random.fork_rng(devices=[], enabled=self.info.seed is not None):
                if self.info.seed is not None:  # random init: the same network for a seed, whenever built
                    torch.manual_seed(self.info.seed)
                self._model, _ = build_classifier(self.spec, self.num_classes, self.weights, self.dropout, self.stem,
                                                  self.features, self.drop_path)
            if self.cache_file is not None and self._cached_state() is None:
                _write_checked(self.cache_file, self._model.backbone.state_dict())
        return self._model

    def backbone_state(self) -> dict[str, torch.Tensor]:
        """The backbone's weights as torch tensors."""
        import torch

        if self._model is None and self._cached_state() is not None:
            return {k: torch.from_numpy(v.copy()) for k, v in self._cached_state().items()}
        return self.get().backbone.state_dict()

    def backbone_arrays(self) -> dict[str, np.ndarray]:
        """The backbone's weights as NumPy arrays: read from the cache file without torch when the
        network was not built."""
        if self._model is None and self._cached_state() is not None:
            return self._cached_state()
        return {k: v.detach().cpu().numpy().copy() for k, v in self.get().backbone.state_dict().items()}

    def _cached_state(self) -> dict[str, np.ndarray] | None:
        if self._state is None and self.cache_file is not None:
            self._state = _read_checked(self.cache_file)
        return self._state


_WEIGHTS = b"TKW1"  # magic of the cached backbone weights


def _write_checked(path: Path, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    files.write_checked(path, _WEIGHTS, save({k: v.detach().contiguous() for k, v in state.items()}))


def _read_checked(path: Path) -> dict[str, np.ndarray] | None:
    from safetensors.numpy import load

    try:
        data = files.read_checked(path, _WEIGHTS)
    except files.CorruptBlob:
        return None
    return None if data is None else load(data)
