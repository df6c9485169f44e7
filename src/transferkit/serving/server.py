"""Running the application with uvicorn: one process, or several workers that each load the
model, behind the safety checks of `ServeOptions` (loopback unless a token or --no-auth)."""

from __future__ import annotations

import copy
import inspect
import json
import os
import socket
import sys
from dataclasses import asdict
from pathlib import Path

import uvicorn
from uvicorn.supervisors import Multiprocess

from ..config import ServeOptions
from ..errors import UserError
from .limits import LOG
from .model import ServedModel, worker_threads

# How `transferkit serve` hands the model and options to worker processes (they start afresh).
ENV = "TRANSFERKIT_SERVE"


def serve(model: str | Path, options: ServeOptions | None = None, **kwargs) -> None:
    """Serve `model` (a run folder, or an exported .onnx file: then torch is not imported) over
    HTTP until interrupted: the web page at /, the API at /predict, its docs at /docs.

    Args:
        options: a `ServeOptions`, or its fields as keywords (``port=8080, workers=2``).
    Raises:
        UserError: the model does not load, an option is wrong, or a non-loopback host without
            --token or --no-auth.

    With `workers` > 1 the model and options reach the worker processes through the environment
    variable TRANSFERKIT_SERVE, set in this process.

    Example: ``transferkit.serve("runs/flowers", port=8080)``"""
    from .app import create_app

    options = options or ServeOptions(**kwargs)
    sock = bind_port(options.host, options.port)  # a port in use: one line before the model loads
    # Loaded here first, so a bad model is one line before anything answers (each worker loads
    # its own copy again).
    served = ServedModel(model, options.device, options.precision, options.tta, worker_threads(options.workers),
                         options.engine)
    # h11, always (uvicorn would take httptools where installed): the request framing the README
    # states is h11's — two different Content-Lengths, a Transfer-Encoding other than chunked, a
    # signed or non-numeric length and a malformed request line are refused with 400; with both
    # Content-Length and chunked Transfer-Encoding the chunked framing is read (RFC 9112 6.3), and
    # BodyLimit counts what actually arrives, whatever Content-Length claimed.
    common = {"host": options.host, "port": options.port, "log_config": _log_config(), "http": "h11",
              "access_log": False, "timeout_graceful_shutdown": 10, "server_header": False}
    if options.workers > 1:
        served.close()
        os.environ[ENV] = json.dumps({"model": str(Path(model).expanduser().absolute()), **asdict(options)})
        config = uvicorn.Config("transferkit.serving.server:from_environment", factory=True,
                                workers=options.workers, **common)
    else:
        config = uvicorn.Config(create_app(served, options), **common)
    port = sock.getsockname()[1]
    shown = f"[{options.host}]" if ":" in options.host else options.host
    banner = (f"serving {served.info['name']} ({served.info['backbone']}, {len(served.classes)} classes, "
              f"{served.info['engine']}) at "
              f"http://{shown}:{port}/  (API docs: /docs; {'token required' if options.token else 'no token'}"
              f"{f'; {options.workers} workers' if options.workers > 1 else ''}; Ctrl-C stops)")
    if options.workers > 1:
        print(banner, file=sys.stderr, flush=True)
        # older uvicorn releases take the target; newer ones build it from the config
        target = {"target": uvicorn.Server(config).run} if "target" in inspect.signature(Multiprocess).parameters else {}
        Multiprocess(config, sockets=[sock], **target).run()
    else:
        BannerServer(config, banner).run(sockets=[sock])


class BannerServer(uvicorn.Server):
    """uvicorn's server, saying where it listens once it does (not before: a client that reads
    the line may connect at once)."""

    def __init__(self, config: uvicorn.Config, banner: str):
        super().__init__(config)
        self.banner = banner

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            print(self.banner, file=sys.stderr, flush=True)


def from_environment():
    """The application of one worker process: the model and options `serve` put in the
    environment. Also for your own ASGI server: set TRANSFERKIT_SERVE='{"model": "runs/x"}' and
    run ``uvicorn --factory transferkit.serving.server:from_environment``."""
    from .app import create_app

    try:
        values = json.loads(os.environ[ENV])
        model = values.pop("model")
    except (KeyError, ValueError) as exc:
        raise UserError(f"${ENV} must hold JSON with the model's path, e.g. {{\"model\": \"runs/x\"}} ({exc})") from None
    options = ServeOptions(**values)
    return create_app(ServedModel(model, options.device, options.precision, options.tta,
                                  worker_threads(options.workers), options.engine, LOG.info), options)


def bind_port(host: str, port: int):
    """The listening socket, bound here (uvicorn's own binding announces "running" before the
    application has started); a port in use or not allowed is one line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # proto set: asyncio then turns on TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1" if host == "localhost" else host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def _log_config() -> dict:
    """uvicorn's logging, plus our one line per request on the same handler."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["transferkit.serve"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config
