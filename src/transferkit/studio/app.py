"""The studio's HTTP application (FastAPI, as `serve`): the page at `/` and its JSON API under
`/api`, over the Python API and the CLI's own commands (nothing is implemented twice).

Safety: it listens on loopback unless told otherwise (then a token is required, as `serve`);
the token reaches the page once through `/?token=...` and is kept in an HttpOnly, SameSite=Strict
cookie; a request that changes anything needs the header `X-Studio: 1` and, where the browser
says where it comes from (Origin, Sec-Fetch-Site), to come from the studio's own page: another
site the user has open can neither read the API (no CORS) nor post to it. On loopback, requests
must name a loopback Host (no DNS rebinding). Files are reached only as images of the datasets
it was given (by their path inside the dataset), of the runs in --runs (by their row in the
run's predictions.csv) or of a label queue (by their row in its suggestions, each inside the
folder the queue was opened on: `labelling`), and runs by their folder's name.

The routes live one module per resource (`routes/`, and the label queue's in `labelling`), over
the state they share (`state.Studio`); this module makes the app and keeps its door.
"""

from __future__ import annotations

import secrets
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..config import StudioOptions
from ..errors import UserError
from . import labelling
from .routes import datasets, jobs, runs
from .state import Studio, offered_models, strategy_list

STATIC = Path(__file__).parent / "static"
COOKIE = "transferkit_studio"
CSRF_HEADER = "x-studio"
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                                           "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


class StudioJSON(JSONResponse):
    """JSON with every character outside ASCII escaped: a file name that is not UTF-8 (held as
    surrogates) reaches the page as the escape it is, instead of failing the whole answer; the page
    sends it back the same way in a JSON body (a URL's query turns it into U+FFFD, which
    `Dataset.file` also finds)."""

    def render(self, content) -> bytes:
        import json

        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def create_studio(data: list[str | Path], options: StudioOptions | None = None) -> FastAPI:
    """The studio's ASGI application over the datasets `data` and the runs in `options.runs_dir`."""
    options = options or StudioOptions()
    studio = Studio(data, options)

    @asynccontextmanager
    async def lifespan(app):
        yield
        studio.jobs.close()
        studio.servers.close()
        studio.close()

    app = FastAPI(title="transferkit studio", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  default_response_class=StudioJSON, openapi_url=None)
    app.state.studio = studio
    auth = [Depends(_auth(options.token))]

    @app.middleware("http")
    async def guard(request: Request, call_next):
        problem = _refused(request, options)
        if problem:
            return StudioJSON({"detail": problem}, 403)
        return await call_next(request)

    app.add_exception_handler(UserError, _user_error)
    app.add_exception_handler(OSError, _os_error)
    app.add_api_route("/", _page(options), methods=["GET"], include_in_schema=False)

    @app.get("/api/state", dependencies=auth)
    def state():
        return {"version": __version__, "runs_dir": str(studio.runs), "csrf_header": CSRF_HEADER,
                "datasets": [{"id": d.id, "name": d.name, "path": str(d.root)} for d in studio.datasets.values()],
                "strategies": strategy_list(), "models": offered_models()}

    for routes in (datasets, jobs, runs):
        app.include_router(routes.router, dependencies=auth)
    app.include_router(labelling.router(studio, auth))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def _user_error(request: Request, exc: UserError):
    return StudioJSON({"detail": str(exc), "field": getattr(exc, "field", None)}, 400)


async def _os_error(request: Request, exc: OSError):
    """A fault of the machine (a full or read-only disk, a folder gone): one line that says so."""
    import errno

    from ..errors import describe_os_error

    status = 507 if exc.errno in (errno.ENOSPC, errno.EDQUOT) else \
        403 if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else 500
    where = f"{exc.filename}: " if exc.filename else ""
    return StudioJSON({"detail": f"{where}{describe_os_error(exc)}", "field": None}, status)


def _page(options: StudioOptions):
    """The page at `/`: `?token=` sets the cookie (then a redirect drops it from the address)."""
    async def page(request: Request, token: str | None = None):
        if options.token and token is not None:
            if not secrets.compare_digest(token.encode(), options.token.encode()):
                return HTMLResponse("<p>Wrong token.</p>", 401, headers=PAGE_HEADERS)
            response = RedirectResponse("/", 303)
            response.set_cookie(COOKIE, options.token, httponly=True, samesite="strict")
            return response
        if options.token and not _has_token(request, options.token):
            return HTMLResponse("<p>This studio needs its token: open the address <code>transferkit studio</code> "
                                "printed (it ends in <code>?token=...</code>).</p>", 401, headers=PAGE_HEADERS)
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    return page


def _has_token(request: Request, token: str) -> bool:
    given = request.cookies.get(COOKIE) or ""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        given = header[7:]
    return secrets.compare_digest(given.encode(), token.encode())


def _auth(token: str | None):
    async def check(request: Request) -> None:
        if token and not _has_token(request, token):
            raise HTTPException(401, "this studio needs its token")

    return check


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def _refused(request: Request, options: StudioOptions) -> str | None:
    """Why a request is refused before it reaches a route: a Host that is not the studio's own
    (on loopback: DNS rebinding), or a state-changing request that is not from its own page."""
    host = request.headers.get("host", "")
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    loopback = options.host in ("127.0.0.1", "localhost", "::1")
    if loopback and name not in LOOPBACK_HOSTS:
        return f"unexpected Host '{host}': the studio answers on {options.host} only"
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return None
    if request.headers.get(CSRF_HEADER) != "1":
        return "a request that changes something must come from the studio's page (X-Studio header)"
    origin = request.headers.get("origin")
    if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
        return f"a request from {origin} may not change anything here"
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return "a request from another site may not change anything here"
    return None
