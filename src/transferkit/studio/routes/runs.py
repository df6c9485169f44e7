"""The studio's run routes: the runs under --runs, one run's view, its confusion cells, images and
heatmaps, report, export, serving and removal, and two runs compared."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Body, Depends, HTTPException, Query
from fastapi.responses import FileResponse, Response

from ...errors import UserError
from ...files import read_json_object
from ..datasets import thumbnail
from ..state import Studio, current_studio, fixable


router = APIRouter()


@router.get("/api/runs")
def runs_list(studio: Studio = Depends(current_studio)):
    from ... import runs

    if not studio.runs.is_dir():
        return []
    return [r.to_dict() for r in runs.list_runs(studio.runs, "when")]


@router.get("/api/runs/{name}")
def run(name: str, studio: Studio = Depends(current_studio)):
    from ..views import run_view

    folder = studio.run_dir(name)
    return fixable(run_view(folder), studio.dataset_of(folder), ("top_losses", "unusual"))


@router.get("/api/runs/{name}/cell")
def cell(name: str, actual: str, predicted: str, studio: Studio = Depends(current_studio)):
    from ..views import predictions

    folder = studio.run_dir(name)
    rows = predictions(folder)
    found = [{"i": i, **r} for i, r in enumerate(rows) if r["actual"] == actual and r["predicted"] == predicted]
    return fixable({"items": found}, studio.dataset_of(folder), ("items",))


def val_image(name: str, i: int = Query(..., ge=0), studio: Studio = Depends(current_studio)) -> tuple[Path, str]:
    """(the run's folder, the path of its val image `i`, as predictions.csv gives it: a 404 past its last)."""
    from ..views import predictions

    folder = studio.run_dir(name)
    rows = predictions(folder)
    if i >= len(rows):
        raise HTTPException(404, f"the run {name} has {len(rows)} validation images")
    return folder, rows[i]["path"]


@router.get("/api/runs/{name}/thumb")
def run_thumb(image: tuple[Path, str] = Depends(val_image), studio: Studio = Depends(current_studio)):
    path = Path(image[1])
    return Response(thumbnail(path, studio.thumbs, path.name),
                    media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/api/runs/{name}/heatmap")
def run_heatmap(image: tuple[Path, str] = Depends(val_image), studio: Studio = Depends(current_studio)):
    """Where the run's model looks in its val image `i` (an overlay JPEG)."""
    folder, path = image
    return Response(studio.heatmap(folder, path), media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=3600"})


@router.post("/api/runs/{name}/remove")
def remove(name: str, studio: Studio = Depends(current_studio)):
    from ...runs import remove_run

    folder = studio.run_dir(name)
    busy = [j for j in studio.jobs.jobs if j.status in ("queued", "running") and (j.result or {}).get("run") == name
            or j.status in ("queued", "running") and str(folder) in j.argv]
    if busy:
        raise UserError(f"{name} is in use by job {busy[0].id} ({busy[0].status}): stop it first")
    studio.servers.stop(name)
    left = remove_run(folder)
    return {"removed": not left, "left": left}


@router.get("/api/runs/{name}/report")
def report(name: str, studio: Studio = Depends(current_studio)):
    page = studio.run_dir(name) / "report.html"
    if not page.is_file():
        raise HTTPException(404, f"the run {name} has no report.html")
    # the run's own self-contained page, sandboxed: no script, no access to the studio's origin
    return FileResponse(page, headers={"X-Content-Type-Options": "nosniff", "Content-Security-Policy":
                                       "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"})


@router.get("/api/compare")
def compare(a: str, b: str, studio: Studio = Depends(current_studio)):
    from ..views import compare_view

    first = studio.run_dir(a)
    return fixable(compare_view(first, studio.run_dir(b)), studio.dataset_of(first),
                    ("only_a_right", "only_b_right"))


@router.post("/api/runs/{name}/export")
def export(name: str, body: dict | None = Body(None), studio: Studio = Depends(current_studio)):
    from ...exporting.registry import parse_formats

    folder = studio.run_dir(name)
    formats = str((body or {}).get("formats") or "all")
    parse_formats(formats)  # a bad list is a 400 now, not a failed job
    return studio.jobs.submit("export", ["export", str(folder), "--format", formats],
                              f"export {name}").to_dict()


@router.get("/api/runs/{name}/export")
def exported(name: str, studio: Studio = Depends(current_studio)):
    found = read_json_object(studio.run_dir(name) / "export" / "export.json")
    if found is None:
        raise HTTPException(404, f"the run {name} has not been exported")
    return found


@router.get("/api/runs/{name}/serve")
def serving(name: str, studio: Studio = Depends(current_studio)):
    studio.run_dir(name)
    return {"url": studio.servers.url(name)}


@router.post("/api/runs/{name}/serve")
def serve(name: str, studio: Studio = Depends(current_studio)):
    return {"url": studio.servers.start(name, studio.run_dir(name))}


@router.post("/api/runs/{name}/serve/stop")
def unserve(name: str, studio: Studio = Depends(current_studio)):
    studio.run_dir(name)
    return {"stopped": studio.servers.stop(name)}


