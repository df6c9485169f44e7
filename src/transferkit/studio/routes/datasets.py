"""The studio's dataset routes (/api/datasets): open a folder, its images and thumbnails, the
fixes decided on it (with undo), the doctor run on it and its findings, map and neighbours."""

from __future__ import annotations

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import FileResponse, Response

from ...errors import UserError
from ..datasets import Dataset
from ..state import Studio, client_of, current_studio


router = APIRouter()


@router.post("/api/datasets")
def open_dataset(body: dict = Body(...), studio: Studio = Depends(current_studio)):
    path = body.get("path")
    if not isinstance(path, str) or not path.strip():
        raise UserError("give the folder's path")
    ds = studio.add(path.strip())
    try:
        return ds.summary()  # a folder that is not a dataset is refused now, and not kept
    except UserError:
        studio.datasets.pop(ds.id, None)
        raise


@router.get("/api/datasets/{ident}")
def dataset(ident: str, studio: Studio = Depends(current_studio)):
    return studio.dataset(ident).summary()


@router.get("/api/datasets/{ident}/version")
def version(ident: str, studio: Studio = Depends(current_studio)):
    # (polled by every open page: the counter alone, not the whole summary)
    return {"version": studio.dataset(ident).version}


@router.post("/api/datasets/{ident}/refresh")
def refresh(ident: str, studio: Studio = Depends(current_studio)):
    ds = studio.dataset(ident)
    ds.load(refresh=True)
    return ds.summary()


@router.get("/api/datasets/{ident}/images")
def images(ident: str, cls: str | None = None, split: str | None = None, fixed: str | None = None,
           offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=500), studio: Studio = Depends(current_studio)):
    return studio.dataset(ident).page(cls, split, fixed, offset, limit)


@router.get("/api/datasets/{ident}/thumb")
def thumb(ident: str, path: str, studio: Studio = Depends(current_studio)):
    return Response(studio.dataset(ident).thumbnail(path), media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=3600"})


@router.get("/api/datasets/{ident}/image")
def image(ident: str, path: str, studio: Studio = Depends(current_studio)):
    headers = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'"}
    file, kind = studio.dataset(ident).image_file(path)
    return FileResponse(file, media_type=kind, headers=headers)


@router.get("/api/datasets/{ident}/fixes")
def fixes(ident: str, studio: Studio = Depends(current_studio)):
    ds = studio.dataset(ident)
    return {"file": str(ds.fixes_file), "fixes": ds.fixes(), "command": _fixes_hint(ds)}


@router.post("/api/datasets/{ident}/fixes")
def decide(ident: str, body: dict = Body(...), studio: Studio = Depends(current_studio)):
    ds = studio.dataset(ident)
    if not isinstance(body.get("path"), str) or not isinstance(body.get("action"), str):
        raise UserError("give the image's path and an action (exclude, relabel, keep, clear)")
    return {"item": ds.decide(body["path"], body["action"], str(body.get("label") or ""),
                              str(body.get("reason") or ""), client_of(body)), "summary": ds.summary()}


@router.post("/api/datasets/{ident}/undo")
def undo(ident: str, body: dict | None = Body(None), studio: Studio = Depends(current_studio)):
    ds = studio.dataset(ident)
    items = ds.undo(client_of(body or {}))
    return {"item": items[0] if items else None, "items": items, "summary": ds.summary()}


@router.post("/api/datasets/{ident}/doctor")
def doctor(ident: str, studio: Studio = Depends(current_studio)):
    ds = studio.dataset(ident)
    out = studio.doctor_dir(ds)
    out.mkdir(parents=True, exist_ok=True)
    argv = ["doctor", str(ds.root), "--out", str(out), "--write-exclude", str(out / "exclude.txt"),
            *(["--label-delim", ds.label_delim] if ds.label_delim else [])]
    if studio.options.cache_dir:
        argv += ["--cache-dir", studio.options.cache_dir]
    return studio.jobs.submit("doctor", argv, f"doctor {ds.name}").to_dict()


@router.get("/api/datasets/{ident}/findings")
def findings(ident: str, studio: Studio = Depends(current_studio)):
    ds = studio.dataset(ident)
    found = ds.findings(studio.doctor_dir(ds) / "doctor.json")
    return {"found": found, "exclude_list": (studio.doctor_dir(ds) / "exclude.txt").is_file()}


@router.get("/api/datasets/{ident}/map")
def feature_map(ident: str, studio: Studio = Depends(current_studio)):
    from ..datasets import feature_map

    ds = studio.dataset(ident)
    return {"map": feature_map(ds, studio.doctor_dir(ds))}


@router.get("/api/datasets/{ident}/similar")
def similar(ident: str, path: str, studio: Studio = Depends(current_studio)):
    from ..datasets import similar

    ds = studio.dataset(ident)
    return similar(ds, studio.doctor_dir(ds), path)


@router.post("/api/datasets/{ident}/seed")
def seed(ident: str, body: dict | None = Body(None), studio: Studio = Depends(current_studio)):
    ds = studio.dataset(ident)
    listed = studio.doctor_dir(ds) / "exclude.txt"
    if not listed.is_file():
        raise UserError("run the doctor first: its list of images to leave out seeds the fixes")
    return {"added": ds.seed(listed, "doctor --write-exclude", client_of(body or {})), "summary": ds.summary()}


def _fixes_hint(ds: Dataset) -> str:
    return f"transferkit train {ds.root} --fixes {ds.fixes_file}"
