"""ASGI middleware around the application: a cap on the request body (413 past it, counted as
the body streams in, whatever Content-Length claims) and one log line per request (no image
bytes, no token)."""

from __future__ import annotations

import json
import logging
import time

from ..files import shown

LOG = logging.getLogger("transferkit.serve")


class _TooLarge(Exception):
    pass


# Lingering close, as nginx does: before a 413, what the client is still sending is read and
# dropped (up to these bounds), so that a client that sends its whole body before reading the
# answer (urllib, requests, curl) gets the 413 instead of a connection reset.
DRAIN_MAX_BYTES = 256 * 2**20
DRAIN_MAX_S = 10.0


async def _drain(receive, more: bool) -> None:
    """Read and drop the rest of the request body, within DRAIN_MAX_BYTES and DRAIN_MAX_S."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline, drained = loop.time() + DRAIN_MAX_S, 0
    while more and drained < DRAIN_MAX_BYTES:
        try:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
        except (asyncio.TimeoutError, OSError):
            return
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        more = message.get("more_body", False)


async def _send_json(send, status: int, body: dict, headers: list | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close"), *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413: at once when Content-Length says so,
    else as soon as the streamed body passes the cap (nothing past it is read)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body over the server's limit of {self.max_bytes / 1e6:g} MB (--max-body-mb)"
        detail = {"error": message} if scope["path"].startswith("/v2/") else {"detail": message}  # the protocol's form
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _drain(receive, True)
            return await _send_json(send, 413, detail)
        received, started, more = 0, False, True

        async def limited_receive():
            nonlocal received, more
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                more = message.get("more_body", False)
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except _TooLarge:
            if not started:
                await _drain(receive, more)
                await _send_json(send, 413, detail)


class RequestLog:
    """One INFO line per HTTP request: client, method, path, status, images, body bytes, time."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status, size = time.perf_counter(), None, 0

        async def counting_receive():
            nonlocal size
            message = await receive()
            size += len(message.get("body", b""))
            return message

        async def status_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, counting_receive, status_send)
        finally:
            client = scope.get("client") or ("-", 0)
            images = scope.get("state", {}).get("images")
            # the path as the client sent it, control characters escaped: a CR/LF in it forges no log line
            LOG.info("%s:%s %s %s %s%s %dB %.1fms", client[0], client[1], shown(scope["method"]), shown(scope["path"]),
                     status or "no response (client gone)",
                     f" {images} image(s)" if images is not None else "", size,
                     (time.perf_counter() - started) * 1000)
