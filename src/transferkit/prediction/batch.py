"""Prediction over very many files (`predict --out-dir DIR`, alone or under torchrun / --nproc).

The inputs are streamed (a list file read line by line with --files-from, folders walked) in
chunks of `chunk_size` files; chunk i is predicted by rank i % world of the group, and its
predictions are written atomically to DIR/chunks/chunk-<i>.csv. A chunk file that is there is
done: a run killed mid-way and started again redoes nothing that was written and writes nothing
twice. DIR/run.json names what is predicted (the model, the inputs, the chunk size), so that a
folder is never resumed with other inputs (an edited --files-from list included: its checksum is
part of that record); at the end the primary writes DIR/manifest.json (every
chunk, its rank, its rows and errors) and, with `merge`, DIR/predictions.csv (the chunks in order).
Memory stays flat in the number of files: one chunk of paths and predictions at a time."""

from __future__ import annotations

import csv
import io
import os
import re
from itertools import islice
from pathlib import Path
from typing import Iterator

from ..errors import UserError
from ..files import atomic_write, file_sha256, read_json_object, refuse_inside, shown, write_json
from .outputs import PredictionWriter, has_ood, joiner_of

CHUNK_FILE = "chunk-{:06d}.csv"


def iter_inputs(inputs: list[str], files_from: str | None = None) -> Iterator[str]:
    """The files to predict: those given (folders walked, in order), then those listed in
    `files_from` (one a line; blank lines and lines starting with # skipped; a file:// URI is a
    path), read as they are needed."""
    from .outputs import expand_inputs

    yield from expand_inputs(inputs) if inputs else ()
    if files_from:
        try:
            # (utf-8-sig: a list saved with a BOM does not make its first path unknown)
            handle = open(Path(files_from).expanduser(), encoding="utf-8-sig", errors="surrogateescape")
        except OSError as exc:
            raise UserError(f"--files-from {files_from}: {exc.strerror or exc}") from None
        with handle:
            for line in handle:
                line = line.rstrip("\r\n")
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                yield line[len("file://"):] if line.startswith("file://") else line


CHUNK_NAME = re.compile(r"^chunk-(\d{6,})\.csv$")  # (a stray "chunk-000001 (copy).csv" is not one)
IDENTITY_KEYS = ("model", "inputs", "files_from", "chunk_size", "top_k")  # what makes run.json ours


def claim_out_dir(out: Path, inputs: list[str]) -> None:
    """--out-dir: never inside an input folder (its chunks would be predicted as images, its
    predictions.csv replace the user's); new, empty, or a predict --out-dir folder (its run.json
    is ours). A folder of the user's is refused, never written into."""
    refuse_inside(out, [i for i in inputs if Path(i).expanduser().is_dir()], "--out-dir")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out-dir {shown(out)} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        saved = read_json_object(out / "run.json")
        if saved is None or not all(k in saved for k in IDENTITY_KEYS):
            raise UserError(f"--out-dir {shown(out)} is not empty and is not a predict --out-dir folder; give a new "
                            "or empty folder")


def _list_digest(files_from: str) -> str:
    try:
        return file_sha256(Path(files_from).expanduser())
    except OSError as exc:
        raise UserError(f"--files-from {shown(files_from)}: {exc.strerror or exc}") from None


def chunks(paths: Iterator[str], size: int) -> Iterator[tuple[int, list[str]]]:
    index = 0
    while True:
        chunk = list(islice(paths, size))
        if not chunk:
            return
        yield index, chunk
        index += 1


def predict_to_folder(predictor, inputs: list[str], files_from: str | None, out: Path, chunk_size: int, top_k: int,
                      group, merge: bool, identity: dict, warn) -> dict:
    """Predict every input into `out` (see the module); returns the manifest (on every rank).
    `chunk_size` is taken up to a whole number of the predictor's batches: a batch's numbers depend
    (in the last digits) on what else is in it, and aligned chunks hold the same batches as a plain
    predict, so the merged text is the same text."""
    step = max(1, int(getattr(predictor, "batch_size", 1) or 1))
    if chunk_size % step:
        aligned = -(-chunk_size // step) * step
        if group.primary:
            warn(f"--chunk-size {chunk_size} taken as {aligned}: whole batches of the model's {step} images, so the "
                 "chunks hold the same numbers as a plain predict")
        chunk_size = aligned
    out = Path(out).expanduser().absolute()
    parts = out / "chunks"

    def prepare():  # (the primary alone: the list of files is read for its checksum once, not by every process)
        ident = {**identity, "inputs": [str(Path(i).expanduser().absolute()) for i in inputs],
                 "files_from": str(Path(files_from).expanduser().absolute()) if files_from else None,
                 "files_from_sha256": _list_digest(files_from) if files_from else None,
                 "chunk_size": chunk_size, "top_k": top_k}
        claim_out_dir(out, inputs)
        parts.mkdir(parents=True, exist_ok=True)
        saved = read_json_object(out / "run.json")
        if saved is not None and saved != ident:
            raise UserError(f"--out-dir {shown(out)} holds the predictions of another run (other model, inputs, "
                            "list of files, chunk size or top-k); give another --out-dir, or the same options "
                            "and inputs to resume it")
        if saved is None:
            write_json(out / "run.json", ident)
        return sorted(p.name for p in parts.glob("chunk-*.csv") if CHUNK_NAME.match(p.name))

    done = set(group.decide(prepare))
    resumed = len(done)
    for index, paths in chunks(iter_inputs(inputs, files_from), chunk_size):
        name = CHUNK_FILE.format(index)
        if index % group.world != group.rank or name in done:
            continue
        preds = predictor.predict(paths, top_k)
        for p in preds:
            if p.error:
                warn(f"warning: {p.path}: {p.error}")
        text = io.StringIO()
        writer = PredictionWriter(text, "csv", top_k, joiner_of(predictor), has_ood(predictor))
        writer.write(preds)
        writer.close()
        atomic_write(parts / name, text.getvalue().encode("utf-8", "surrogateescape"))
    group.barrier()
    return group.decide(lambda: _finish(out, merge, resumed, group.world))


def _finish(out: Path, merge: bool, resumed: int, world: int) -> dict:
    parts = sorted(p for p in (out / "chunks").glob("chunk-*.csv") if CHUNK_NAME.match(p.name))
    listed, files, errors = [], 0, 0
    merged = None
    if merge:
        merged = open(out / ".predictions.csv.part", "w", encoding="utf-8", errors="surrogateescape", newline="")
    for i, part in enumerate(parts):
        with open(part, encoding="utf-8", errors="surrogateescape", newline="") as f:
            text = f.read()
        rows = list(csv.reader(io.StringIO(text)))
        body = rows[1:]  # below the header
        bad = sum(1 for r in body if r and r[-1])
        number = int(CHUNK_NAME.match(part.name).group(1))
        listed.append({"chunk": number, "file": f"chunks/{part.name}", "rank": number % world, "rows": len(body),
                       "errors": bad})
        files, errors = files + len(body), errors + bad
        if merged is not None:
            lines = text.splitlines(keepends=True)
            merged.write("".join(lines if i == 0 else lines[1:]))
    if merged is not None:
        merged.close()
        os.replace(out / ".predictions.csv.part", out / "predictions.csv")
    manifest = {"files": files, "errors": errors, "chunks": listed, "processes": world, "resumed_chunks": resumed,
                "merged": "predictions.csv" if merge else None}
    write_json(out / "manifest.json", manifest)
    return manifest
