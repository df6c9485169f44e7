"""The studio's "label next" queue: which images of a folder of unlabelled ones to label first.

1. A queue is a finished run and a folder. It starts as a job, `transferkit suggest RUN FOLDER`,
   the command a person would type (`suggest`: uncertain images, spread out, and novel ones).
2. The page then shows the suggestions one at a time, with the model's guess and the reason it
   was picked. One key or click accepts the guess, picks another class or names a new one, or
   skips the image.
3. Each answer is written at once to a labels table, `path,label` with absolute paths: the table
   `train --add` reads (`data.added`). There is one table per dataset and folder, so answers made
   from the runs of one lineage add up, and a queue opened later shows them as answered.
4. "Retrain from this run" queues `train DATA --from RUN --add TABLE`, with RUN's label table and
   the dataset's fixes as its other runs have them.

The user's images are only read. The table and the queue's own state (the suggestions, the skipped
images) live in the runs folder: RUNS/labels/ and RUNS/.studio/. Multi-label runs are refused with
one line (their answer is a set of labels; `suggest` and a table made by hand serve them).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, Body, HTTPException, Query
from fastapi.responses import FileResponse

from ..errors import UserError
from ..files import Record, atomic_write, read_json_object, read_yaml_object, shown, text_bytes, user_text
from .datasets import image_type
from .jobs import fresh_run

HEADER = ("path", "label")  # the labels table's columns: what `train --labels` / `--add` read by default
SUGGESTIONS = "suggestions.json"
DEFAULT_N = 100  # suggestions per queue (suggest's own default)
MOST_N = 2000
# A class named on the page: a name train can write as a folder and a spreadsheet does not run
# (no leading = + - @), at most 80 characters.
NEW_CLASS = re.compile(r"^[^\W_][\w .()'&+-]{0,79}$")
TABLE_LIMIT = 64 << 20


@dataclass
class LabelQueue:
    """One run's suggestions over one folder, and the answers given (see the module)."""

    id: str
    run_dir: Path
    folder: Path
    data: str  # the dataset RUN was trained on (its config.yaml's data)
    classes: list[str]
    table: Path  # the answers: RUNS/labels/<folder>-<hash>.csv
    work: Path  # RUNS/.studio/label-<id>/: the suggestions, the skipped images
    job_id: int
    n: int = DEFAULT_N  # the suggestions asked for
    items: list[dict] | None = None  # the suggestions, once the job has made them
    skipped: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answers(self) -> dict[str, str]:
        """{absolute path: label} of the table (every answer for this dataset and folder)."""
        return read_answers(self.table)

    def to_dict(self, jobs) -> dict:
        job = jobs.get(self.job_id)
        status = job.status if job is not None else "failed"
        if status == "finished" and self.items is None:
            self.items = read_suggestions(self.work / SUGGESTIONS, self.folder)
        answers = self.answers()
        items = [{**item, "shown": _shown(item["path"], self.folder), "answer": answers.get(item["path"]),
                  "skipped": item["path"] in self.skipped} for item in self.items or []]
        detail = None
        if status in ("failed", "stopped") and job is not None:
            detail = next((line for line in reversed(job.log) if line.strip()), status)
        return {"id": self.id, "run": self.run_dir.name, "folder": str(self.folder), "data": self.data,
                "classes": self.classes, "table": str(self.table), "job": self.job_id, "n": self.n,
                "status": "ready" if status == "finished" else "suggesting" if status in ("queued", "running")
                else "failed", "detail": detail, "items": items, "labelled": len(answers),
                "new_classes": sorted({v for v in answers.values()} - set(self.classes)),
                "command": f"transferkit train {self.data} --from {self.run_dir} --add {self.table}"}


class Labelling:
    """The studio's label-next queues, by id."""

    def __init__(self, runs: Path, cache_dir: str | None):
        self.runs = runs
        self.cache_dir = cache_dir
        self.queues: dict[str, LabelQueue] = {}
        self._lock = threading.Lock()

    def open(self, run_dir: Path, folder: str, n: int, jobs) -> LabelQueue:
        """The queue of `run_dir` over `folder`: its suggest job queued (a queue already open for
        the two, neither failed nor of another `n`: that one, its answers kept)."""
        root = Path(folder).expanduser().absolute() if isinstance(folder, str) and folder.strip() else None
        if root is None or not root.is_dir():
            raise UserError(f"no such folder of images: {shown(folder) if isinstance(folder, str) else folder}")
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MOST_N:
            raise UserError(f"the number of suggestions must be 1 to {MOST_N} (got {n!r})")
        config = read_yaml_object(run_dir / "config.yaml") or Record()
        meta = read_json_object(run_dir / "model.json") or Record()
        classes = [c for c in meta.items_of("classes", str)]
        if meta.record("task").text("kind") == "multilabel":
            raise UserError("the label-next queue answers one class per image; this run is multi-label (use "
                            "`transferkit suggest` and a labels table: train --add)")
        if not classes or not config.text("data"):
            raise UserError(f"{run_dir.name} is not a finished run (no classes or no dataset in its files)")
        data = config.text("data")
        ident = _digest(f"{run_dir}\0{root}")
        with self._lock:
            known = self.queues.get(ident)
            if known is not None and known.n == n and known.to_dict(jobs)["status"] != "failed":
                return known
            work = self.runs / ".studio" / f"label-{ident}"
            work.mkdir(parents=True, exist_ok=True)
            base = re.sub(r"[^A-Za-z0-9_-]", "-", root.name)[:40] or "images"
            key = _digest(f"{Path(data).expanduser().absolute()}\0{root}")
            table = self.runs / "labels" / f"{base}-{key}.csv"
            argv = ["suggest", str(run_dir), str(root), "--n", str(n), "--output", str(work / SUGGESTIONS), "--force"]
            if self.cache_dir:
                argv += ["--cache-dir", self.cache_dir]
            job = jobs.submit("suggest", argv, f"suggest {n} of {root.name} for {run_dir.name}")
            queue = LabelQueue(ident, run_dir, root, data, classes, table, work, job.id, n,
                               skipped=set(_read_skipped(work)))
            self.queues[ident] = queue
            return queue

    def get(self, ident: str) -> LabelQueue:
        if ident not in self.queues:
            raise HTTPException(404, f"no label queue '{ident}' in this studio")
        return self.queues[ident]

    def answer(self, queue: LabelQueue, i, label=None, skip: bool = False, clear: bool = False) -> dict:
        """Record the answer to suggestion `i`: its `label` (a class of the run's, or a new class),
        skip it, or clear the answer; the table is written at once."""
        item = _item(queue, i)
        path = item["path"]
        with queue.lock:
            answers = queue.answers()
            if clear or skip:
                answers.pop(path, None)
                (queue.skipped.add if skip else queue.skipped.discard)(path)
            else:
                name = label.strip() if isinstance(label, str) else ""
                if name not in queue.classes and not NEW_CLASS.match(name):
                    raise UserError(f"'{shown(name)}' is not a class of this run; a new class's name starts with a "
                                    "letter or digit and has at most 80 letters, digits, spaces and . ( ) ' & + -")
                answers[path] = name
                queue.skipped.discard(path)
            write_answers(queue.table, answers)
            atomic_write(queue.work / "skipped.json", text_bytes(json.dumps(sorted(queue.skipped))))
        return {"i": i, "answer": answers.get(path), "skipped": path in queue.skipped, "labelled": len(answers)}

    def retrain(self, queue: LabelQueue, taken: set, fixes: Path | None) -> tuple[list[str], Path]:
        """`train DATA --from RUN --add TABLE` for `queue`, as a job's argv, and its run folder."""
        if not queue.answers():
            raise UserError("no image is labelled yet: label some, then retrain")
        return retrain_command(queue.run_dir, queue.table, self.runs, self.cache_dir, taken, fixes)


def retrain_command(run_dir: Path, table: Path, runs: Path, cache_dir: str | None, taken: set,
                    fixes: Path | None = None) -> tuple[list[str], Path]:
    """The command that trains on RUN's dataset and the images `table` labels, continuing RUN
    (`--from`: its settings and network), with RUN's label table and columns, and `fixes` (the
    studio's decisions about the dataset; without them, RUN's own --fixes and --exclude where their
    files are still there); its run folder a new one in `runs`."""
    config = read_yaml_object(run_dir / "config.yaml") or Record()
    data = config.text("data")
    # (the parent's name without its time stamp or its own "-labelled": one stamp, one suffix, however deep)
    base = re.sub(r"(-labelled(-\d+)?)+$", "", re.sub(r"^\d{8}-\d{6}-", "", run_dir.name))[:60]
    out = fresh_run(runs, f"{time.strftime('%Y%m%d-%H%M%S')}-{base}-labelled", taken)
    argv = ["train", data, "--from", str(run_dir), "--add", str(table), "--out", str(out)]
    for key in ("labels", "path_col", "label_col", "split_col", "label_delim"):
        if config.text(key):
            argv += ["--" + key.replace("_", "-"), config.text(key)]
    kept = {"fixes": str(fixes)} if fixes is not None else {
        key: config.text(key) for key in ("fixes", "exclude") if config.text(key) and Path(config.text(key)).is_file()}
    for key, value in kept.items():
        argv += ["--" + key, value]
    if cache_dir:
        argv += ["--cache-dir", cache_dir]
    return argv, out


def read_suggestions(file: Path, folder: Path) -> list[dict]:
    """The suggestions `suggest --output FILE.json` wrote, each with the fields the page shows;
    only images inside `folder` (the studio serves no other file)."""
    try:
        rows = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    out = []
    top = str(folder)
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict) or not isinstance(row.get("path"), str):
            continue
        path = os.path.abspath(row["path"])
        if os.path.commonpath([path, top]) != top:
            continue
        out.append({"i": len(out), "path": path, "guess": str(row.get("guess", "")),
                    "probability": row.get("probability"), "reason": str(row.get("reason", "")),
                    "novel": bool(row.get("novel"))})
    return out


def read_answers(table: Path) -> dict[str, str]:
    """{path: label} of a labels table the studio wrote (a later row about an image wins); a
    table that cannot be read is one line."""
    if not table.is_file():
        return {}
    text = user_text(table, f"the labels table {shown(table)}", TABLE_LIMIT)
    rows = csv.reader(io.StringIO(text))
    out: dict[str, str] = {}
    for row in rows:
        if len(row) >= 2 and tuple(row[:2]) != HEADER and row[0].strip():
            out[row[0]] = row[1]
    return out


def write_answers(table: Path, answers: dict[str, str]) -> None:
    """The labels table, in answer order, written whole and atomically (a crash leaves the last one)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows([path, label] for path, label in answers.items())
    table.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(table, text_bytes(buf.getvalue()))


def router(studio, auth: list) -> APIRouter:
    """The queue's routes: open one, read it, an image of it, answer, retrain."""
    api = APIRouter(prefix="/api/label", dependencies=auth)
    labelling = studio.labelling

    @api.get("")
    def queues():
        return [q.to_dict(studio.jobs) for q in labelling.queues.values()]

    @api.post("")
    def open_queue(body: dict = Body(...)):
        run_dir = studio.run_dir(str(body.get("run", "")))
        n = body.get("n", DEFAULT_N)
        queue = labelling.open(run_dir, body.get("folder"), DEFAULT_N if n in (None, "") else _int(n), studio.jobs)
        return queue.to_dict(studio.jobs)

    @api.get("/{ident}")
    def queue(ident: str):
        return labelling.get(ident).to_dict(studio.jobs)

    @api.get("/{ident}/image")
    def image(ident: str, i: int = Query(..., ge=0)):
        path = Path(_item(labelling.get(ident), i)["path"])
        kind = image_type(path)
        if kind is None:
            raise UserError(f"{path.name} is not an image that a browser shows")
        return FileResponse(path, media_type=kind, headers={"X-Content-Type-Options": "nosniff",
                                                            "Content-Security-Policy": "default-src 'none'"})

    @api.post("/{ident}/answer")
    def answer(ident: str, body: dict = Body(...)):
        return labelling.answer(labelling.get(ident), body.get("i"), body.get("label"), bool(body.get("skip")),
                                bool(body.get("clear")))

    @api.post("/{ident}/retrain")
    def retrain(ident: str):
        queue = labelling.get(ident)
        ds = studio.dataset_of(queue.run_dir)
        fixes = ds.fixes_file if ds is not None and ds.fixes_file.is_file() and ds.fixes() else None
        taken = {(j.result or {}).get("run") for j in studio.jobs.jobs}
        argv, out = labelling.retrain(queue, taken, fixes)
        job = studio.jobs.submit("train", argv, f"train {Path(queue.data).name} from {queue.run_dir.name} with "
                                                f"{len(queue.answers())} labelled image(s)")
        job.result = {"run": out.name}
        return job.to_dict()

    return api


def _item(queue: LabelQueue, i) -> dict:
    if queue.items is None:
        raise UserError("the suggestions are not ready yet")
    if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(queue.items):
        raise HTTPException(404, f"no suggestion {i!r} in this queue")
    return queue.items[i]


def _int(value) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise UserError(f"the number of suggestions must be a whole number (got {shown(str(value))})") from None


def _read_skipped(work: Path) -> list[str]:
    try:
        listed = json.loads((work / "skipped.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [p for p in listed if isinstance(p, str)] if isinstance(listed, list) else []


def _shown(path: str, folder: Path) -> str:
    return os.path.relpath(path, folder)


def _digest(text: str) -> str:
    return hashlib.sha256(os.fsencode(text)).hexdigest()[:10]
