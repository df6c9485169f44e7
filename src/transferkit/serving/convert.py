"""A run folder's bundle converted to ONNX for serving on a CPU, where ONNX Runtime runs these
networks several times faster than PyTorch (depthwise convolutions above all; see the README's
serving table). Converted once per bundle into the cache, checked against the PyTorch model on
the same inputs before it is used, and rebuilt when the bundle or the converter changes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..cache import Cache
from ..errors import UserError

# Largest |logit difference| allowed between ONNX Runtime and PyTorch, relative to the logits' scale.
TOLERANCE = 1e-4


def onnx_for_bundle(run: str | Path, cache: Cache | None = None, say=None) -> Path:
    """The ONNX file of RUN's bundle (converted now, or found in the cache); raises `UserError`
    when the model does not convert or ONNX Runtime disagrees with PyTorch. `say`: told when a
    conversion starts (it takes a while)."""
    import onnxruntime
    import torch

    from .. import __version__
    from ..exporting.exporter import ExportJob, metadata
    from ..exporting.formats import onnx_fp32
    from ..files import file_sha256
    from ..models import bundle

    meta, run_dir = bundle.read_meta(run)
    weights = meta.model_sha256 or file_sha256(run_dir / "model.safetensors")
    ident = {"weights": weights, "meta": meta.to_dict() | {"versions": None}, "transferkit": __version__,
             "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "opset": onnx_fp32.OPSET}
    cache = (cache or Cache()).prepare()
    target = cache.serving_model(ident)
    if target.is_file():
        return target
    if say:
        say(f"converting {run_dir.name}'s model to ONNX for ONNX Runtime, once (it is cached): "
            "this CPU runs it faster (--engine torch: serve with PyTorch)")
    model, meta, _ = bundle.load(run)
    model = model.float().eval()
    size = meta.preprocess.input_size
    example = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (2, 3, size, size)).astype(np.float32))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.stem}.{os.getpid()}.tmp")
    try:
        onnx_fp32.build(ExportJob(model, example, metadata(meta), calibration=lambda: None), partial)
        _check(model, partial, example)
        os.replace(partial, target)  # atomic: two servers starting at once both end with a whole file
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; the caller falls back to PyTorch
        raise UserError(f"the model did not convert to ONNX ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    finally:
        partial.unlink(missing_ok=True)
    return target


def _check(model, path: Path, example) -> None:
    import torch

    from ..prediction.onnx_predictor import open_session

    with torch.inference_mode():
        expected = model(example).numpy()
    got = open_session(path).run(None, {"input": example.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if not diff <= TOLERANCE * max(1.0, float(np.abs(expected).max())):
        raise UserError(f"ONNX Runtime's logits differ from PyTorch's by {diff:.2g}")
