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
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..config import StudioOptions, TrainConfig
from ..data import fixes as fixing
from ..errors import UserError
from ..files import Record, read_json_object, read_yaml_object
from ..training.options import resolve, validate
from . import labelling
from .datasets import Dataset, thumbnail
from .jobs import JobQueue, Servers, fresh_run

STATIC = Path(__file__).parent / "static"
COOKIE = "transferkit_studio"
CSRF_HEADER = "x-studio"
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                                           "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
# The options the page's training form offers besides strategy and model (each checked by TrainConfig),
# with the words the page shows them under.
FORM_LABELS = {"epochs": "Epochs", "batch_size": "Batch size", "lr": "Learning rate", "weight_decay": "Weight decay",
               "augment": "Augment", "mixup": "MixUp", "cutmix": "CutMix", "ema": "EMA decay",
               "class_weights": "Class weights", "balanced_sampler": "Balanced sampler", "seed": "Seed",
               "budget": "Budget", "image_size": "Image size", "unfreeze": "Unfrozen stages", "patience": "Patience",
               "track": "Tracking", "strategy": "Strategy", "model": "Backbone"}
FORM_OPTIONS = tuple(k for k in FORM_LABELS if k not in ("strategy", "model"))


class StudioJSON(JSONResponse):
    """JSON with every character outside ASCII escaped: a file name that is not UTF-8 (held as
    surrogates) reaches the page as the escape it is, instead of failing the whole answer; the page
    sends it back the same way in a JSON body (a URL's query turns it into U+FFFD, which
    `Dataset.file` also finds)."""

    def render(self, content) -> bytes:
        import json

        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class FieldError(UserError):
    """A value of the page's form that cannot be used: the message in the page's words, and the
    field to mark."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class Studio:
    """What the routes share: the datasets, the runs folder, the work queue. One per app."""

    def __init__(self, data: list[str | Path], options: StudioOptions):
        from ..cache import Cache

        self.options = options
        self.runs = Path(options.runs_dir).expanduser().absolute()
        self.thumbs = Cache(options.cache_dir).prepare().thumbnails()
        self.datasets: dict[str, Dataset] = {}
        for given in data:
            self.add(given)
        self.jobs = JobQueue()
        self.servers = Servers()
        self.labelling = labelling.Labelling(self.runs, options.cache_dir)
        self._explainer: tuple[tuple, object] | None = None  # (the run and its model.json's time, its predictor)
        self._explaining = threading.Lock()

    def heatmap(self, run_dir: Path, path: str) -> bytes:
        """The overlay JPEG of where `run_dir`'s model looks in the image at `path`, for its most
        probable class (`prediction.heatmaps`); the run's explainer is kept for the next image."""
        from ..errors import ImageDecodeError
        from ..evaluation.explained import explainer
        from ..prediction.heatmaps import OVERLAY_MAX_SIDE, encoded, of_image

        key = (str(run_dir), (run_dir / "model.json").stat().st_mtime_ns)
        with self._explaining:
            if self._explainer is None or self._explainer[0] != key:
                if self._explainer is not None:
                    self._explainer[1].close()
                    self._explainer = None
                self._explainer = (key, explainer(run_dir))
            predictor = self._explainer[1]
            _, _, maps, errors = predictor.explain([path])
            if errors:
                raise UserError(f"{path}: {errors[0]}")
            try:
                return encoded(*of_image(path, maps[0], predictor.sizes(), side=OVERLAY_MAX_SIDE))[1]
            except ImageDecodeError as exc:
                raise UserError(f"{path}: {exc.reason}") from None

    def close(self) -> None:
        if self._explainer is not None:
            self._explainer[1].close()
            self._explainer = None

    def add(self, given: str | Path) -> Dataset:
        """Open the dataset folder `given` (from the command line, or the page's "Open"): from now
        on its images are among the files the studio serves. A folder already open: that one."""
        root = Path(given).expanduser().absolute()
        if not root.is_dir():
            raise UserError(f"no such dataset folder: {given}")
        known = next((d for d in self.datasets.values() if d.root == root), None)
        if known is not None:
            return known
        base = re.sub(r"[^A-Za-z0-9_-]", "-", root.name)[:40] or "data"
        ident = base if base not in self.datasets else f"{base}-{len(self.datasets)}"
        digest = hashlib.sha256(str(root).encode()).hexdigest()[:8]
        self.datasets[ident] = Dataset(ident, root, self.runs / "fixes" / f"{base}-{digest}.fixes.csv", self.thumbs,
                                       self.options.label_delim)
        return self.datasets[ident]

    def dataset(self, ident: str) -> Dataset:
        if ident not in self.datasets:
            raise HTTPException(404, f"no dataset '{ident}' in this studio")
        return self.datasets[ident]

    def run_dir(self, name: str) -> Path:
        from ..runs import is_run

        folder = self.runs / name
        if not RUN_NAME.match(name) or not is_run(folder):
            raise HTTPException(404, f"no run '{name}' in {self.runs}")
        return folder

    def dataset_of(self, run_dir: Path) -> Dataset | None:
        """The dataset (of this studio) a run was trained on, if it is one of them (its config.yaml
        says which: read_run would also walk the folder for its size, on every click of a cell)."""
        data = (read_yaml_object(run_dir / "config.yaml") or Record()).text("data")
        return next((d for d in self.datasets.values() if data and Path(data) == d.root), None)

    def doctor_dir(self, ds: Dataset) -> Path:
        return self.runs / ".studio" / f"doctor-{ds.id}"


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
                  default_response_class=StudioJSON,
                  openapi_url=None)
    app.state.studio = studio
    auth = [Depends(_auth(options.token))]

    @app.middleware("http")
    async def guard(request: Request, call_next):
        problem = _refused(request, options)
        if problem:
            return StudioJSON({"detail": problem}, 403)
        return await call_next(request)

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        return StudioJSON({"detail": str(exc), "field": getattr(exc, "field", None)}, 400)

    @app.exception_handler(OSError)
    async def os_error(request: Request, exc: OSError):
        """A fault of the machine (a full or read-only disk, a folder gone): one line that says so."""
        import errno

        from ..errors import describe_os_error

        status = 507 if exc.errno in (errno.ENOSPC, errno.EDQUOT) else \
            403 if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else 500
        where = f"{exc.filename}: " if exc.filename else ""
        return StudioJSON({"detail": f"{where}{describe_os_error(exc)}", "field": None}, status)

    # -- the page ------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
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

    # -- datasets --------------------------------------------------------------------------------
    @app.get("/api/state", dependencies=auth)
    def state():
        return {"version": __version__, "runs_dir": str(studio.runs), "csrf_header": CSRF_HEADER,
                "datasets": [{"id": d.id, "name": d.name, "path": str(d.root)} for d in studio.datasets.values()],
                "strategies": _strategies(), "models": _models()}

    @app.post("/api/datasets", dependencies=auth)
    def open_dataset(body: dict = Body(...)):
        path = body.get("path")
        if not isinstance(path, str) or not path.strip():
            raise UserError("give the folder's path")
        ds = studio.add(path.strip())
        try:
            return ds.summary()  # a folder that is not a dataset is refused now, and not kept
        except UserError:
            studio.datasets.pop(ds.id, None)
            raise

    @app.get("/api/datasets/{ident}", dependencies=auth)
    def dataset(ident: str):
        return studio.dataset(ident).summary()

    @app.get("/api/datasets/{ident}/version", dependencies=auth)
    def version(ident: str):  # (polled by every open page: the counter alone, not the whole summary)
        return {"version": studio.dataset(ident).version}

    @app.post("/api/datasets/{ident}/refresh", dependencies=auth)
    def refresh(ident: str):
        ds = studio.dataset(ident)
        ds.load(refresh=True)
        return ds.summary()

    @app.get("/api/datasets/{ident}/images", dependencies=auth)
    def images(ident: str, cls: str | None = None, split: str | None = None, fixed: str | None = None,
               offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=500)):
        return studio.dataset(ident).page(cls, split, fixed, offset, limit)

    @app.get("/api/datasets/{ident}/thumb", dependencies=auth)
    def thumb(ident: str, path: str):
        return Response(studio.dataset(ident).thumbnail(path), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/datasets/{ident}/image", dependencies=auth)
    def image(ident: str, path: str):
        headers = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'"}
        file, kind = studio.dataset(ident).image_file(path)
        return FileResponse(file, media_type=kind, headers=headers)

    @app.get("/api/datasets/{ident}/fixes", dependencies=auth)
    def fixes(ident: str):
        ds = studio.dataset(ident)
        return {"file": str(ds.fixes_file), "fixes": ds.fixes(), "command": _fixes_hint(ds)}

    @app.post("/api/datasets/{ident}/fixes", dependencies=auth)
    def decide(ident: str, body: dict = Body(...)):
        ds = studio.dataset(ident)
        if not isinstance(body.get("path"), str) or not isinstance(body.get("action"), str):
            raise UserError("give the image's path and an action (exclude, relabel, keep, clear)")
        return {"item": ds.decide(body["path"], body["action"], str(body.get("label") or ""),
                                  str(body.get("reason") or ""), _client(body)), "summary": ds.summary()}

    @app.post("/api/datasets/{ident}/undo", dependencies=auth)
    def undo(ident: str, body: dict | None = Body(None)):
        ds = studio.dataset(ident)
        items = ds.undo(_client(body or {}))
        return {"item": items[0] if items else None, "items": items, "summary": ds.summary()}

    @app.post("/api/datasets/{ident}/doctor", dependencies=auth)
    def doctor(ident: str):
        ds = studio.dataset(ident)
        out = studio.doctor_dir(ds)
        out.mkdir(parents=True, exist_ok=True)
        argv = ["doctor", str(ds.root), "--out", str(out), "--write-exclude", str(out / "exclude.txt"),
                *(["--label-delim", ds.label_delim] if ds.label_delim else [])]
        if options.cache_dir:
            argv += ["--cache-dir", options.cache_dir]
        return studio.jobs.submit("doctor", argv, f"doctor {ds.name}").to_dict()

    @app.get("/api/datasets/{ident}/findings", dependencies=auth)
    def findings(ident: str):
        ds = studio.dataset(ident)
        found = ds.findings(studio.doctor_dir(ds) / "doctor.json")
        return {"found": found, "exclude_list": (studio.doctor_dir(ds) / "exclude.txt").is_file()}

    @app.get("/api/datasets/{ident}/map", dependencies=auth)
    def feature_map(ident: str):
        from .datasets import feature_map

        ds = studio.dataset(ident)
        return {"map": feature_map(ds, studio.doctor_dir(ds))}

    @app.get("/api/datasets/{ident}/similar", dependencies=auth)
    def similar(ident: str, path: str):
        from .datasets import similar

        ds = studio.dataset(ident)
        return similar(ds, studio.doctor_dir(ds), path)

    @app.post("/api/datasets/{ident}/seed", dependencies=auth)
    def seed(ident: str, body: dict | None = Body(None)):
        ds = studio.dataset(ident)
        listed = studio.doctor_dir(ds) / "exclude.txt"
        if not listed.is_file():
            raise UserError("run the doctor first: its list of images to leave out seeds the fixes")
        return {"added": ds.seed(listed, "doctor --write-exclude", _client(body or {})), "summary": ds.summary()}

    # -- training and the queue --------------------------------------------------------------------
    @app.post("/api/train", dependencies=auth)
    def train(body: dict = Body(...)):
        ds = studio.dataset(str(body.get("dataset", "")))
        taken = {(j.result or {}).get("run") for j in studio.jobs.jobs}
        argv, cfg = train_command(ds, body, studio.runs, options.cache_dir, taken)
        ds.load()
        job = studio.jobs.submit("train", argv, f"train {ds.name} ({cfg.strategy}, {cfg.model})",
                                 epochs=_epochs(cfg), train_images=ds.summary_counts("train"))
        job.result = {"run": Path(argv[argv.index("--out") + 1]).name}
        return job.to_dict()

    @app.get("/api/jobs", dependencies=auth)
    def jobs():
        return [j.to_dict() for j in studio.jobs.jobs]

    @app.get("/api/jobs/{job_id}", dependencies=auth)
    def job(job_id: int):
        found = studio.jobs.get(job_id)
        if found is None:
            raise HTTPException(404, f"no job {job_id}")
        return found.to_dict()

    @app.post("/api/jobs/{job_id}/stop", dependencies=auth)
    def stop(job_id: int):
        found = studio.jobs.get(job_id)
        if found is None:
            raise HTTPException(404, f"no job {job_id}")
        studio.jobs.stop(found)
        return found.to_dict()

    # -- runs --------------------------------------------------------------------------------------
    @app.get("/api/runs", dependencies=auth)
    def runs_list():
        from .. import runs

        if not studio.runs.is_dir():
            return []
        return [r.to_dict() for r in runs.list_runs(studio.runs, "when")]

    @app.get("/api/runs/{name}", dependencies=auth)
    def run(name: str):
        from .views import run_view

        folder = studio.run_dir(name)
        return _fixable(run_view(folder), studio.dataset_of(folder), ("top_losses", "unusual"))

    @app.get("/api/runs/{name}/cell", dependencies=auth)
    def cell(name: str, actual: str, predicted: str):
        from .views import predictions

        folder = studio.run_dir(name)
        rows = predictions(folder)
        found = [{"i": i, **r} for i, r in enumerate(rows) if r["actual"] == actual and r["predicted"] == predicted]
        return _fixable({"items": found}, studio.dataset_of(folder), ("items",))

    @app.get("/api/runs/{name}/thumb", dependencies=auth)
    def run_thumb(name: str, i: int = Query(..., ge=0)):
        from .views import predictions

        rows = predictions(studio.run_dir(name))
        if i >= len(rows):
            raise HTTPException(404, f"the run {name} has {len(rows)} validation images")
        return Response(thumbnail(Path(rows[i]["path"]), studio.thumbs, Path(rows[i]["path"]).name),
                        media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/runs/{name}/heatmap", dependencies=auth)
    def run_heatmap(name: str, i: int = Query(..., ge=0)):
        """Where the run's model looks in its val image `i` (an overlay JPEG)."""
        from .views import predictions

        folder = studio.run_dir(name)
        rows = predictions(folder)
        if i >= len(rows):
            raise HTTPException(404, f"the run {name} has {len(rows)} validation images")
        return Response(studio.heatmap(folder, rows[i]["path"]), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/api/runs/{name}/remove", dependencies=auth)
    def remove(name: str):
        from ..runs import remove_run

        folder = studio.run_dir(name)
        busy = [j for j in studio.jobs.jobs if j.status in ("queued", "running") and (j.result or {}).get("run") == name
                or j.status in ("queued", "running") and str(folder) in j.argv]
        if busy:
            raise UserError(f"{name} is in use by job {busy[0].id} ({busy[0].status}): stop it first")
        studio.servers.stop(name)
        left = remove_run(folder)
        return {"removed": not left, "left": left}

    @app.get("/api/runs/{name}/report", dependencies=auth)
    def report(name: str):
        page = studio.run_dir(name) / "report.html"
        if not page.is_file():
            raise HTTPException(404, f"the run {name} has no report.html")
        # the run's own self-contained page, sandboxed: no script, no access to the studio's origin
        return FileResponse(page, headers={"X-Content-Type-Options": "nosniff", "Content-Security-Policy":
                                           "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"})

    @app.get("/api/compare", dependencies=auth)
    def compare(a: str, b: str):
        from .views import compare_view

        first = studio.run_dir(a)
        return _fixable(compare_view(first, studio.run_dir(b)), studio.dataset_of(first),
                        ("only_a_right", "only_b_right"))

    @app.post("/api/runs/{name}/export", dependencies=auth)
    def export(name: str, body: dict | None = Body(None)):
        from ..exporting.registry import parse_formats

        folder = studio.run_dir(name)
        formats = str((body or {}).get("formats") or "all")
        parse_formats(formats)  # a bad list is a 400 now, not a failed job
        return studio.jobs.submit("export", ["export", str(folder), "--format", formats],
                                  f"export {name}").to_dict()

    @app.get("/api/runs/{name}/export", dependencies=auth)
    def exported(name: str):
        found = read_json_object(studio.run_dir(name) / "export" / "export.json")
        if found is None:
            raise HTTPException(404, f"the run {name} has not been exported")
        return found

    @app.get("/api/runs/{name}/serve", dependencies=auth)
    def serving(name: str):
        studio.run_dir(name)
        return {"url": studio.servers.url(name)}

    @app.post("/api/runs/{name}/serve", dependencies=auth)
    def serve(name: str):
        return {"url": studio.servers.start(name, studio.run_dir(name))}

    @app.post("/api/runs/{name}/serve/stop", dependencies=auth)
    def unserve(name: str):
        studio.run_dir(name)
        return {"stopped": studio.servers.stop(name)}

    app.include_router(labelling.router(studio, auth))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def train_command(ds: Dataset, body: dict, runs: Path, cache_dir: str | None,
                  taken: set | None = None) -> tuple[list[str], TrainConfig]:
    """The `transferkit train` command the page's form stands for (checked as the CLI checks it);
    its run folder a new one in `runs` (not one of the `taken` names either)."""
    values = {"data": str(ds.root), "label_delim": ds.label_delim, "strategy": body.get("strategy") or "linear",
              "model": body.get("model") or "efficientnet_lite0"}
    given = body.get("options") or {}
    if not isinstance(given, dict):
        raise UserError("options must be an object of option: value")
    unknown = sorted(set(given) - set(FORM_OPTIONS))
    if unknown:
        raise UserError(f"the page does not set {', '.join(unknown)}; use the CLI")
    # (0 is a value, not "unset": `v in (None, "", False)` took epochs 0 for an empty field)
    values.update({k: form_value(k, v) for k, v in given.items() if not (v is None or v is False or v == "")})
    values["out"] = str(fresh_run(runs, f"{time.strftime('%Y%m%d-%H%M%S')}-{ds.id}-{values['strategy']}", taken))
    if ds.fixes_file.is_file() and ds.fixes():
        values["fixes"] = str(ds.fixes_file)
    try:
        cfg = TrainConfig.from_mapping(values)
        validate(cfg)
    except FieldError:
        raise
    except UserError as exc:  # said with the CLI's flags: in the page's words, on the field it is about
        raise _in_page_words(str(exc)) from None
    if cfg.model not in _models():
        raise FieldError("model", f"Backbone {cfg.model} has no ImageNet weights on this machine; choose one the list "
                                  "offers, or train it with the CLI's --weights PATH")
    argv = ["train", str(ds.root), "--out", values["out"], "--strategy", cfg.strategy, "--model", cfg.model]
    if cfg.fixes:
        argv += ["--fixes", cfg.fixes]
    if ds.label_delim:
        argv += ["--label-delim", ds.label_delim]
    defaults = TrainConfig()
    for key in FORM_OPTIONS:
        value = getattr(cfg, key)
        if value in (None, False) or value == getattr(defaults, key) and key != "seed":
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif key == "track":
            for tracker in str(value).split(","):
                argv += [flag, tracker]
        else:
            argv += [flag, str(value)]
    if cache_dir:
        argv += ["--cache-dir", cache_dir]
    return argv, cfg


def form_value(key: str, value):
    """A value of the page's form as the option takes it: text typed into a number field is
    read as a number here, and what is not one is refused on its field (never dropped)."""
    from dataclasses import fields

    from ..config import field_type

    declared = next(field_type(f) for f in fields(TrainConfig) if f.name == key)
    if not isinstance(value, str) or declared in ("str", "bool"):
        return value
    text = value.strip()
    try:
        number = int(text) if declared == "int" else float(text)
    except ValueError:
        kind = "a whole number" if declared == "int" else "a number"
        raise FieldError(key, f"{FORM_LABELS[key]}: '{text[:40]}' is not {kind}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise FieldError(key, f"{FORM_LABELS[key]}: give a finite number")
    return number


def _in_page_words(message: str) -> UserError:
    """A TrainConfig error about a form option, with the field's label for its flag."""
    from ..config import flag

    for key, label in FORM_LABELS.items():
        for said in (flag(key), f"option '{key}'"):
            if said in message:
                return FieldError(key, message.replace(said, label, 1))
    return UserError(message)


def _fixable(view: dict, ds: Dataset | None, keys: tuple[str, ...]) -> dict:
    """`view` with the dataset's id and, on each image of `keys`, its path inside that dataset and
    its fix: the page can then exclude or relabel it from the run's view too."""
    view["dataset"] = ds.id if ds is not None else None
    if ds is None:
        return view
    ds.load()
    for key in keys:
        for item in view.get(key) or []:
            try:
                rel = fixing.relative(item["path"], ds.root)
            except UserError:
                continue
            if rel in ds._index:
                item["rel"], item["fix"] = rel, ds.item(rel)["fix"]
    return view


def _client(body: dict) -> str:
    """The page (a browser tab) a change comes from, as it names itself: its undo is its own."""
    client = body.get("client")
    return client[:64] if isinstance(client, str) else ""


def _epochs(cfg: TrainConfig) -> int | None:
    try:
        return resolve(cfg).epochs
    except UserError:
        return None


def _fixes_hint(ds: Dataset) -> str:
    return f"transferkit train {ds.root} --fixes {ds.fixes_file}"


def _strategies() -> list[dict]:
    from ..training.strategies import STRATEGIES

    return [{"name": s.name, "summary": s.summary} for s in STRATEGIES]


def _models() -> list[str]:
    """The backbones the form offers: those whose ImageNet weights are on this machine (a
    package, a local file or the hub cache). The others would fail only after a queued wait;
    the CLI's --weights PATH trains them."""
    from ..models import backbones

    return [s.name for s in backbones.BACKBONES if s.imagenet is not None and s.imagenet.available()]


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
