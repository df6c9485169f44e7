"""The run bundle: `model.safetensors` (weights) + `model.json` (everything else needed to use
them). Loadable without unpickling anything; both files are written atomically. Reading the
metadata and checking the weights' checksum import no torch (a run served by ONNX Runtime)."""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..errors import UserError
from ..files import Record, atomic_write, file_sha256, load_json_object, read_yaml_object, write_json
from ..task import Task
from .preprocess import Preprocess

if TYPE_CHECKING:
    from .classifier import Classifier

FORMAT = "transferkit-bundle"
FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    """Versions of the packages that define the model (read from metadata: no imports)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"transferkit": __version__, "python": platform.python_version()}
    for name in ("torch", "torchvision", "timm"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


@dataclass
class BundleMeta:
    backbone: str
    arch: str
    classes: list[str]
    preprocess: Preprocess
    strategy: str
    dropout: float
    weights: str
    weights_sha256: str | None
    stem: str = "standard"  # "small": the CIFAR-style stem for ~32 px images
    model_sha256: str | None = None  # of model.safetensors, checked on load (bundles before it: None)
    features: str = "last"  # "multi": the head sees earlier stages' pooled activations too (models.multilayer)
    # A head on a frozen backbone: the identity of the features network it was fitted on
    # ({"features": cache key, "multi": bool}); an engine that has that network converted runs it
    # and the head, no conversion of the run's own model needed (engines.ort).
    frozen_features: dict | None = None
    task: Task = field(default_factory=Task)  # single-label, or multi-label with its thresholds
    # the out-of-distribution score's record (`ood.Ood.to_dict`; its reference rows are
    # model.safetensors' OOD_KEY); None: a run made before it, or without training images to keep
    ood: dict | None = None

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "backbone": self.backbone,
            "arch": self.arch,
            "num_classes": len(self.classes),
            "classes": self.classes,
            "preprocess": self.preprocess.to_dict(),
            "strategy": self.strategy,
            "dropout": self.dropout,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "stem": self.stem,
            "model_sha256": self.model_sha256,
            "features": self.features,
            "frozen_features": self.frozen_features,
            "task": self.task.to_dict(),
            "ood": self.ood,
            "versions": versions(),
        }

    def export_metadata(self) -> dict:
        """What an exported (or converted) model carries about itself: classes, preprocessing,
        input and output (what `prediction.onnx_predictor` reads)."""
        pre = self.preprocess.to_dict()
        return {"transferkit": __version__, "backbone": self.backbone, "classes": self.classes,
                "preprocess": {k: pre[k] for k in ("input_size", "resize_size", "interpolation", "mean", "std", "rule")},
                "task": self.task.to_dict(),
                "ood": self.ood,
                "input": "float32 NCHW (batch, 3, input_size, input_size), RGB",
                "output": "logits (batch, classes): " + ("each class's sigmoid is its probability, a class is "
                                                         "predicted at task.thresholds" if self.task.multi else
                                                         "their softmax gives the probabilities")}

    @classmethod
    def from_dict(cls, d: dict) -> "BundleMeta":
        """The metadata, every field checked: a damaged or crafted model.json is a `UserError`
        naming the field, never a huge allocation or a traceback later."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise UserError("model.json is not a transferkit bundle")
        if not isinstance(d.get("format_version", 0), int) or d.get("format_version", 0) > FORMAT_VERSION:
            raise UserError("model.json was written by a newer transferkit; upgrade to load it")
        classes = d.get("classes")
        if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c for c in classes) \
                or len(set(classes)) != len(classes) or d.get("num_classes", len(classes)) != len(classes):
            raise UserError("model.json: classes must be a list of 2 or more distinct names (and num_classes their count)")
        for key in ("backbone", "arch", "strategy"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise UserError(f"model.json: {key} must be a name")
        dropout = d.get("dropout", 0.0)
        if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise UserError(f"model.json: dropout must be in [0, 1) (got {dropout!r})")
        stem = d.get("stem", "standard")
        if stem not in ("standard", "small"):
            raise UserError(f"model.json: stem must be standard or small (got {stem!r})")
        features = d.get("features", "last")
        if features not in ("last", "multi"):
            raise UserError(f"model.json: features must be last or multi (got {features!r})")
        frozen = d.get("frozen_features")
        if frozen is not None and not (isinstance(frozen, dict) and set(frozen) == {"features", "multi"}
                                       and isinstance(frozen["features"], str) and frozen["features"].isalnum()
                                       and len(frozen["features"]) <= 64 and isinstance(frozen["multi"], bool)):
            raise UserError("model.json: frozen_features must be {features: a cache key, multi: true|false}")
        try:
            task = Task.from_dict(d.get("task"), len(classes))
        except ValueError as exc:
            raise UserError(f"model.json: {exc}") from None
        digest = d.get("model_sha256")
        if digest is not None and not (isinstance(digest, str) and len(digest) == 64):
            raise UserError("model.json: model_sha256 must be a sha256 hex digest")
        ood = d.get("ood")
        if ood is not None and not (isinstance(ood, dict) and isinstance(ood.get("width"), int)):
            raise UserError("model.json: ood must be the out-of-distribution score's record")
        return cls(d["backbone"], d["arch"], list(classes), Preprocess.from_dict(d.get("preprocess")),
                   d["strategy"], float(dropout), str(d.get("weights", "")), d.get("weights_sha256"), stem, digest,
                   features, frozen, task, ood)


def save(run_dir: Path, state: dict, meta: BundleMeta) -> None:
    """Write the bundle (a `Classifier` state dict, of torch tensors or NumPy arrays, and its
    metadata) into `run_dir`: weights first, then the json that points at them. Floating-point
    weights are stored in fp32; NumPy arrays are written without importing torch."""
    import numpy as np
    from safetensors.numpy import save as st_save

    arrays = {k: _as_array(v) for k, v in state.items()}
    arrays = {k: np.array(v, np.float32 if np.issubdtype(v.dtype, np.floating) else v.dtype, order="C")
              for k, v in arrays.items()}  # (np.ascontiguousarray would make a 0-d counter 1-d)
    bad = [k for k, v in arrays.items() if v.dtype == np.float32 and not np.isfinite(v).all()]
    if bad:
        raise UserError(f"the trained model has non-finite weights ({bad[0]}, ...): not saved; lower --lr")
    data = st_save(arrays, metadata={"format": FORMAT})
    atomic_write(Path(run_dir) / "model.safetensors", data)
    meta = replace(meta, model_sha256=hashlib.sha256(data).hexdigest())
    write_json(Path(run_dir) / "model.json", meta.to_dict())


OOD_KEY = "ood.reference"  # model.safetensors: the training images' unit features the OOD score compares with


def read_ood(meta: BundleMeta, run_dir: Path):
    """The run's out-of-distribution score (`ood.Ood`), or None for a run made before it; the
    weights' checksum checked first. No torch."""
    from safetensors import SafetensorError, safe_open

    from ..ood import Ood

    if meta.ood is None:
        return None
    weights_sha256(meta, run_dir)
    try:
        with safe_open(str(run_dir / "model.safetensors"), framework="np") as f:
            reference = f.get_tensor(OOD_KEY)
        return Ood.from_dict(meta.ood, reference)
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise UserError(f"{run_dir / 'model.safetensors'}: its out-of-distribution record is damaged ({exc})") from None


def _as_array(value):
    """A torch tensor (any dtype, any device) or an array -> a NumPy array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        return (value.float() if value.is_floating_point() else value).numpy()
    return value


def resolve(path: str | Path) -> Path:
    """A run folder (or its model.json / model.safetensors) -> the run folder."""
    p = Path(path).expanduser()
    if p.is_file() and p.name in ("model.json", "model.safetensors"):
        p = p.parent
    if not p.is_dir():
        raise UserError(f"run folder not found: {p}")
    for name in ("model.json", "model.safetensors"):
        if not (p / name).is_file():
            raise UserError(f"{p} is not a transferkit run: {name} is missing")
    return p


def read_meta(path: str | Path) -> tuple[BundleMeta, Path]:
    """A run's model.json (checked), and the run folder."""
    run_dir = resolve(path)
    try:
        return BundleMeta.from_dict(dict(load_json_object(run_dir / "model.json"))), run_dir
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{run_dir / 'model.json'} is damaged: {exc}") from None


def weights_sha256(meta: BundleMeta, run_dir: Path) -> str:
    """The sha256 of the run's model.safetensors, checked against model.json's record; raises
    `UserError` for a damaged or replaced file."""
    weights = run_dir / "model.safetensors"
    digest = file_sha256(weights)
    if meta.model_sha256 is not None and digest != meta.model_sha256:
        raise UserError(f"{weights} does not match the checksum in model.json: the file is damaged or was "
                        "replaced; retrain, or restore it from a copy")
    return digest


def trained_on(run_dir: Path) -> list[str]:
    """The dataset folder the run in `run_dir` was trained on (its config.yaml), if known: a
    command on the run never writes into it."""
    data = (read_yaml_object(Path(run_dir) / "config.yaml") or Record()).text("data")
    return [data] if data else []


def load(path: str | Path) -> tuple["Classifier", BundleMeta, Path]:
    """Load a bundle into a `Classifier` on the CPU (eval mode)."""
    from safetensors.torch import load_file

    from . import backbones
    from .classifier import Classifier
    from .weights import state_dict_diff

    meta, run_dir = read_meta(path)
    spec = backbones.get(meta.backbone)
    backbone = spec.build(meta.stem, meta.features)
    model = Classifier(backbone, backbone.num_features, len(meta.classes), meta.dropout)
    weights_sha256(meta, run_dir)
    try:
        state = load_file(str(run_dir / "model.safetensors"))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise UserError(f"{run_dir / 'model.safetensors'} is damaged: {exc}") from None
    state = {k: v for k, v in state.items() if k != OOD_KEY}  # (not the network's: `read_ood`)
    diff = state_dict_diff(model.state_dict(), state)
    if diff:
        raise UserError(f"{run_dir / 'model.safetensors'} does not match {meta.backbone}: " + "; ".join(diff))
    model.load_state_dict(state)
    return model.eval(), meta, run_dir
