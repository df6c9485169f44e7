"""A dataset as the studio shows it: its images (discovered once, refreshed on demand), paged and
filtered, their thumbnails (made on first view, cached on disk), and the fixes decided about them
(`data.fixes`, in a sidecar file outside DATA, with an undo history). The only files a client can
reach are the images this dataset's discovery found: asked for by their path relative to DATA,
never by a path the client makes up."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..data import fixes as fixing
from ..data.discover import discover
from ..doctor.kinds import KINDS
from ..errors import UserError
from ..files import Record, read_json_object, shown

THUMB_SIZE = 160
PAGE_LIMIT = 500  # most images in one page


@dataclass
class Dataset:
    """One dataset the studio was given (`id`: its place in the command line, a URL-safe name)."""

    id: str
    root: Path
    fixes_file: Path
    thumbs: Path  # the thumbnail cache folder
    label_delim: str | None = None  # splits its metadata.csv's label cells (studio --label-delim)
    _split: object = None
    _index: dict = field(default_factory=dict)  # relative path -> (class index, "train" | "val")
    _fixes: dict = field(default_factory=dict)
    # the undo steps: (the page that made it, [(relative path, the fix before or None), ...]); a
    # page undoes its own steps, never another tab's
    _undo: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _version: int = 0  # how many times the fixes changed in this session
    _shown_names: dict = field(default_factory=dict)  # a name not UTF-8, as a URL gives it -> its real name

    @property
    def version(self) -> int:
        """How many times the fixes changed in this session (a page that drew another is stale)."""
        return self._version

    @property
    def name(self) -> str:
        return self.root.name

    def load(self, refresh: bool = False) -> None:
        """Discover the images (once, or again with `refresh`) and read the fixes file."""
        with self._lock:
            if self._split is not None and not refresh:
                return
            # (a metadata.csv listing an image on several rows, or joining labels with --label-delim: multi-label)
            split = discover(self.root, label_delim=self.label_delim)
            index = {}  # rel -> (its classes (one, or a multi-label set), its split)
            for role, samples in (("train", split.train), ("val", split.val)):
                for s in samples:
                    index[fixing.relative(s.path, self.root)] = (s.labels if split.task.multi else (s.label,), role)
            self._split, self._index = split, index
            # a name that is not UTF-8 as a URL brings it back (its odd bytes as U+FFFD), where that
            # names one image alone
            odd = {}
            for rel in index:
                readable = rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                if readable != rel:
                    odd.setdefault(readable, []).append(rel)
            self._shown_names = {k: v[0] for k, v in odd.items() if len(v) == 1 and k not in index}
            self._fixes = fixing.read_fixes(self.fixes_file, self.root) if self.fixes_file.is_file() else {}

    @property
    def classes(self) -> list[str]:
        self.load()
        return self._split.classes

    @property
    def multi(self) -> bool:
        return self._split.task.multi

    def fixed_labels(self, rel: str) -> tuple[str, ...] | None:
        """The image's classes (names) once its fix is applied (as `train --fixes` applies it);
        None where it is excluded."""
        labels, _ = self._index[rel]
        names = tuple(self._split.classes[c] for c in labels)
        fix = self._fixes.get(rel)
        if fix is None or fix.action == "keep":
            return names
        if fix.action == "exclude":
            return None
        keep = fixing.fixed_set(set(names), fix.action, set(fixing.labels_of(fix)) if self.multi else {fix.label})
        return tuple(c for c in self._split.classes if c in keep)

    def summary(self) -> dict:
        """Classes with their images per split, before and after the fixes; the fixes' counts
        (multi-label: an image counts under each of its labels)."""
        self.load()
        classes = self._split.classes
        counts = {c: {"train": 0, "val": 0, "train_fixed": 0, "val_fixed": 0} for c in classes}
        for rel, (labels, role) in self._index.items():
            for c in labels:
                counts[classes[c]][role] += 1
            for name in self.fixed_labels(rel) or ():
                if name in counts:
                    counts[name][role + "_fixed"] += 1
        actions = [f.action for rel, f in self._fixes.items() if rel in self._index]
        return {"id": self.id, "name": self.name, "path": str(self.root), "classes": classes, "version": self.version,
                "task": self._split.task.kind,
                "counts": counts, "images": len(self._index), "val_source": self._split.val_source,
                "unreadable": [{"path": self._shown(d["path"]), "reason": d["reason"]} for d in self._split.skipped],
                "fixes_file": str(self.fixes_file), "fixes": {"exclude": actions.count("exclude"),
                                                              "relabel": actions.count("relabel")
                                                              + actions.count("add-label")
                                                              + actions.count("remove-label"),
                                                              "keep": actions.count("keep")},
                "can_undo": bool(self._undo), "undo_clients": sorted({c for c, _ in self._undo})}

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
        if fixed not in (None, *fixing.ACTIONS, "any", "none"):
            raise UserError("fixed must be exclude, relabel, keep, any or none")
        limit = max(1, min(PAGE_LIMIT, limit))
        chosen = []
        for rel, (labels, role) in self._index.items():
            fix = self._fixes.get(rel)
            if (cls is not None and classes.index(cls) not in labels) or (split is not None and role != split):
                continue
            if fixed == "none" and fix is not None or fixed == "any" and fix is None or \
                    fixed in fixing.ACTIONS and (fix is None or fix.action != fixed):
                continue
            chosen.append(rel)
        chosen.sort()
        items = [self.item(rel) for rel in chosen[offset:offset + limit]]
        return {"total": len(chosen), "offset": offset, "limit": limit, "items": items}

    def item(self, rel: str) -> dict:
        """One image: its path, label (multi-label: its labels joined, and `labels`, the list), split, fix."""
        labels, role = self._index[rel]
        fix = self._fixes.get(rel)
        names = [self._split.classes[c] for c in labels]
        out = {"path": rel, "label": "; ".join(names) if self.multi else names[0], "split": role,
               "fix": fix.to_dict() if fix is not None else None}
        if self.multi:
            out.update(labels=names, fixed_labels=list(self.fixed_labels(rel) or []))
        return out

    def file(self, rel: str) -> Path:
        """The image file at `rel`, if it is one of this dataset's images (else a UserError). A
        path whose symbolic links lead out of the dataset's folder is served only where the file
        it reaches is an image by its content: a link to any other file is never a way out."""
        self.load()
        rel = self._shown_names.get(rel, rel) if rel not in self._index else rel
        if rel not in self._index:
            raise UserError(f"{shown(rel)} is not an image of the dataset {self.name}")
        path = self.root / rel
        real, root = os.path.realpath(path), os.path.realpath(self.root)
        if os.path.commonpath([real, root]) != root and image_type(path) is None:
            raise UserError(f"{rel} links to a file outside the dataset that is not an image: not served")
        return path

    def image_file(self, rel: str) -> tuple[Path, str]:
        """The image file at `rel` (as `file`) and its type by its content (what the studio serves
        it as); one that is no image a browser shows is a UserError."""
        path = self.file(rel)
        kind = image_type(path)
        if kind is None:
            raise UserError(f"{shown(rel)} is not an image that a browser shows")
        return path, kind

    def thumbnail(self, rel: str) -> bytes:
        return thumbnail(self.file(rel), self.thumbs, rel)

    # -- fixes -------------------------------------------------------------------------------------
    def fixes(self) -> list[dict]:
        self.load()
        return [f.to_dict() for _, f in sorted(self._fixes.items())]

    def decide(self, rel: str, action: str, label: str = "", reason: str = "", client: str = "") -> dict:
        """Record a decision about `rel`: exclude, relabel (to `label`), keep or clear; on
        multi-label data also add-label and remove-label (`label`: one class, or several joined by
        `;`; relabel gives the whole set), an add or remove merged with the image's earlier fix into
        the set it makes; written to the fixes file at once; `client`: the page that made it (its
        undo). Returns the image's item."""
        self.file(rel)
        if action not in (*fixing.ACTIONS, "clear"):
            raise UserError(f"action must be {', '.join(fixing.ACTIONS)} or clear (got '{action}')")
        if action in fixing.MULTI_ACTIONS and not self.multi:
            raise UserError(f"{action} is for multi-label data: {self.name} has one label per image (relabel it)")
        named = fixing.split_labels(label) if self.multi else [label]
        unknown = [n for n in named if n not in self._split.classes]
        if action in ("relabel", *fixing.MULTI_ACTIONS) and (unknown or not named):
            raise UserError(f"'{unknown[0] if unknown else label}' is not a class of {self.name} "
                            f"({', '.join(self._split.classes)})")
        with self._lock:
            before = self._fixes.get(rel)
            if action == "clear":
                self._fixes.pop(rel, None)
            else:
                if action in fixing.MULTI_ACTIONS and before is not None and before.action in ("relabel", *fixing.MULTI_ACTIONS):
                    # one row per image: the two decisions become the set they make together
                    labels, _ = self._index[rel]
                    had = {self._split.classes[c] for c in labels}
                    now = fixing.fixed_set(set(self.fixed_labels(rel) or ()), action, set(named))
                    if now:
                        action, named = "relabel", [c for c in self._split.classes if c in now]
                    else:  # every label gone: what to remove from the image's own set
                        action, named = "remove-label", [c for c in self._split.classes if c in had]
                text = fixing.LABELS_SEP.join(named) if action in ("relabel", *fixing.MULTI_ACTIONS) else ""
                self._fixes[rel] = fixing.Fix(rel, action, text, fixing.one_line(reason), fixing.now())
            self._save([(rel, before)])
            self._undo.append((client, [(rel, before)]))
        return self.item(rel)

    def undo(self, client: str = "") -> list[dict]:
        """Undo the last step of the page `client` (this session's): one decision, or a whole
        seeding; returns the items it changed ([]: nothing to undo)."""
        self.load()
        with self._lock:
            at = next((i for i in range(len(self._undo) - 1, -1, -1) if self._undo[i][0] == client), None)
            if at is None:
                return []
            _, changes = self._undo[at]
            undone = [(rel, self._fixes.get(rel)) for rel, _ in changes]
            self._restore(reversed(changes))
            self._save(undone)
            self._undo.pop(at)
        return [self.item(rel) for rel, _ in changes if rel in self._index]

    def seed(self, exclude_file: Path, reason: str, client: str = "") -> int:
        """Exclude the images an exclude list names (doctor --write-exclude) that have no decision
        yet; returns how many were added (one undo step for all of them)."""
        self.load()
        changes = []
        with self._lock:
            for fix in fixing.from_exclude(exclude_file, self.root, reason):
                if fix.path in self._index and fix.path not in self._fixes:
                    self._fixes[fix.path] = fix
                    changes.append((fix.path, None))
            if changes:
                self._save(changes)
                self._undo.append((client, changes))
        return len(changes)

    def _save(self, changes: list) -> None:
        """Write the fixes file; where it cannot be written (a full or read-only disk), the
        `changes` just made ((path, the fix before)) are taken back and a UserError says why."""
        try:
            self.fixes_file.parent.mkdir(parents=True, exist_ok=True)
            fixing.write_fixes(self.fixes_file, self._fixes, self.root)
        except OSError as exc:
            self._restore(changes)
            raise UserError(f"the fixes file {self.fixes_file} cannot be written ({exc.strerror or exc}): "
                            "nothing was changed") from None
        self._version += 1  # (another tab sees the fixes changed and reads them again)

    def _restore(self, changes) -> None:
        for rel, before in changes:
            if before is None:
                self._fixes.pop(rel, None)
            else:
                self._fixes[rel] = before

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

        def image(d: Record) -> dict:
            rel = self._shown(d.text("path", ""))
            fix = self._fixes.get(rel)
            return {"path": rel, "label": d.text("label"), "split": d.text("split"), "known": rel in self._index,
                    "fix": fix.to_dict() if fix else None}

        groups: dict[str, list[dict]] = {}
        for kind in KINDS:
            groups.update(kind.studio(report, image))
        return {"groups": {k: v for k, v in groups.items() if v}, "balance": report.record("balance") or None,
                "unreadable": report.items_of("unreadable", dict), "images": report.integer("images")}


BROWSER_TYPES = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "GIF": "image/gif",
                 "WEBP": "image/webp", "BMP": "image/bmp", "TIFF": "image/tiff"}


def image_type(path: Path) -> str | None:
    """The media type of the image file at `path` by its content (its header, not its name);
    None for a file that is not an image of a format a browser may be sent."""
    from PIL import Image, UnidentifiedImageError

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO's read would block
            return None
        # (JPEG's opener also reads MPO files, and names them so)
        with Image.open(path, formats=[f for f in BROWSER_TYPES if f != "MPO"]) as image:
            return BROWSER_TYPES.get(image.format)
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, EOFError):
        return None  # (ValueError: also a path with a NUL byte)
    except Exception:  # noqa: BLE001 - a crafted header makes Pillow's plugins raise anything
        return None


def thumbnail(path: Path, thumbs: Path, shown: str) -> bytes:
    """A JPEG of the image at `path`, at most THUMB_SIZE px on its long side, made once per
    version of the file and kept in `thumbs`; `shown`: its name in an error."""
    try:
        info = path.stat()
    except (OSError, ValueError) as exc:
        raise UserError(f"{shown} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    # (os.fsencode: a name that is not UTF-8 is its own bytes)
    key = hashlib.sha256(os.fsencode(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\0{THUMB_SIZE}")).hexdigest()
    cached = thumbs / key[:2] / f"{key}.jpg"
    if cached.is_file():
        return cached.read_bytes()
    from ..data.decode import load_rgb
    from ..errors import ImageDecodeError
    from ..files import atomic_write

    try:
        # the decoder training uses: the same refusals (a decompression bomb is never decoded), a
        # JPEG decoded at a fraction of its size
        image = load_rgb(path, min_short_side=THUMB_SIZE, name=shown)
    except ImageDecodeError as exc:
        raise UserError(f"{shown} cannot be shown: {exc.reason}") from None
    image.thumbnail((THUMB_SIZE, THUMB_SIZE))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    try:
        atomic_write(cached, out.getvalue(), fsync=False)
    except OSError:
        pass  # a full or read-only cache: shown all the same, made again next time
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
    classes, predicted = m.texts("classes"), m.items_of("predicted") or None
    points = []
    try:
        for i, (path, label, split, xy) in enumerate(zip(m.texts("paths"), m.items_of("labels"), m.items_of("splits"),
                                                         m.items_of("xy", list))):
            rel = ds._shown(path)
            points.append({"path": rel, "label": classes[label], "split": str(split), "x": float(xy[0]),
                           "y": float(xy[1]), "predicted": classes[predicted[i]] if predicted else None,
                           "finding": kinds.get(rel)})
    except (IndexError, TypeError, ValueError):
        raise UserError(f"{doctor_dir / 'doctor_map.json'} is damaged: run the doctor again") from None
    return {"classes": classes, "points": points}


def similar(ds: Dataset, doctor_dir: Path, rel: str) -> list[dict]:
    """The images nearest to `rel` on the features (the doctor's neighbours), nearest first."""
    ds.file(rel)
    m = read_json_object(doctor_dir / "doctor_map.json")
    if m is None:
        raise UserError("run the doctor first: it finds each image's nearest images")
    paths, neighbours = m.texts("paths"), m.items_of("neighbours", list)
    index = {ds._shown(p): i for i, p in enumerate(paths)}
    if rel not in index or index[rel] >= len(neighbours):
        raise UserError(f"the doctor has not seen {rel}: run it again")
    near = [ds._shown(paths[j]) for j in neighbours[index[rel]]
            if isinstance(j, int) and not isinstance(j, bool) and 0 <= j < len(paths)]
    return [ds.item(p) for p in near if p in ds._index]
