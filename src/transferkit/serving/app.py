"""The HTTP application: `POST /predict`, `GET /model`, `/health`, `/ready`, the web page at `/`,
the Open Inference Protocol under `/v2` (`inference_protocol`) and the API's own docs at `/docs`
(served from the package: no CDN), built with FastAPI.

Create it with `create_app(model_or_path, options)`; run it with `transferkit serve` or any
ASGI server (``uvicorn --factory transferkit.serving.server:from_environment``)."""

from __future__ import annotations

import asyncio
import secrets
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from .. import __version__
from ..config import ServeOptions
from ..errors import UserError
from ..prediction.outputs import to_dict, top_predictions
from . import inference_protocol
from .batcher import Batcher
from .limits import LOG, BodyLimit, RequestLog
from .model import ServedModel, usable_cores

STATIC = Path(__file__).parent / "static"

# Raw request bodies taken as one image; anything else but multipart gets 415.
RAW_TYPES = ("image/", "application/octet-stream")
HOW_TO_SEND = ("send images as multipart files (curl -F file=@photo.jpg URL) or one image as the raw body "
               "with an image content type (curl -H 'Content-Type: image/jpeg' --data-binary @photo.jpg URL)")
# The page's own resources only: no inline script, nothing from elsewhere.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                                           "base-uri 'none'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


class LabelProbability(BaseModel):
    label: str
    probability: float


class ImagePrediction(BaseModel):
    name: str
    label: str | None = None
    probability: float | None = None
    top_k: list[LabelProbability] = []
    error: str | None = None


class PredictResponse(BaseModel):
    model: str
    predictions: list[ImagePrediction]


class ErrorResponse(BaseModel):
    detail: str
    predictions: list[ImagePrediction] = []


class Service:
    """What the routes share: the model (loaded before or at start-up), its batcher, the
    decoding threads and the options. One per application, no globals."""

    def __init__(self, model: ServedModel | str | Path, options: ServeOptions):
        self.options = options
        self.model = model if isinstance(model, ServedModel) else None
        self.source = None if self.model else model
        self.error: str | None = None
        self.batcher: Batcher | None = None
        self._decode: ThreadPoolExecutor | None = None
        self._loading: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        return self.batcher is not None

    async def start(self) -> None:
        self._decode = ThreadPoolExecutor(max(2, min(4, usable_cores())), thread_name_prefix="transferkit-decode")
        if self.model is None:  # liveness at once; readiness once the model is loaded
            self._loading = asyncio.get_running_loop().create_task(self._load())
        else:
            await self._start_batcher()

    async def _load(self) -> None:
        o = self.options
        try:
            self.model = await asyncio.to_thread(ServedModel, self.source, o.device, o.precision, o.tta, 0, o.engine,
                                                 LOG.info)
        except UserError as exc:
            self.error = str(exc)
            LOG.error("could not load the model: %s", exc)
            return
        await self._start_batcher()

    async def _start_batcher(self) -> None:
        self.model.set_reject(self.options.reject, self.options.unknown_label)
        self.batcher = await Batcher(self.model.run, self.options.max_batch, self.options.max_wait_ms / 1000).__aenter__()
        LOG.info("ready: %s (%d classes)", self.model.info["name"], len(self.model.classes))

    async def stop(self) -> None:
        if self._loading is not None:
            self._loading.cancel()
        if self.batcher is not None:
            await self.batcher.__aexit__(None, None, None)
        if self._decode is not None:
            self._decode.shutdown(wait=False, cancel_futures=True)
        if self.model is not None:
            self.model.close()

    async def predict(self, images: list[tuple[str, bytes]], top_k: int) -> list[dict]:
        """Each image's top-k labels, or why it cannot be used (`probabilities`)."""
        probs, ood, errors = await self.scored(images)
        predictor = self.model.predictor
        preds = top_predictions([name for name, _ in images], probs, errors, self.model.classes, top_k, self.model.task,
                                ood, predictor.threshold, predictor.unknown_label)
        return [to_dict(p, "name") for p in preds]

    async def scored(self, images: list[tuple[str, bytes]]) -> tuple[np.ndarray, np.ndarray | None, dict[int, str]]:
        """Class probabilities (N, C) of (name, encoded image) pairs, their out-of-distribution
        scores (N,) (None: the model has none) and {index: reason} for those that cannot be used
        (their rows NaN): each image decoded on a decoding thread, batched with other requests'
        images for the model, then turned into probabilities exactly as `predict` does."""
        loop = asyncio.get_running_loop()
        views = await asyncio.gather(*(loop.run_in_executor(self._decode, self.model.views, data, name)
                                       for name, data in images))
        ok = [i for i, v in enumerate(views) if not isinstance(v, str)]
        k = len(self.model.classes)
        logits = np.full((len(images), k), np.nan, dtype=np.float32)
        ood = np.full(len(images), np.nan, dtype=np.float32) if self.model.scores_ood else None
        for i, rows in zip(ok, await asyncio.gather(*(self.batcher(views[i]) for i in ok))):
            logits[i] = self.model.task.mean_of_views(rows[None, :, :k])[0]
            if ood is not None:
                ood[i] = rows[0, k]  # (the evaluation view's, as predict's)
        return (self.model.task.probabilities(logits), ood,
                {i: v for i, v in enumerate(views) if isinstance(v, str)})

    async def tensor_probabilities(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities (N, C) of preprocessed inputs (N, 3, S, S) float32, each row batched
        with other requests' inputs (one view each: no test-time augmentation), and their
        out-of-distribution scores (None: the model has none)."""
        size = self.model.info["preprocess"]["input_size"]
        if x.shape[1:] != (3, size, size):
            raise inference_protocol.ProtocolError(f"input shape {list(x.shape)}: this model takes [N, 3, {size}, {size}]")
        rows = self.model.from_tensor(x)
        out = np.concatenate(await asyncio.gather(*(self.batcher(rows[i:i + 1]) for i in range(len(rows))))) \
            .astype(np.float32)
        k = len(self.model.classes)
        return self.model.task.probabilities(out[:, :k]), (out[:, k] if self.model.scores_ood else None)


def current_service(request: Request) -> Service:
    """The app's `Service`: what each route asks for (`Depends(current_service)`)."""
    return request.app.state.service


def create_app(model: ServedModel | str | Path, options: ServeOptions | None = None):
    """The ASGI application serving `model` (for uvicorn, or a test client).

    Args:
        model: a loaded `ServedModel`, or the path of a run folder or an exported model, loaded in
            the background at start-up (`/ready` answers 503 until then).
        options: batching, limits, token and CORS (`ServeOptions`; host and port are the server's
            business).

    Returns:
        The FastAPI application: the page at /, /predict, /explain, /model, /health, /ready and the
        Open Inference Protocol's /v2 routes.
    """
    options = options or ServeOptions()
    service = Service(model, options)

    @asynccontextmanager
    async def lifespan(app):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPIOffline(title="transferkit", version=__version__, lifespan=lifespan,
                         description="Image classification with a model trained by transferkit. "
                                     "POST images to /predict; the web page is at /.")
    app.state.service = service
    auth = [Depends(_bearer_check(options.token))] if options.token else []

    app.include_router(public)
    app.include_router(guarded, dependencies=auth)
    app.include_router(inference_protocol.router(service, auth))
    app.add_exception_handler(inference_protocol.ProtocolError, inference_protocol.error_response)
    app.add_exception_handler(StarletteHTTPException, _http_error)

    if options.cors:
        origins = [o.strip() for o in options.cors.split(",") if o.strip()]
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodyLimit, max_bytes=int(options.max_body_mb * 1e6))
    app.add_middleware(RequestLog)  # added last: the outermost, so it logs the 413s too
    return app


async def _http_error(request: Request, exc: StarletteHTTPException):
    """Errors under /v2 in the Open Inference Protocol's form ({"error": ...}); elsewhere FastAPI's."""
    if request.url.path.startswith("/v2/") or request.url.path == "/v2":
        return JSONResponse({"error": exc.detail}, exc.status_code, headers=getattr(exc, "headers", None))
    return await http_exception_handler(request, exc)


def _require_ready(service: Service) -> None:
    if not service.ready:
        raise HTTPException(503, service.error or "the model is loading; try again shortly",
                            headers={"Retry-After": "1"})


def _bearer_check(token: str):
    bearer = HTTPBearer(auto_error=False, description="the server's --token")

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        given = credentials.credentials.encode() if credentials else b""
        if not secrets.compare_digest(given, token.encode()):
            raise HTTPException(401, "this server needs its token: Authorization: Bearer <token>",
                                headers={"WWW-Authenticate": "Bearer"})

    return check


async def _images_of(request: Request, max_files: int) -> list[tuple[str, bytes]]:
    """The request's images as (name, bytes): multipart files, or the raw body. A client that
    goes away before its body is complete is answered 400 (nobody reads it), not a server error."""
    from starlette.requests import ClientDisconnect

    try:
        return await _read_images(request, max_files)
    except ClientDisconnect:
        raise HTTPException(400, "the client closed the connection before the whole body arrived") from None


async def _read_images(request: Request, max_files: int) -> list[tuple[str, bytes]]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        async with request.form(max_files=max_files, max_fields=max_files) as form:
            images = [(item.filename or key, await item.read()) for key, item in form.multi_items()
                      if isinstance(item, UploadFile)]
        if not images:
            raise HTTPException(400, f"no image file in the form: {HOW_TO_SEND}")
        return images
    if not ctype.startswith(RAW_TYPES):
        raise HTTPException(415, f"unsupported content type '{ctype or 'none'}': {HOW_TO_SEND}")
    body = await request.body()
    if not body:
        raise HTTPException(400, "empty request body: no image")
    return [("<body>", body)]


def _request_body_doc() -> dict:
    binary = {"type": "string", "format": "binary"}
    return {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "array", "items": binary, "description": "one or more images"}}}},
        "image/jpeg": {"schema": binary}, "image/png": {"schema": binary}, "image/webp": {"schema": binary},
        "application/octet-stream": {"schema": binary}}}


# -- the routes: module-level, each asking for the app's Service --------------------------------------
public = APIRouter()  # the page, liveness and readiness: no token
guarded = APIRouter()  # the model and its answers: behind --token where one is set


@public.get("/", include_in_schema=False)
async def page():
    return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)


@public.get("/health", summary="Liveness: the process answers")
async def health():
    return {"status": "ok"}


@public.get("/ready", summary="Readiness: the model is loaded and answers requests",
         responses={503: {"model": ErrorResponse}})
async def ready(service: Service = Depends(current_service)):
    if service.ready:
        return {"ready": True, "model": service.model.info["name"]}
    return JSONResponse({"ready": False, "detail": service.error or "the model is loading"}, 503)


@guarded.get("/model", summary="The model: classes, backbone, preprocessing, val metrics",
         responses={503: {"model": ErrorResponse}})
async def model_info(service: Service = Depends(current_service)):
    _require_ready(service)
    o, b = service.options, service.batcher
    return {**service.model.info, "top_k_default": o.top_k, "auth": bool(o.token),
            "limits": {"max_body_mb": o.max_body_mb, "max_files": o.max_files},
            "batching": {"max_batch": o.max_batch, "max_wait_ms": o.max_wait_ms, "batches": b.batches,
                         "images": b.rows}}


@guarded.post("/predict", summary="Classify images", response_model=PredictResponse,
          responses={400: {"model": ErrorResponse, "description": "no image, or none of them usable"},
                     401: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
                     415: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
          openapi_extra={"requestBody": _request_body_doc()})
async def predict(request: Request, top_k: int | None = Query(None, ge=1, le=1000,
                                                               description="labels per image"), service: Service = Depends(current_service)):
    """One or more images, as multipart files (any field name) or as the raw body with an image
    content type. Per image: the label, its probability, the top-k labels with theirs, or
    the reason it could not be used. Unusable images in a request with usable ones are
    answered per image (200); a request without a usable image is a 400."""
    _require_ready(service)
    images = await _images_of(request, service.options.max_files)
    request.scope.setdefault("state", {})["images"] = len(images)
    k = min(top_k or service.options.top_k, len(service.model.classes))
    preds = await service.predict(images, k)
    body = {"model": service.model.info["name"], "predictions": preds}
    if all(p["error"] for p in preds):
        first = preds[0]
        return JSONResponse({"detail": f"{first['name']}: {first['error']}", **body}, 400)
    return JSONResponse(body)


@guarded.post("/explain", summary="Where in the image the answer comes from",
          responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse},
                     409: {"model": ErrorResponse, "description": "the model has no spatial maps"},
                     413: {"model": ErrorResponse}, 415: {"model": ErrorResponse},
                     503: {"model": ErrorResponse}},
          openapi_extra={"requestBody": _request_body_doc()})
async def explain(request: Request, top_k: int | None = Query(None, ge=1, le=1000,
                                                               description="labels per image"), service: Service = Depends(current_service)):
    """One image (as /predict takes it): its prediction, and a heatmap of where its most
    probable class comes from (exact class activation maps for a linear head on pooled
    features, Grad-CAM elsewhere): `heatmap`, an 8-bit greyscale PNG of the image's size,
    and `overlay`, a JPEG of the image under it, both base64."""
    _require_ready(service)
    images = await _images_of(request, 1)
    if len(images) != 1:
        raise HTTPException(400, "/explain takes one image")
    k = min(top_k or service.options.top_k, len(service.model.classes))
    name, data = images[0]
    try:
        answer = await asyncio.get_running_loop().run_in_executor(service._decode, service.model.explain, data,
                                                                   name, k)
    except UserError as exc:
        status = 400 if str(exc).startswith(f"{name}:") else 409
        return JSONResponse({"detail": str(exc)}, status)
    return JSONResponse({"model": service.model.info["name"], **answer})
