"""Prediction over very many files (`predict --out-dir DIR`, alone or under torchrun / --nproc).

The inputs are streamed (a list file read line by line with --files-from, folders walked) in
chunks of `chunk_size` files; chunk i is predicted by rank i % world of the group, and its
predictions are written atomically to DIR/chunks/chunk-<i>.csv. A chunk file that is there is
done: a run killed mid-way and started again redoes nothing that was written and writes nothing
twice. DIR/run.json names what is predicted (the model, the inputs, the chunk size), so that a
folder is never resumed with other inputs; at the end the primary writes DIR/manifest.json (every
chunk, its rank, its rows and errors) and, with `merge`, DIR/predictions.csv (the chunks in order).
Memory stays flat in the number of files: one chunk of paths and predictions at a time."""

from __future__ import annotations

import csv
import io
import os
from itertools import islice
from pathlib import Path
from typing import Iterator

from ..errors import UserError
from ..files import atomic_write, read_json_object, write_json
from .outputs import PredictionWriter

CHUNK_FILE = "chunk-{:06d}.csv"


def iter_inputs(inputs: list[str], files_from: str | None = None) -> Iterator[str]:
    """The files to predict: those given (folders walked, in order), then those listed in
    `files_from` (one a line; blank lines and lines starting with # skipped; a file:// URI is a
    path), read as they are needed."""
    from .outputs import expand_inputs

    yield from expand_inputs(inputs) if inputs else ()
    if files_from:
        try:
            handle = open(Path(files_from).expanduser(), encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            raise UserError(f"--files-from {files_from}: {exc.strerror or exc}") from None
        with handle:
            for line in handle:
                line = line.rstrip("\r\n")
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                yield line[len("file://"):] if line.startswith("file://") else line


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
    """Predict every input into `out` (see the module); returns the manifest (on every rank)."""
    out = Path(out).expanduser().absolute()
    parts = out / "chunks"
    ident = {**identity, "inputs": [str(Path(i).expanduser().absolute()) for i in inputs],
             "files_from": str(Path(files_from).expanduser().absolute()) if files_from else None,
             "chunk_size": chunk_size, "top_k": top_k}

    def prepare():
        parts.mkdir(parents=True, exist_ok=True)
        saved = read_json_object(out / "run.json")
        if saved is not None and saved != ident:
            raise UserError(f"{out} holds the predictions of another run (other model, inputs, chunk size or "
                            "top-k); give another --out-dir, or the same options to resume it")
        if saved is None:
            write_json(out / "run.json", ident)
        return sorted(p.name for p in parts.glob("chunk-*.csv"))

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
        writer = PredictionWriter(text, "csv", top_k)
        writer.write(preds)
        writer.close()
        atomic_write(parts / name, text.getvalue().encode("utf-8", "surrogateescape"))
    group.barrier()
    return group.decide(lambda: _finish(out, merge, resumed, group.world))


def _finish(out: Path, merge: bool, resumed: int, world: int) -> dict:
    parts = sorted((out / "chunks").glob("chunk-*.csv"))
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
        listed.append({"chunk": int(part.stem.split("-")[1]), "file": f"chunks/{part.name}", "rank":
                       int(part.stem.split("-")[1]) % world, "rows": len(body), "errors": bad})
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
