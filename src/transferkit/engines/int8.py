"""ONNX Runtime in INT8 (`--engine onnxruntime-int8`): a backbone's features network quantized
once (ONNX Runtime's static post-training quantization, QDQ, per-channel INT8 weights, UINT8
activations whose ranges are 99.999th percentiles over real images: on Lite0's last-layer features
that gave a mean cosine with fp32's of 0.964 where MinMax ranges gave 0.929, Entropy 0.929, 8 last
nodes kept fp32 0.930; 64 hymenoptera images, 32 calibrating), cached, and run like the fp32 one.

INT8 features are not fp32's, so they are cached
under their own key, which names the quantized network itself (its digest): a network quantized
again (on other calibration images, after the cache let it go) gives new keys, never a mix of two
networks' features. The network is calibrated on the training images of the first dataset that
asks for it (`CALIBRATION` of them, in the split's order) and kept for every later one, as the
quantized network of a backbone, not of a dataset. A run fitted on INT8 features predicts on that
network (`ort.HeadOnFeatures`, or what the run folder carries). `auto` never picks it
(README "Engines": what it gains and costs, measured by bench/int8_engine.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np

from .base import Choice, Engine, Request, register
from .convert import Converted, Network, convert, features_network, lookup, store
from .ort import bundle, features

NAME = "onnxruntime-int8"
VERSION = 1  # of the quantization recipe (`quantized`): part of the quantized network's key
CALIBRATION = 32  # training images the activations' ranges are measured on
# The gate: the INT8 network's last-layer features against fp32's on the calibration images, mean
# cosine (bench/int8_engine.py, Lite0): hymenoptera 0.968 and flowers 0.960, where the head's val
# accuracy held (+0.0, +0.5 pt), CIFAR-10 upscaled 0.932, where it fell 0.9 pt. Below this the
# network is refused in one line (use --engine onnxruntime), as an export that drops too much is.
MIN_COSINE = 0.95


def quantize_qdq(source: Path, target: Path, calibration: np.ndarray, exclude=None, method: str = "minmax") -> None:
    """ONNX Runtime's static quantization of the ONNX model `source` into `target`: its
    pre-processing step, then QDQ, per-channel INT8 weights, UINT8 activations whose ranges are
    measured on `calibration` (the model's input, in batches of 16) by `method`: "minmax" (the
    extremes) or "percentile" (99.999% of the values: a rare extreme no longer stretches a range);
    `exclude`: (the pre-processed model's path) -> the names of the nodes left fp32."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches:  # ONNX Runtime's CalibrationDataReader (the ranges are of all batches: their size changes nothing)
        def __init__(self):
            self.items = ({"input": np.ascontiguousarray(calibration[i:i + 16])}
                          for i in range(0, len(calibration), 16))

        def get_next(self):
            return next(self.items, None)

    # (the percentile calibrator narrates its steps on stdout: where predict may write its CSV)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(target), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method={"minmax": CalibrationMethod.MinMax,
                                          "percentile": CalibrationMethod.Percentile}[method],
                        nodes_to_exclude=exclude(prepared) if exclude else [])


def quantized(network: Network, cache, pixels, say=None) -> Converted:
    """The INT8 conversion of the fp32 features network `network`: from the cache, else
    quantized now (the fp32 conversion first, if the cache lacks it) with the activations' ranges
    of `pixels()` (uint8 NCHW calibration images, decoded only if needed)."""
    from ..errors import UserError

    target = Network("int8", {"of": network.identity(), "version": VERSION}, None, pre=network.pre,
                     label=f"{network.label} in INT8")
    found = lookup(target, cache, say)
    if found is not None:
        return found
    calibration = pixels()
    fp32 = lookup(network, cache, say) or convert(network, calibration[:8], cache, say)
    if say:
        say(f"quantizing {network.label} to INT8 on {len(calibration)} training images, once (cached)")
    with tempfile.TemporaryDirectory() as tmp:
        source, target_path = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(fp32.model)
        try:
            quantize_qdq(source, target_path, calibration, method="percentile")
        except Exception as exc:  # noqa: BLE001 - the quantizer raises many types; one line for the user
            raise UserError(f"--engine {NAME}: {network.label} did not quantize ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
        model = target_path.read_bytes()
    cosine = agreement(fp32, model, calibration)
    if not cosine >= MIN_COSINE:
        raise UserError(f"--engine {NAME}: {network.label} in INT8 gives features too unlike fp32's (mean cosine "
                        f"{cosine:.3f} < {MIN_COSINE} on {len(calibration)} training images): use --engine onnxruntime")
    facts = {**fp32.facts, "calibrated_on": int(len(calibration)), "cosine_to_fp32": round(cosine, 4),
             "quantization": "static QDQ, per-channel INT8 weights, UINT8 activations (percentile ranges)"}
    return store(target, model, facts, cache)


def agreement(fp32: Converted, model: bytes, pixels: np.ndarray) -> float:
    """Mean cosine between the INT8 network's last-layer features and fp32's on `pixels`."""
    from .convert import session

    last = fp32.facts.get("last_features") or None
    a, b = (session(m).run(None, {"input": pixels})[0][:, :last] for m in (fp32.model, model))
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)))


def features_key(fp32_key: str, multi: bool, build, pre, backbone: str, cache, paths: list[str], say=None) -> str:
    """The cache key of a backbone's INT8 features (`fp32_key`: its fp32 features' key): it
    names the quantized network itself, which is also kept as that key's features network (what
    the feature pass and a run's predictor look up). `paths`: the training images, the first
    `CALIBRATION` of which calibrate a network quantized now."""

    def pixels() -> np.ndarray:
        return calibration_pixels(paths, pre)

    network = features_network({"features": fp32_key, "multi": multi}, build, pre, backbone)
    found = quantized(network, cache, pixels, say)
    key = hashlib.sha256(json.dumps({"fp32": fp32_key, "int8": hashlib.sha256(found.model).hexdigest()})
                         .encode()).hexdigest()[:24]
    features = features_network({"features": key, "multi": multi}, None, pre, backbone)
    if lookup(features, cache) is None:
        store(features, found.model, found.facts, cache)
    return key


def calibration_pixels(paths: list[str], pre, count: int = CALIBRATION) -> np.ndarray:
    """The first `count` readable images of `paths`, as the uint8 NCHW evaluation views a features
    network takes; a `UserError` where none can be read."""
    from ..data.decode import eval_array
    from ..errors import ImageDecodeError, UserError

    rows = []
    for path in paths:
        if len(rows) == count:
            break
        try:
            rows.append(eval_array(path, pre.resize_size, pre.input_size, pre.interpolation, path))
        except (ImageDecodeError, OSError):
            continue
    if not rows:
        raise UserError(f"--engine {NAME}: no training image could be read to calibrate the INT8 network")
    return np.ascontiguousarray(np.stack(rows).transpose(0, 3, 1, 2))


def offer(request: Request) -> Choice:
    """The INT8 engine where it can run (a CPU, precision auto or int8); a `UserError` elsewhere (it is
    asked for by name only)."""
    import importlib.util

    from ..errors import UserError

    device, precision = request.device, request.precision
    if device.startswith("cuda"):
        raise UserError(f"--engine {NAME} runs on the CPU: give --device cpu, or --engine torch for the GPU")
    if precision not in ("auto", "int8"):
        raise UserError(f"--engine {NAME} runs in INT8: drop --precision {precision}")
    if importlib.util.find_spec("onnxruntime") is None:
        raise UserError(f"--engine {NAME} needs onnxruntime: pip install onnxruntime")
    return Choice(NAME, "cpu", "int8", f"--engine {NAME}: INT8 features, faster, not the same answers as fp32")


register(Engine(name=NAME, features=features, bundle=bundle, offer=offer,
                summary="ONNX Runtime on the CPU in INT8: the features network quantized once, calibrated on "
                        "training images, cached"))
