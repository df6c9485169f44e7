"""PyTorch networks converted to ONNX for ONNX Runtime, once, into the cache.

A conversion is keyed by everything its output depends on (`Network.ident`: the weights'
checksum, the preprocessing, the network's configuration, and the versions of transferkit, timm,
torch, onnx and onnxruntime), so a change to any of them converts again. Before its first use it
is checked against the PyTorch network in fp32 on real images (the first batch of a feature pass,
a run's validation images): a conversion that disagrees is never stored, and the caller falls
back to PyTorch. It is stored as one checksummed file (`files.write_checked`): the facts of the
check, then the ONNX model; a file that fails its checksum is rebuilt, with one line, and never
loaded. Reading a stored conversion imports no torch.

A run folder carries its own conversions (`carry`, in RUN/converted/): what its inference needs
(its frozen backbone's features network, or its whole model; its maps network when one was
made), so that it predicts, serves and is evaluated where torch is not installed (the light
install) and the cache is empty. Those are matched by what they are a conversion of
(`Network.identity`), not by the versions of the packages that made them.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

import numpy as np

from .. import files
from ..errors import UserError
from ..sessions import open_session
from ..sessions.metadata import onnx_with_metadata

CHECK_IMAGES = 8  # real images a conversion is made and checked on (a run's val images, a pass's first)

FORMAT = 1  # of the stored conversions; part of every key
OPSET = 18
MAGIC = b"TKX1"
# Largest |output difference| between ONNX Runtime and PyTorch (both fp32), relative to the
# outputs' scale: measured 2e-6 for Lite0's features and logits; float reordering, not an error.
TOLERANCE = 1e-4
_PACKAGES = ("torch", "timm", "onnx", "onnxruntime")
CARRIED = "converted"  # a run folder's own conversions: RUN/converted/<kind>.tkx


class ConversionError(UserError):
    """A network that does not convert, or whose conversion disagrees with PyTorch."""


@dataclass
class Network:
    """A frozen PyTorch network to convert. `kind` "features": uint8 NCHW images in (normalized
    inside the graph), features out; "classifier": normalized float32 NCHW in, logits out.
    `build` makes the eval-mode module (it imports torch); `meta`, stored in the ONNX model's
    metadata, is what `OnnxPredictor` reads (a classifier's classes and preprocessing)."""

    kind: str
    ident: dict
    build: Callable
    pre: object = None  # a features network's models.preprocess.Preprocess (its mean and std)
    meta: dict | None = None
    label: str = "the network"  # for messages
    run_dir: Path | None = None  # a run folder whose own conversion of this network may serve (`carried`)

    def key(self) -> dict:
        from .. import __version__

        return {**self.identity(), "transferkit": __version__, "versions": {p: _version(p) for p in _PACKAGES}}

    def identity(self) -> dict:
        """What a conversion is of, whichever versions made it (the key less the versions): how a
        run folder's own conversion is matched. As JSON gives it back (tuples are lists)."""
        return json.loads(json.dumps({"format": FORMAT, "opset": OPSET, "kind": self.kind, **self.ident}))


def features_network(ident: dict, build: Callable, pre, backbone: str, run_dir: Path | None = None) -> Network:
    """The features network of a backbone (`ident`: {"features": its features' cache key,
    "multi": whether earlier stages' pooled activations follow the last layer's}); `run_dir`: a
    run folder fitted on these features, whose own conversion may serve."""
    return Network("features", ident, build, pre=pre, label=f"{backbone}'s backbone", run_dir=run_dir)


@dataclass
class Converted:
    """A stored, checked conversion: the ONNX model's bytes and the facts of its check."""

    path: Path
    model: bytes
    facts: dict = field(default_factory=dict)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def lookup(network: Network, cache, say=None) -> Converted | None:
    """The stored conversion of `network`, or None: the cache's, else the one its run folder
    carries (`carry`) if it is of this network. A cached one that fails its checksum is removed (and `say`
    told), so that it is rebuilt; a carried one is never changed (a damaged one: told, not used)."""
    path = cache.engine_file(network.key())
    try:
        found = read_converted(path)
    except files.CorruptBlob:
        if say:
            say(f"warning: the cached conversion {path} failed its checksum: converting again")
        path.unlink(missing_ok=True)
        found = None
    except OSError:
        found = None
    return found if found is not None or network.run_dir is None else carried(network, network.run_dir, say)


def carried_file(run_dir: Path, kind: str) -> Path:
    return Path(run_dir) / CARRIED / f"{kind}.tkx"


def carried(network: Network, run_dir: Path, say=None) -> Converted | None:
    """The conversion of `network` that the run folder `run_dir` carries, or None (none, another
    network's, or a damaged file: `say` is told of that one)."""
    path = carried_file(run_dir, network.kind)
    try:
        found = read_converted(path)
    except (files.CorruptBlob, OSError) as exc:
        if say and not isinstance(exc, FileNotFoundError):
            say(f"warning: {path} is damaged ({type(exc).__name__}): not used")
        return None
    if found is None or found.facts.get("identity") != network.identity():
        return None
    return found


def carry(converted: Converted, network: Network, run_dir: Path) -> Path:
    """A copy of `converted` (the conversion of `network`) kept in the run folder, with what it is
    a conversion of; written atomically. Returns its path. Where the stored file says so already
    (`store` writes it in) and the file system allows, the copy is a hard link to it: the same
    bytes, nothing written (a warm run wrote 20 MB, 0.3 s, per run). The cache replaces its files,
    never writes into them, so the run's copy stays what it was whatever the cache does next."""
    path = carried_file(run_dir, network.kind)
    facts = converted.facts | {"identity": network.identity()}
    if facts == converted.facts and _linked(Path(converted.path), path):
        return path
    _write(path, converted.model, facts)
    return path


def _linked(source: Path, target: Path) -> bool:
    """`target` made a hard link to `source`, atomically; False where it cannot be (another file
    system, no links there, `source` gone)."""
    import os
    import secrets

    temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, temporary)
        os.replace(temporary, target)
        return True
    except OSError:
        temporary.unlink(missing_ok=True)
        return False


def read_converted(path: Path) -> Converted | None:
    """The conversion stored at `path` (its facts, then the ONNX model), None where there is none
    or it does not parse. Raises `files.CorruptBlob` (a failed checksum) and OSError."""
    body = files.read_checked(path, MAGIC)
    if body is None:
        return None
    try:
        (size,) = struct.unpack_from("<I", body)
        facts = json.loads(body[4:4 + size])
        return Converted(path, body[4 + size:], facts)
    except (struct.error, ValueError):
        return None


def convert(network: Network, example: np.ndarray, cache, say=None) -> Converted:
    """Convert `network`, check it against PyTorch on `example` (real images where the caller has
    them) and store it; raises `ConversionError` when it does not convert or disagrees."""
    import contextlib
    import io
    import warnings

    from ..errors import require_torch

    require_torch(f"converting {network.label} for ONNX Runtime")
    import torch

    if say:
        say(f"converting {network.label} to ONNX for ONNX Runtime, once (cached)")
    module = _wrapped(network)
    x = torch.from_numpy(np.ascontiguousarray(example))
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.inference_mode(False):
            warnings.simplefilter("ignore")
            # The TorchScript-based exporter: 1.2 s for Lite0 against 8 s for torch.export's (measured).
            with torch.no_grad():
                outputs = module(x)
            # (a classifier with an out-of-distribution score: its logits and the score, `models.with_ood`;
            # a maps network: its features and its spatial maps, `models.maps`)
            names = ["output", *(f"output{i}" for i in range(1, len(outputs)))] if isinstance(outputs, tuple) \
                else ["output"]
            torch.onnx.export(module, (x,), buffer, input_names=["input"], output_names=names,
                              dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                              opset_version=OPSET, dynamo=False)
        model = buffer.getvalue() if network.meta is None else onnx_with_metadata(buffer.getvalue(), network.meta)
        expected_all = [o.float().numpy() for o in (outputs if isinstance(outputs, tuple) else (outputs,))]
        got_all = session(model, threads=0).run(None, {"input": example})
    except Exception as exc:  # noqa: BLE001 - the exporter and runtime raise many types; the caller falls back
        raise ConversionError(f"it did not convert ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    expected, got = expected_all[0], got_all[0]
    scale = max(1.0, float(np.abs(expected).max()))
    diff = float(np.abs(got - expected).max())
    for e, g in zip(expected_all[1:], got_all[1:]):  # (out-of-distribution scores, maps: each to its own scale)
        if not float(np.abs(g - e).max()) <= TOLERANCE * max(1.0, float(np.abs(e).max())):
            raise ConversionError(f"ONNX Runtime's outputs differ from PyTorch's ({network.kind})")
    if not diff <= TOLERANCE * scale:
        raise ConversionError(f"ONNX Runtime's output differs from PyTorch's by {diff:.2g} (scale {scale:.3g})")
    facts = {"checked_on": int(len(example)), "max_abs_difference": diff, "output_scale": scale,
             "output_width": int(expected.shape[-1]),
             "last_features": getattr(getattr(module, "net", None), "last_features", None),
             **getattr(module, "facts", {})}
    return store(network, model, facts, cache)


def store(network: Network, model: bytes, facts: dict, cache) -> Converted:
    """Keep `model` (ONNX bytes) in the cache as the conversion of `network`, with `facts` and what
    it is a conversion of (so that a run folder's copy can be a link to it: `carry`)."""
    path = cache.engine_file(network.key())
    facts = facts | {"identity": network.identity()}
    _write(path, model, facts)
    return Converted(path, model, facts)


def _write(path: Path, model: bytes, facts: dict) -> None:
    """A stored conversion (what `read_converted` reads): its facts, then the ONNX model, checksummed."""
    head = json.dumps(facts).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_checked(path, MAGIC, struct.pack("<I", len(head)) + head + model)


def _wrapped(network: Network):
    """The module to export: a features network gets uint8 images and normalizes them itself,
    exactly as `runtime.Runtime.to_input` does."""
    import torch
    from torch import nn

    net = network.build().float().eval()
    if network.kind not in ("features", "maps"):
        return net

    class Normalized(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.facts = getattr(net, "facts", {})
            self.register_buffer("mean", torch.tensor(network.pre.mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(network.pre.std).view(1, 3, 1, 1))

        def forward(self, x):
            return self.net((x.float() / 255.0 - self.mean) / self.std)

    return Normalized().eval()


def check_images(run_dir: Path, meta, count: int = CHECK_IMAGES) -> np.ndarray:
    """Up to `count` of the run's validation images (split.json) as the model's inputs, to check a
    conversion on real images; random inputs where none is left to read."""
    from ..data.decode import normalized_array
    from ..errors import ImageDecodeError
    from ..files import Record, read_json_object

    p = meta.preprocess
    rows = []
    val = (read_json_object(run_dir / "split.json") or Record()).items_of("val", list)
    for item in val:
        if len(rows) == count:
            break
        try:
            rows.append(normalized_array(str(item[0]), p.resize_size, p.input_size, p.interpolation, p.mean, p.std))
        except (ImageDecodeError, OSError, IndexError, TypeError):
            continue
    if rows:
        return np.stack(rows)
    return np.random.default_rng(0).normal(0, 1, (2, 3, p.input_size, p.input_size)).astype(np.float32)


def check_pixels(run_dir: Path, meta) -> np.ndarray:
    """`check_images` as the uint8 pixels a features or maps network takes (it normalizes them)."""
    p = meta.preprocess
    example = check_images(run_dir, meta)
    return np.clip(np.rint((example * np.asarray(p.std, np.float32).reshape(1, 3, 1, 1)
                            + np.asarray(p.mean, np.float32).reshape(1, 3, 1, 1)) * 255), 0, 255).astype(np.uint8)


def session(model: bytes | str | Path, threads: int = 0, engine: str = "onnxruntime"):
    """A CPU session of a model (its bytes or a path) on ONNX Runtime, or on OpenVINO for `engine`
    openvino (`sessions.openvino.OvSession`: the same interface); `threads`: intra-op threads (0:
    one per core this process may use)."""
    return open_session(model, threads, "openvino" if engine == "openvino" else "onnxruntime")
