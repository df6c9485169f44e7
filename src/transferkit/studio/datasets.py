"""A dataset as the studio shows it: its images (discovered once, refreshed on demand), paged and
filtered, their thumbnails (made on first view, cached on disk), and the fixes decided about them
(`data.fixes`, in a sidecar file outside DATA, with an undo history). The only files a client can
reach are the images this dataset's discovery found: asked for by their path relative to DATA,
never by a path the client makes up."""

from __future__ import annotations

import hashlib
import io
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..data import fixes as fixing
from ..data.discover import discover
from ..errors import UserError
from ..files import read_json_object

THUMB_SIZE = 160
PAGE_LIMIT = 500  # most images in one page


@dataclass
class Dataset:
    """One dataset the studio was given (`id`: its place in the command line, a URL-safe name)."""

    id: str
    root: Path
    fixes_file: Path
    thumbs: Path  # the thumbnail cache folder
    _split: object = None
    _index: dict = field(default_factory=dict)  # relative path -> (class index, "train" | "val")
    _fixes: dict = field(default_factory=dict)
    _undo: list = field(default_factory=list)  # (relative path, the fix before the change or None)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.root.name

    def load(self, refresh: bool = False) -> None:
        """Discover the images (once, or again with `refresh`) and read the fixes file."""
        with self._lock:
            if self._split is not None and not refresh:
                return
            split = discover(self.root)
            index = {}
            for role, samples in (("train", split.train), ("val", split.val)):
                for s in samples:
                    index[fixing.relative(s.path, self.root)] = (s.label, role)
            self._split, self._index = split, index
            self._fixes = fixing.read_fixes(self.fixes_file, self.root) if self.fixes_file.is_file() else {}

    @property
    def classes(self) -> list[str]:
        self.load()
        return self._split.classes

    def summary(self) -> dict:
        """Classes with their images per split, before and after the fixes; the fixes' counts."""
        self.load()
        classes = self._split.classes
        counts = {c: {"train": 0, "val": 0, "train_fixed": 0, "val_fixed": 0} for c in classes}
        for rel, (label, role) in self._index.items():
            counts[classes[label]][role] += 1
            fix = self._fixes.get(rel)
            if fix is None:
                counts[classes[label]][role + "_fixed"] += 1
            elif fix.action == "relabel" and fix.label in counts:
                counts[fix.label][role + "_fixed"] += 1
        actions = [f.action for rel, f in self._fixes.items() if rel in self._index]
        return {"id": self.id, "name": self.name, "path": str(self.root), "classes": classes,
                "counts": counts, "images": len(self._index), "val_source": self._split.val_source,
                "unreadable": [{"path": self._shown(d["path"]), "reason": d["reason"]} for d in self._split.skipped],
                "fixes_file": str(self.fixes_file), "fixes": {"exclude": actions.count("exclude"),
                                                              "relabel": actions.count("relabel")},
                "can_undo": bool(self._undo)}

    def summary_counts(self, role: str) -> int:
        """Images of `role` (train | val) that training would use (the fixes applied)."""
        self.load()
        return sum(1 for rel, (_, r) in self._index.items()
                   if r == role and not (rel in self._fixes and self._fixes[rel].action == "exclude"))

    def page(self, cls: str | None = None, split: str | None = None, fixed: str | None = None, offset: int = 0,
             limit: int = 100) -> dict:
        """A page of images: those of class `cls` (None: all), split `split`, and `fixed` (None:
        all; "exclude", "relabel", "any", "none"), in path order."""
        self.load()
        classes = self._split.classes
        if cls is not None and cls not in classes:
            raise UserError(f"unknown class '{cls}'")
        if split not in (None, "train", "val"):
            raise UserError("split must be train or val")
        if fixed not in (None, "exclude", "relabel", "any", "none"):
            raise UserError("fixed must be exclude, relabel, any or none")
        limit = max(1, min(PAGE_LIMIT, limit))
        chosen = []
        for rel, (label, role) in self._index.items():
            fix = self._fixes.get(rel)
            if (cls is not None and classes[label] != cls) or (split is not None and role != split):
                continue
            if fixed == "none" and fix is not None or fixed == "any" and fix is None or \
                    fixed in ("exclude", "relabel") and (fix is None or fix.action != fixed):
                continue
            chosen.append(rel)
        chosen.sort()
        items = [self.item(rel) for rel in chosen[offset:offset + limit]]
        return {"total": len(chosen), "offset": offset, "limit": limit, "items": items}

    def item(self, rel: str) -> dict:
        label, role = self._index[rel]
        fix = self._fixes.get(rel)
        return {"path": rel, "label": self._split.classes[label], "split": role,
                "fix": fix.to_dict() if fix is not None else None}

    def file(self, rel: str) -> Path:
        """The image file at `rel`, if it is one of this dataset's images (else a UserError)."""
        self.load()
        if rel not in self._index:
            raise UserError(f"{rel} is not an image of the dataset {self.name}")
        return self.root / rel

    def thumbnail(self, rel: str) -> bytes:
        return thumbnail(self.file(rel), self.thumbs, rel)

    # -- fixes -------------------------------------------------------------------------------------
    def fixes(self) -> list[dict]:
        self.load()
        return [f.to_dict() for _, f in sorted(self._fixes.items())]

    def decide(self, rel: str, action: str, label: str = "", reason: str = "") -> dict:
        """Record a decision about `rel`: exclude, relabel (to `label`) or clear; written to the
        fixes file at once. Returns the image's item."""
        self.file(rel)
        if action not in (*fixing.ACTIONS, "clear"):
            raise UserError(f"action must be exclude, relabel or clear (got '{action}')")
        if action == "relabel" and label not in self._split.classes:
            raise UserError(f"'{label}' is not a class of {self.name} ({', '.join(self._split.classes)})")
        with self._lock:
            before = self._fixes.get(rel)
            if action == "clear":
                self._fixes.pop(rel, None)
            else:
                self._fixes[rel] = fixing.Fix(rel, action, label if action == "relabel" else "", reason[:500],
                                              fixing.now())
            self._undo.append((rel, before))
            self._save()
        return self.item(rel)

    def undo(self) -> dict | None:
        """Undo the last decision (of this session); returns the image's item, or None."""
        self.load()
        with self._lock:
            if not self._undo:
                return None
            rel, before = self._undo.pop()
            if before is None:
                self._fixes.pop(rel, None)
            else:
                self._fixes[rel] = before
            self._save()
        return self.item(rel)

    def seed(self, exclude_file: Path, reason: str) -> int:
        """Exclude the images an exclude list names (doctor --write-exclude) that have no decision
        yet; returns how many were added (one undo step each)."""
        self.load()
        added = 0
        with self._lock:
            for fix in fixing.from_exclude(exclude_file, self.root, reason):
                if fix.path in self._index and fix.path not in self._fixes:
                    self._fixes[fix.path] = fix
                    self._undo.append((fix.path, None))
                    added += 1
            self._save()
        return added

    def _save(self) -> None:
        self.fixes_file.parent.mkdir(parents=True, exist_ok=True)
        fixing.write_fixes(self.fixes_file, self._fixes, self.root)

    def _shown(self, path: str) -> str:
        try:
            return fixing.relative(path, self.root)
        except UserError:
            return path

    # -- the doctor's findings ------------------------------------------------------------------------
    def findings(self, doctor_json: Path) -> dict | None:
        """The doctor's report (doctor.json) grouped by kind, paths relative to DATA, each image
        with its current fix; None before the doctor ran."""
        report = read_json_object(doctor_json)
        if report is None:
            return None
        self.load()

        def image(d: dict) -> dict:
            rel = self._shown(d["path"])
            fix = self._fixes.get(rel)
            return {"path": rel, "label": d.get("label"), "split": d.get("split"), "known": rel in self._index,
                    "fix": fix.to_dict() if fix else None}

        def pairs(items):
            return [{"kind": p["kind"], "similarity": p["similarity"], "images": [image(p["a"]), image(p["b"])]}
                    for p in items]

        groups = {
            "exact copies": pairs(report.get("exact_duplicates", [])),
            "near copies": pairs(report.get("near_duplicates", [])),
            "same scene": pairs(report.get("same_scene", [])),
            "likely label errors": [{"kind": f"labelled {f['label']}, looks like {f['suggested']}",
                                     "suggested": f["suggested"], "score": f["score"], "images": [image(f)]}
                                    for f in report.get("label_issues", [])],
            "outliers": [{"kind": f"z {f['z']}", "images": [image(f)]} for f in report.get("outliers", [])],
        }
        for kind, items in (report.get("image_issues") or {}).items():
            groups[f"{kind} images"] = [{"kind": f.get("detail", kind), "images": [image(f)]} for f in items]
        return {"groups": {k: v for k, v in groups.items() if v}, "balance": report.get("balance"),
                "unreadable": report.get("unreadable", []), "images": report.get("images")}


def thumbnail(path: Path, thumbs: Path, shown: str) -> bytes:
    """A JPEG of the image at `path`, at most THUMB_SIZE px on its long side, made once per
    version of the file and kept in `thumbs`; `shown`: its name in an error."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise UserError(f"{shown} cannot be read: {exc.strerror or exc}") from None
    key = hashlib.sha256(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{THUMB_SIZE}".encode()).hexdigest()
    cached = thumbs / key[:2] / f"{key}.jpg"
    if cached.is_file():
        return cached.read_bytes()
    from PIL import Image, ImageOps

    from ..files import atomic_write

    try:
        with Image.open(path) as image:
            image.draft("RGB", (THUMB_SIZE * 2, THUMB_SIZE * 2))  # a JPEG decodes at a fraction of its size
            image = ImageOps.exif_transpose(image).convert("RGB")
            image.thumbnail((THUMB_SIZE, THUMB_SIZE))
            out = io.BytesIO()
            image.save(out, "JPEG", quality=85)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"{shown} cannot be shown: {exc}") from None
    atomic_write(cached, out.getvalue(), fsync=False)
    return out.getvalue()


def feature_map(ds: Dataset, doctor_dir: Path) -> dict | None:
    """The doctor's feature map of `ds` (doctor_map.json) as the page draws it: per image its
    path (relative), label, split, the out-of-fold prediction, its findings' kinds and x, y in
    [0, 1]; None before the doctor ran."""
    m = read_json_object(doctor_dir / "doctor_map.json")
    if m is None:
        return None
    found = ds.findings(doctor_dir / "doctor.json") or {"groups": {}}
    kinds: dict[str, str] = {}
    for kind, items in found["groups"].items():
        for f in items:
            for image in f["images"]:
                kinds.setdefault(image["path"], kind)
    classes, predicted = m.get("classes", []), m.get("predicted")
    points = []
    for i, (path, label, split, xy) in enumerate(zip(m["paths"], m["labels"], m["splits"], m["xy"])):
        rel = ds._shown(path)
        points.append({"path": rel, "label": classes[label], "split": split, "x": xy[0], "y": xy[1],
                       "predicted": classes[predicted[i]] if predicted else None, "finding": kinds.get(rel)})
    return {"classes": classes, "points": points}


def similar(ds: Dataset, doctor_dir: Path, rel: str) -> list[dict]:
    """The images nearest to `rel` on the features (the doctor's neighbours), nearest first."""
    ds.file(rel)
    m = read_json_object(doctor_dir / "doctor_map.json")
    if m is None:
        raise UserError("run the doctor first: it finds each image's nearest images")
    index = {ds._shown(p): i for i, p in enumerate(m["paths"])}
    if rel not in index or index[rel] >= len(m.get("neighbours", [])):
        raise UserError(f"the doctor has not seen {rel}: run it again")
    return [ds.item(ds._shown(m["paths"][j])) for j in m["neighbours"][index[rel]]
            if ds._shown(m["paths"][j]) in ds._index]
