"""What the studio's routes share: the datasets it has open, the runs folder, the work queue and
the servers it started (`Studio`, one per app), and the small helpers their answers use."""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path

from fastapi import HTTPException, Request

from ..config import StudioOptions
from ..data import fixes as fixing
from ..errors import UserError
from ..files import Record, read_yaml_object
from . import labelling
from .datasets import Dataset
from .jobs import JobQueue, Servers

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


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


def current_studio(request: Request) -> Studio:
    """The app's `Studio`: what each route asks for (`Depends(current_studio)`)."""
    return request.app.state.studio


def fixable(view: dict, ds: Dataset | None, keys: tuple[str, ...]) -> dict:
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


def client_of(body: dict) -> str:
    """The page (a browser tab) a change comes from, as it names itself: its undo is its own."""
    client = body.get("client")
    return client[:64] if isinstance(client, str) else ""


def strategy_list() -> list[dict]:
    from ..training.strategies import STRATEGIES

    return [{"name": s.name, "summary": s.summary} for s in STRATEGIES]


def offered_models() -> list[str]:
    """The backbones the form offers: those whose ImageNet weights are on this machine (a
    package, a local file or the hub cache). The others would fail only after a queued wait;
    the CLI's --weights PATH trains them."""
    from ..models import backbones

    return [s.name for s in backbones.BACKBONES if s.imagenet is not None and s.imagenet.available()]
