"""Labelled images added to a dataset from a table of their own: `train DATA --add FILE`.

New photos often live outside DATA: a folder of unlabelled images, labelled in the studio's
"label next" queue or by hand. FILE names them and their labels as a `--labels` table does
(`data.table`: a path and a label per row; `--label-delim` splits a multi-label cell), except
that its paths may lie anywhere: absolute, or relative to FILE's folder. Nothing is copied into
DATA, and nothing is written beside FILE.

- Images of DATA's classes join the training split only. The validation images stay DATA's, so a
  run trained `--from RUN --add FILE` is measured on the images RUN was, and the two compare.
- A class that only FILE has is new. Its images are split as DATA's are (`--val-fraction`, the
  seed), so that the new class is measured too; a new class with one image is trained and not
  measured (the run warns of a class with no validation image).
- An image DATA already has keeps DATA's label (`--fixes` relabels DATA's images). A listed file
  that does not exist is skipped and listed among the run's skipped files. Both are counted.
- In single-label data, a row with no label or with several, or an image listed again with
  another label, is an error naming its line.
No torch here.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from ..errors import UserError
from ..files import shown
from .discover import DatasetSplit, Sample, multi_samples, stratified_split
from .table import LabelTable, read_table

FLAG = "--add"


def add_images(split: DatasetSplit, file: str | Path, val_fraction: float, seed: int,
               label_delim: str | None = None) -> DatasetSplit:
    """`split` with the images FILE labels added (see the module), recorded in `split.added`:
    {file, images, train, val, new_classes, unmeasured, already, not_found}."""
    source = str(Path(file).expanduser().absolute())
    what = f"{FLAG} {shown(file)}"
    table = read_table(LabelTable(source, label_delim=label_delim), None, FLAG)
    multi = split.task.multi
    if not multi:
        _check_single(table, what)
    known = {os.path.abspath(s.path) for s in split.train + split.val}
    rows = [(p, names) for listed in table.rows.values() for p, names, _ in listed]
    fresh = [(p, names) for p, names in rows if p not in known]
    new = sorted({n for _, names in fresh for n in names} - set(split.classes))
    classes = sorted(set(split.classes) | set(new))
    index = {c: i for i, c in enumerate(classes)}

    def ids(names) -> tuple[int, ...]:
        return tuple(sorted(index[n] for n in names))

    def kept(samples: list[Sample]) -> list[tuple[str, tuple[int, ...]]]:
        return [(s.path, ids(split.classes[c] for c in (s.labels if multi else (s.label,)))) for s in samples]

    new_ids = {index[c] for c in new}
    to_split = [(p, ids(names)) for p, names in fresh if new_ids & set(ids(names))]
    to_train = [(p, ids(names)) for p, names in fresh if not new_ids & set(ids(names))]
    by = [s.label for s in (multi_samples(to_split, len(classes)) if multi else
                            (Sample(p, c[0]) for p, c in to_split))]
    is_val = stratified_split(by, val_fraction, seed) if to_split else []
    train = kept(split.train) + to_train + [r for r, v in zip(to_split, is_val) if not v]
    val = kept(split.val) + [r for r, v in zip(to_split, is_val) if v]
    measured = {c for _, cs in val for c in cs}
    record = {"file": source, "images": len(fresh), "train": len(fresh) - int(sum(is_val)), "val": int(sum(is_val)),
              "new_classes": new, "unmeasured": [c for c in new if index[c] not in measured],
              "already": len(rows) - len(fresh), "not_found": len(table.missing)}
    return replace(split, classes=classes, train=_samples(train, len(classes), multi),
                   val=_samples(val, len(classes), multi), skipped=split.skipped + table.missing, added=record)


def summary(record: dict) -> tuple[str, list[str]]:
    """The line a run prints about what `--add` added, and its warnings (the files not found, and
    a class with no validation image, are warned of as the run warns of any)."""
    line = (f"added {record['images']} labelled image(s) from {shown(record['file'])}: {record['train']} to the "
            f"training split" + (f", {record['val']} to validation (new class(es): {', '.join(record['new_classes'])})"
                                 if record["new_classes"] else ""))
    warnings = []
    if record["already"]:
        warnings.append(f"{record['already']} image(s) in {FLAG} {shown(record['file'])} are already in the dataset: "
                        "they keep its label (relabel them with --fixes)")
    return line, warnings


def _check_single(table, what: str) -> None:
    """Single-label data: one label per row, and an image listed again has the same one."""
    if table.merged:
        path, first, again = table.merged[0]
        raise UserError(f"{what}: {shown(path)} is labelled on line {first} and again, differently, on line {again}: "
                        "this dataset has one label per image")
    for listed in table.rows.values():
        for path, names, line in listed:
            if len(names) != 1:
                raise UserError(f"{what}, line {line}: {shown(path)} has "
                                f"{'no label' if not names else f'{len(names)} labels'}; this dataset has one label "
                                "per image")


def _samples(rows: list[tuple[str, tuple[int, ...]]], num_classes: int, multi: bool) -> list[Sample]:
    """Samples of (path, class indices) rows, in the order discovery gives them (single-label:
    by class, then path; multi-label: by path, each with its stratum)."""
    if multi:
        return sorted(multi_samples(rows, num_classes), key=lambda s: s.path)
    return sorted((Sample(p, c[0]) for p, c in rows), key=lambda s: (s.label, s.path))
