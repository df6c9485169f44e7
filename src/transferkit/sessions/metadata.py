"""transferkit's metadata in an exported model: one JSON object (classes, preprocessing, task, the
unknown score where the model computes it) under one key, whichever the format (ONNX's
metadata_props, OpenVINO's runtime info, LiteRT's metadata table, Core ML's user metadata)."""

from __future__ import annotations

import json

META_KEY = "transferkit"  # the key holding the JSON


def onnx_with_metadata(model: bytes, meta: dict) -> bytes:
    """The ONNX model `model` (its bytes) with `meta` as its only metadata entry."""
    import onnx

    proto = onnx.load_from_string(model)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {META_KEY: json.dumps(meta)})
    return proto.SerializeToString()
