"""The Open Inference Protocol (KServe v2, Triton's HTTP API) beside serve's own API, so that a
client that speaks it (`tritonclient.http`, KServe, Seldon) calls a transferkit server as it is.

    GET  /v2                                   server metadata
    GET  /v2/health/live, /v2/health/ready     liveness, readiness
    GET  /v2/models/{name}[/versions/{v}]      model metadata: inputs, outputs, datatypes, shapes
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer

The model takes one of two inputs: `image`, BYTES [N] (encoded image files: JPEG, PNG, ...; in a
JSON body each one base64-encoded), or `input`, FP32 [N, 3, S, S] (the preprocessed tensor an
exported model.onnx takes: resized, center-cropped, normalized by the model's mean and std). It
answers `probabilities` FP32 [N, C] (class order: the metadata's `classes` parameter) and `label`
BYTES [N] (the top-1 class), and for a model with an out-of-distribution score `ood_score` FP32 [N]
and `unknown` BOOL [N] (at the server's --reject); `probabilities` with Triton's classification parameter
(`class_count` in tritonclient) gives the top k as "score:index:label" strings. Tensors travel as
JSON or with the binary tensor data extension (tritonclient's default). Errors are the protocol's
`{"error": "..."}` with a 4xx status. The same batching (images of concurrent requests run
together), limits (--max-files images or rows, --max-body-mb) and token as /predict.
"""

from __future__ import annotations

import base64
import json
import math
import struct

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .. import __version__
from ..files import parse_json

BINARY_HEADER = "inference-header-content-length"
IMAGE, TENSOR = "image", "input"
PROBABILITIES, LABEL = "probabilities", "label"
OOD_SCORE, UNKNOWN = "ood_score", "unknown"  # a model with an out-of-distribution score: FP32 [N], BOOL [N]
VERSION = "1"  # the one version of the model a server serves


class ProtocolError(Exception):
    """An error the protocol answers as `{"error": message}` with `status`."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def error_response(request: Request, exc: ProtocolError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, exc.status)


def router(service, auth: list) -> APIRouter:
    """The /v2 routes over `service` (serving.app.Service); `auth`: the token check, if any, for
    everything but health."""
    api = APIRouter(prefix="/v2", tags=["Open Inference Protocol (v2)"])

    def model_of(name: str, version: str | None = None):
        if version is not None and version != VERSION:
            raise ProtocolError(f"unknown version '{version}' of model '{name}': it has version {VERSION}", 404)
        if not service.ready:
            raise ProtocolError(service.error or "the model is loading; try again shortly", 503)
        if name != service.model.info["name"]:
            raise ProtocolError(f"unknown model '{name}': this server serves '{service.model.info['name']}'", 404)
        return service.model

    @api.get("", summary="Server metadata", dependencies=auth)
    async def server_metadata():
        return {"name": "transferkit", "version": __version__, "extensions": ["binary_tensor_data", "classification"]}

    @api.get("/health/live", summary="Liveness")
    async def live():
        return {"live": True}

    @api.get("/health/ready", summary="Readiness: the model is loaded")
    async def ready():
        return JSONResponse({"ready": service.ready}, 200 if service.ready else 503)

    @api.get("/models/{name}", summary="Model metadata", dependencies=auth)
    @api.get("/models/{name}/versions/{version}", summary="Model metadata", dependencies=auth)
    async def metadata(name: str, version: str | None = None):
        return model_metadata(model_of(name, version))

    @api.get("/models/{name}/ready", summary="Model readiness", dependencies=auth)
    @api.get("/models/{name}/versions/{version}/ready", summary="Model readiness", dependencies=auth)
    async def model_ready(name: str, version: str | None = None):
        model_of(name, version)
        return {"name": name, "ready": True}

    @api.post("/models/{name}/infer", summary="Inference", dependencies=auth)
    @api.post("/models/{name}/versions/{version}/infer", summary="Inference", dependencies=auth)
    async def infer(name: str, request: Request, version: str | None = None):
        model = model_of(name, version)
        header, tensors = parse_request(await request.body(), request.headers.get(BINARY_HEADER))
        (inp,) = header["inputs"]
        rows, array = inp["shape"][0], tensors[0]
        if rows > service.options.max_files:
            raise ProtocolError(f"{rows} inputs in one request: this server takes at most {service.options.max_files} "
                                "(--max-files)", 413)
        if inp["name"] == IMAGE:
            probs, ood, errors = await service.scored([(f"image {i}", bytes(b)) for i, b in enumerate(array)])
            if errors:
                i, reason = next(iter(sorted(errors.items())))
                raise ProtocolError(f"image {i} of {rows}: {reason}")
        else:
            probs, ood = await service.tensor_probabilities(array)
        outputs = requested_outputs(header, ood is not None)
        threshold = model.predictor.threshold
        unknown = None if ood is None else (ood > threshold if threshold is not None else np.zeros(len(ood), bool))
        return infer_response(header, name, probs, model.classes, outputs, model.task, ood, unknown)

    return api


def model_metadata(model) -> dict:
    size = model.info["preprocess"]["input_size"]
    return {
        "name": model.info["name"], "versions": [VERSION], "platform": f"transferkit_{model.info['engine']}",
        "inputs": [{"name": IMAGE, "datatype": "BYTES", "shape": [-1]},
                   {"name": TENSOR, "datatype": "FP32", "shape": [-1, 3, size, size]}],
        "outputs": [{"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, len(model.classes)]},
                    {"name": LABEL, "datatype": "BYTES", "shape": [-1]}]
        + ([{"name": OOD_SCORE, "datatype": "FP32", "shape": [-1]}, {"name": UNKNOWN, "datatype": "BOOL", "shape": [-1]}]
           if model.scores_ood else []),
        "parameters": {"classes": model.classes, "preprocess": model.info["preprocess"], "task": model.task.to_dict(),
                       "input_choice": f"send either {IMAGE} (encoded image files) or {TENSOR} (preprocessed)"},
    }


def parse_request(body: bytes, header_length: str | None) -> tuple[dict, list[np.ndarray]]:
    """The request's JSON header, checked, and its one input as an array (an object array of
    bytes for BYTES, float32 of its shape for FP32), from JSON data or the binary extension."""
    try:
        json_length = int(header_length) if header_length is not None else len(body)
        if not 0 <= json_length <= len(body):
            raise ValueError
    except ValueError:
        raise ProtocolError(f"bad Inference-Header-Content-Length: {header_length!r}") from None
    try:
        header = parse_json(body[:json_length])  # bounded: a header nested 100,000 deep is refused
    except ValueError as exc:
        raise ProtocolError(f"the request is not an inference request: its JSON header {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise ProtocolError("the request has no 'inputs' list")
    _parameters(header, "the request")
    if len(header["inputs"]) != 1:
        raise ProtocolError(f"send exactly one input, '{IMAGE}' (BYTES) or '{TENSOR}' (FP32); got "
                            f"{len(header['inputs'])}")
    inp = header["inputs"][0]
    if not isinstance(inp, dict):
        raise ProtocolError("an input must be an object with name, shape, datatype and data")
    name, datatype, shape = inp.get("name"), inp.get("datatype"), inp.get("shape")
    params = _parameters(inp, f"input {name!r}")
    expected = {IMAGE: "BYTES", TENSOR: "FP32"}
    if name not in expected:
        raise ProtocolError(f"unknown input {name!r}: this model takes '{IMAGE}' (BYTES, encoded images) or "
                            f"'{TENSOR}' (FP32 [N, 3, S, S], preprocessed)")
    if datatype != expected[name]:
        raise ProtocolError(f"input '{name}' must be {expected[name]}, not {datatype}")
    if not (isinstance(shape, list) and 0 < len(shape) <= 8 and all(_size(d) for d in shape)):
        raise ProtocolError(f"input '{name}' needs a shape: a list of up to 8 sizes (whole numbers >= 0)")
    count = math.prod(shape)  # Python's integers: a claimed [2^32, 2^32] does not wrap round
    if count > len(body):  # every element takes at least a byte of the body (BYTES: 4, FP32: 4)
        raise ProtocolError(f"input '{name}' claims shape {shape}, more elements than the request holds", 413)
    if name == IMAGE and count != shape[0]:
        raise ProtocolError(f"input '{IMAGE}' takes one encoded image per row: shape [N] or [N, 1], not {shape}")
    if shape[0] == 0:
        raise ProtocolError(f"input '{name}' is empty (shape {shape})")
    size = params.get("binary_data_size")
    if size is not None:
        raw = body[json_length:]
        if not _size(size) or size != len(raw):
            raise ProtocolError(f"binary_data_size {size} does not match the {len(raw)} bytes after the JSON header")
        data = _bytes_tensor(raw, count) if datatype == "BYTES" else _fp32(raw, count)
    elif "data" in inp:
        data = _json_bytes(inp["data"], count) if datatype == "BYTES" else _json_fp32(inp["data"], count)
    else:
        raise ProtocolError(f"input '{name}' has no data (neither 'data' nor binary_data_size)")
    return header, [data.reshape(shape[0], -1)[:, 0] if datatype == "BYTES" else data.reshape(shape)]


def _bytes_tensor(raw: bytes, count: int) -> np.ndarray:
    """The binary extension's BYTES: each element a 4-byte little-endian length and its bytes."""
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise ProtocolError("BYTES data ends inside an element's length")
        (length,) = struct.unpack_from("<I", raw, at)
        if at + 4 + length > len(raw):
            raise ProtocolError("BYTES data ends inside an element")
        out.append(raw[at + 4:at + 4 + length])
        at += 4 + length
    if len(out) != count:
        raise ProtocolError(f"the shape says {count} element(s), the BYTES data holds {len(out)}")
    return np.array(out + [None], dtype=object)[:-1]


def _fp32(raw: bytes, count: int) -> np.ndarray:
    if len(raw) != count * 4:
        raise ProtocolError(f"the shape says {count} FP32 values ({count * 4} bytes); {len(raw)} bytes were sent")
    values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if not np.isfinite(values).all():  # NaN in, a confident label out: never
        raise ProtocolError(f"input '{TENSOR}' holds a value that is not finite (NaN or infinity)")
    return values


def _json_bytes(data, count: int) -> np.ndarray:
    """BYTES in JSON: strings, each an image file base64-encoded (JSON holds no raw bytes)."""
    items = list(_flat(data))
    if len(items) != count or not all(isinstance(x, str) for x in items):
        raise ProtocolError(f"input '{IMAGE}' in JSON: {count} base64 string(s) expected")
    try:
        decoded = [base64.b64decode(x, validate=True) for x in items]
    except ValueError:
        raise ProtocolError(f"input '{IMAGE}' in JSON must be base64-encoded image files") from None
    return np.array(decoded + [None], dtype=object)[:-1]


def _json_fp32(data, count: int) -> np.ndarray:
    items = list(_flat(data))
    if len(items) != count or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in items):
        raise ProtocolError(f"input '{TENSOR}' in JSON: {count} numbers expected")
    values = np.asarray(items, dtype=np.float32)
    if not np.isfinite(values).all():
        raise ProtocolError(f"input '{TENSOR}' holds a value that is not finite")
    return values


def _flat(data):
    """The leaves of nested lists, depth first, without recursion (the header is depth-checked,
    but a flat walk costs nothing)."""
    stack = [iter([data])]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            yield item


_END = object()


def _size(value) -> bool:
    """A size the protocol takes: a whole number >= 0 (true and false are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parameters(obj: dict, what: str) -> dict:
    """`obj`'s parameters: an object, or none ({})."""
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ProtocolError(f"the parameters of {what} must be an object, not {type(params).__name__}")
    return params


def requested_outputs(header: dict, ood: bool = False) -> dict[str, dict]:
    """{output name: its parameters}: those the request names, else all (`ood`: the model's
    out-of-distribution score and decision too)."""
    names = (PROBABILITIES, LABEL, *((OOD_SCORE, UNKNOWN) if ood else ()))
    binary = _parameters(header, "the request").get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise ProtocolError("binary_data_output must be true or false")
    asked = header.get("outputs")
    if asked is None:
        return {n: {"binary_data": binary} for n in names}
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise ProtocolError("'outputs' must be a list of objects with a name")
    out = {}
    for o in asked:
        if o.get("name") not in names:
            raise ProtocolError(f"unknown output {o.get('name')!r}: this model answers " +
                                ", ".join(f"'{n}'" for n in names))
        params = {"binary_data": binary, **_parameters(o, f"output {o['name']!r}")}
        if not isinstance(params["binary_data"], bool):
            raise ProtocolError("binary_data must be true or false")
        out[o["name"]] = params
    return out


def infer_response(header: dict, name: str, probs: np.ndarray, classes: list[str], outputs: dict[str, dict],
                   task=None, ood: np.ndarray | None = None, unknown: np.ndarray | None = None):
    """The response: JSON, or JSON then the binary outputs (with their header) where asked. A
    multi-label `task`: `probabilities` are each class's own sigmoid, and `label` each image's
    predicted set (every class at its threshold or above), joined by the model's delimiter."""
    body = {"model_name": name, "model_version": VERSION, "outputs": []}
    if isinstance(header.get("id"), str):
        body["id"] = header["id"]
    blobs = []
    for out_name, params in outputs.items():
        k = params.get("classification")
        if out_name == PROBABILITIES and k not in (None, False, 0):  # (true is no number of classes)
            if not _size(k) or k < 1:
                raise ProtocolError("classification must be a positive number of classes")
            top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
            values = [f"{probs[r, c]:f}:{c}:{classes[c]}" for r in range(len(probs)) for c in top[r]]
            tensor = {"name": out_name, "datatype": "BYTES", "shape": [len(probs), min(k, len(classes))]}
        elif out_name == PROBABILITIES:
            values, tensor = probs.astype(np.float32), {"name": out_name, "datatype": "FP32",
                                                        "shape": list(probs.shape)}
        elif out_name == OOD_SCORE:
            values, tensor = ood.astype(np.float32), {"name": out_name, "datatype": "FP32", "shape": [len(ood)]}
        elif out_name == UNKNOWN:
            values, tensor = np.asarray(unknown, bool), {"name": out_name, "datatype": "BOOL", "shape": [len(ood)]}
        elif task is not None and task.multi:
            values = [task.joiner.join(classes[c] for c in np.flatnonzero(row)) for row in task.decide(probs)]
            tensor = {"name": out_name, "datatype": "BYTES", "shape": [len(probs)]}
        else:
            values = [classes[c] for c in probs.argmax(1)]
            tensor = {"name": out_name, "datatype": "BYTES", "shape": [len(probs)]}
        if params.get("binary_data"):
            blob = (values.astype("<f4").tobytes() if tensor["datatype"] == "FP32" else
                    values.astype(np.uint8).tobytes() if tensor["datatype"] == "BOOL"
                    else b"".join(struct.pack("<I", len(s.encode())) + s.encode() for s in values))
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = values.ravel().tolist() if tensor["datatype"] in ("FP32", "BOOL") else list(values)
        body["outputs"].append(tensor)
    text = json.dumps(body).encode()
    if not blobs:
        return Response(text, media_type="application/json")
    return Response(text + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(text))})
