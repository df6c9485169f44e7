"""ONNX Runtime (CPU, fp32): frozen networks converted once (`convert`) and run without torch."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import MissingExtra, UserError
from ..prediction.base import BasePredictor
from . import fallback
from .. import machine
from .base import Choice, Engine, Request, register
from .convert import CHECK_IMAGES, Converted, Network, check_images, convert, features_network, lookup, session


class OrtExtractor:
    """Features of decoded uint8 batches on ONNX Runtime (the interface of `features.Extractor`).

    The network is converted on the first batch, if the cache has no conversion of it yet, and
    checked against PyTorch on that batch; where it cannot be, PyTorch takes over in the same
    precision (fp32), with one warning."""

    freeze = False  # what features.Extractor's callers may set: nothing to trace here

    def __init__(self, network: Network, choice: Choice, cache, say):
        self.network, self.choice, self.cache, self.say = network, choice, cache, say
        self._session = None
        self._torch = None  # the fallback: a features.Extractor
        self.last_features: int | None = None
        self.info: dict = {}

    def _open(self, first: np.ndarray) -> None:
        found = lookup(self.network, self.cache, self.say)
        if found is None and self.choice.precision == "int8":  # (quantized before the pass: `engines.int8`)
            raise UserError(f"{self.network.label}'s INT8 network left the cache during this command: run it again")
        try:
            found = found or convert(self.network, first[:CHECK_IMAGES], self.cache, self.say)
            self._session = session(found.model, engine=self.choice.engine)
        except MissingExtra:  # (the light install converts nothing: no fallback either)
            raise
        except UserError as exc:  # ConversionError, or a stored conversion ONNX Runtime cannot load
            self._use_torch(str(exc))
            return
        self.last_features = found.facts.get("last_features")
        self.info = {"conversion": found.path.name, **found.facts}

    def _use_torch(self, why: str) -> None:
        from ..runtime import Extractor, Runtime

        if self.choice.precision == "int8":  # (PyTorch has no such features: the run would mix two networks')
            raise UserError(f"--engine {self.choice.engine}: {why}")

        choice = fallback(self.choice, why)
        self.say(f"warning: {self.network.label}: {choice.reason}; extracting with PyTorch {choice.precision}")
        backbone = self.network.build()
        self._torch = Extractor(backbone, self.network.pre, Runtime.create(choice.device, choice.precision))
        self.last_features = self._torch.last_features
        self.info = {"fallback": choice.to_dict()}

    def forward(self, batch_u8) -> np.ndarray:
        """uint8 (B, 3, S, S) (a torch tensor or an array) -> float32 features (B, D)."""
        x = np.ascontiguousarray(batch_u8.numpy() if hasattr(batch_u8, "numpy") else batch_u8)
        if self._session is None and self._torch is None:
            self._open(x)
        if self._torch is not None:
            return self._torch.forward(batch_u8 if hasattr(batch_u8, "numpy") else _tensor(x)).numpy()
        return self._session.run(None, {"input": x})[0]

    def run(self, batches: Iterator[tuple], progress=None) -> Iterator[tuple]:
        """As `features.Extractor.run`: (indices, one (1 + K, D) array per index, errors) per batch."""
        for idx, batch, counts, errors in batches:
            feats = np.split(self.forward(batch), np.cumsum(counts)[:-1]) if batch is not None else ()
            if progress is not None:
                progress.update(len(idx) + len(errors))
            yield idx, feats, errors


def _tensor(x: np.ndarray):
    import torch

    return torch.from_numpy(x)


def features(network: Network, choice: Choice, cache, say) -> OrtExtractor:
    return OrtExtractor(network, choice, cache, say)


def bundle_network(run: str | Path) -> tuple[Network, object, Path]:
    """The `convert.Network` of a run folder's model (the weights checked against model.json's
    checksum first), its metadata and the run folder. No torch."""
    from ..models import bundle

    meta, run_dir = bundle.read_meta(run)
    ident = {"weights": bundle.weights_sha256(meta, run_dir), "meta": meta.to_dict() | {"versions": None}}

    def build():  # (its logits and, for a run with one, its out-of-distribution score)
        from ..models.with_ood import with_ood

        return with_ood(bundle.load(run_dir)[0], bundle.read_ood(meta, run_dir))

    return (Network("classifier", ident, build, meta=meta.export_metadata(), label=f"{run_dir.name}'s model",
                    run_dir=run_dir), meta, run_dir)


def converted_bundle(run: str | Path, cache, say=None) -> tuple[Converted, object, Path]:
    """A run's model for ONNX Runtime: from the cache, or converted now (checked against PyTorch
    on the run's validation images). Raises `UserError` when it cannot be."""
    network, meta, run_dir = bundle_network(run)
    return converted(network, meta, run_dir, cache, say), meta, run_dir


def converted(network: Network, meta, run_dir: Path, cache, say=None) -> Converted:
    """The conversion of a run's `network`: stored, else converted now and checked on the run's
    validation images."""
    return lookup(network, cache, say) or convert(network, check_images(run_dir, meta), cache, say)


class HeadOnFeatures(BasePredictor):
    """A run whose head was fitted on a frozen backbone's features: the backbone's conversion (made
    and checked when its features were extracted, keyed by the same identity) and the head, in
    NumPy. Nothing of the run needs converting, and torch is never imported."""

    def __init__(self, features: Converted, meta, run_dir: Path, weights: dict[str, np.ndarray], threads: int = 0,
                 batch_size: int = 32, workers: int = 0, tta: str = "none", cache=None, say=None,
                 engine: str = "onnxruntime"):
        super().__init__(batch_size, workers, tta)
        self.cache, self.threads, self.say, self._maps = cache, threads, say, None
        self.bundle_meta, self.run_dir, self.classes, self.task = meta, run_dir, meta.classes, meta.task
        self.session = session(features.model, threads, engine)
        self.weight = np.ascontiguousarray(weights["head.weight"], dtype=np.float32).T  # (D, C)
        self.bias = np.asarray(weights["head.bias"], dtype=np.float32)
        self.conversion = {"file": features.path.name, "network": "features", **features.facts}
        from ..models.bundle import read_ood

        self.ood = read_ood(meta, run_dir)
        self.ood_record = meta.ood if self.ood is not None else None

    can_explain = True

    def sizes(self) -> tuple[int, int]:
        return self.bundle_meta.preprocess.resize_size, self.bundle_meta.preprocess.input_size

    def forward_maps(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """From the backbone's maps network (`models.maps.WithMaps`, converted once and cached
        like the features network): its features give the logits and OOD scores, its maps the
        exact class activation maps, in NumPy. A backbone whose features are not its maps' means
        (no exact map): a `UserError` saying to explain on PyTorch (Grad-CAM)."""
        from .maps import maps_session
        from ..prediction.heatmaps import class_maps

        if self._maps is None:
            self._maps, exact = maps_session(self.bundle_meta, self.run_dir, self.cache, self.threads, self.say)
            if not exact:
                self._maps = None
                raise UserError(f"{self.bundle_meta.backbone}'s features are not its spatial maps' means: explain it "
                                "with --engine torch (Grad-CAM)")
        features, *maps = self._maps.run(None, {"input": np.ascontiguousarray(batch.transpose(0, 3, 1, 2))})
        logits, ood = self._answer(features)
        return logits, ood, class_maps(maps, self.weight.T, logits.argmax(1))

    def prepare(self, source, name: str | None = None, whole: bool = False) -> np.ndarray:
        from ..data.decode import eval_array

        p = self.bundle_meta.preprocess
        return eval_array(source, p.input_size if whole else p.resize_size, p.input_size, p.interpolation, name)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.forward(batch)[0]

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))  # uint8 (B, 3, S, S): normalized in the graph
        return self._answer(self.session.run(None, {"input": x})[0])

    def forward_embedded(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        features = self.session.run(None, {"input": x})[0]
        width = self.ood.width if self.ood is not None else self.weight.shape[0]
        return (*self._answer(features), features[:, :width])

    def _answer(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The head's logits of the backbone's features, and their out-of-distribution scores."""
        logits = features[:, :self.weight.shape[0]] @ self.weight + self.bias
        return logits, (self.ood.scores(features) if self.ood is not None else None)


def frozen_network(meta, run_dir: Path) -> Network:
    """The features network of the frozen backbone a run's head was fitted on (`meta.frozen_features`)."""

    def build():
        from ..models import bundle
        from ..models.multilayer import multi_layer

        backbone = bundle.load(run_dir)[0].backbone
        if meta.frozen_features["multi"] and not getattr(backbone, "taps", None):
            backbone = multi_layer(backbone, meta.backbone)
        return backbone

    return features_network(meta.frozen_features, build, meta.preprocess, meta.backbone, run_dir)


def carry_networks(run: str | Path, cache, say=None) -> list[str]:
    """Keep in the run folder the conversions its inference needs (`convert.carry`), so that it
    predicts, serves and is evaluated without torch: a head on frozen features, its backbone's
    features network (and its maps network, where one was made) as `bundle` runs it; any other
    run, its whole model (from the cache, else converted now and checked on its val images).
    Returns the kinds carried; raises `UserError` where the model does not convert."""
    from ..models import bundle as bundles
    from .convert import carry
    from .maps import maps_network

    meta, run_dir = bundles.read_meta(run)
    found = None
    if meta.frozen_features is not None:
        network = frozen_network(meta, run_dir)
        found = lookup(network, cache, say)
    if found is None:  # (its whole model: the model.safetensors checksum is read once)
        network, meta, run_dir = bundle_network(run_dir)
        found = converted(network, meta, run_dir, cache, say)
    carry(found, network, run_dir)
    kinds = [network.kind]
    if network.kind == "features":
        maps = maps_network(meta, run_dir)
        made = lookup(maps, cache, say)
        if made is not None:
            carry(made, maps, run_dir)
            kinds.append(maps.kind)
    return kinds


def _head_on_features(meta, run_dir: Path, cache, threads: int, batch_size: int, tta: str, say=None,
                      engine: str = "onnxruntime"):
    """`HeadOnFeatures` for a run fitted on frozen features whose conversion the cache holds,
    else None (then the run's model is converted whole)."""
    from safetensors import SafetensorError, safe_open

    from ..models import bundle as bundles

    if meta.frozen_features is None:
        return None
    found = lookup(frozen_network(meta, run_dir), cache, say)
    if found is None:
        return None
    bundles.weights_sha256(meta, run_dir)  # a damaged model.safetensors is refused, as PyTorch's loader does
    try:
        with safe_open(str(run_dir / "model.safetensors"), framework="np") as f:
            weights = {k: f.get_tensor(k) for k in ("head.weight", "head.bias")}
    except (SafetensorError, OSError, KeyError) as exc:
        raise UserError(f"{run_dir / 'model.safetensors'} is damaged: {exc}") from None
    width = (found.facts.get("output_width") or 0)
    if weights["head.weight"].ndim != 2 or weights["head.weight"].shape[1] > width \
            or weights["head.weight"].shape[0] != len(meta.classes):
        return None
    return HeadOnFeatures(found, meta, run_dir, weights, threads, batch_size, tta=tta, cache=cache, say=say,
                          engine=engine)


def bundle(run: str | Path, choice: Choice, tta: str, threads: int, cache, say, batch_size: int = 32,
           workers: int = 0):
    """A predictor of a run folder's model on ONNX Runtime (or on OpenVINO, for that `choice`: the
    same conversions); its `run_dir`, `bundle_meta`, `engine` (the choice) and `conversion` are set. A head on frozen features runs on its
    backbone's conversion (`HeadOnFeatures`); any other model is converted whole (once, cached,
    checked on the run's validation images). Raises `ConversionError` when it cannot be."""
    from ..models import bundle as bundles
    from ..prediction.onnx_predictor import OnnxPredictor

    meta, run_dir = bundles.read_meta(run)
    predictor = _head_on_features(meta, run_dir, cache, threads, batch_size, tta, say, choice.engine)
    if predictor is not None:
        predictor.engine = choice
        return predictor
    found, meta, run_dir = converted_bundle(run, cache, say)
    predictor = OnnxPredictor(found.path, batch_size=batch_size, workers=workers, tta=tta,
                              session=session(found.model, threads, choice.engine))
    predictor.run_dir, predictor.bundle_meta, predictor.engine, predictor.task = run_dir, meta, choice, meta.task
    predictor.conversion = {"file": found.path.name, **found.facts}
    return predictor


def offer(request: Request) -> Choice | str:
    """ONNX Runtime in fp32 on the CPU, where no CUDA GPU is asked for (or, unnamed, found), the
    precision is not bf16 and onnxruntime is installed."""
    import importlib.util

    from .pytorch import cuda_available

    def declined(why: str, named: str) -> str:
        if request.named:
            raise UserError(named)
        return why

    if request.device.startswith("cuda") or (request.device == "auto" and not request.named and cuda_available()):
        return declined("a CUDA GPU: PyTorch runs on it",
                        "--engine onnxruntime runs on the CPU: give --device cpu, or --engine torch for the GPU")
    if request.precision == "bf16":
        return declined("--precision bf16: ONNX Runtime has no bf16 kernels on a CPU",
                        "--engine onnxruntime runs in fp32 on a CPU: drop --precision bf16 (or --engine torch)")
    if importlib.util.find_spec("onnxruntime") is None:
        return declined("onnxruntime is not installed", "--engine onnxruntime needs onnxruntime: pip install onnxruntime")
    reason = "--engine onnxruntime" if request.named else (
        "fp32, the same answers on every CPU; --engine torch: PyTorch bf16, 1.34x the speed with AMX"
        if machine.has_amx_bf16() else "the fastest engine on this CPU, fp32: the same answers on every CPU")
    return Choice("onnxruntime", "cpu", "fp32", reason)


register(Engine(name="onnxruntime", features=features, bundle=bundle, offer=offer, rank=10,
                summary="ONNX Runtime on the CPU in fp32: the network converted once, cached and checked"))
