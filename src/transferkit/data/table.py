"""Labels from a table instead of class folders: a CSV or TSV file (`train DATA --labels FILE`),
a Hugging Face `metadata.csv` (read with no option), or a pandas DataFrame in Python. No torch here.

Each row names an image and its label:

    path,label,split
    photos/001.jpg,roses,train
    photos/002.jpg,tulips,valid

Columns: `path_col` (default: the first column; `file_name` in a metadata.csv), `label_col`
(default: the second; `label` in a metadata.csv), `split_col` (optional: train / val / valid /
validation / test, in any case, or a boolean `is_valid` as fastai writes it; without it the run's
seeded stratified split, as for folders). A path is relative to DATA, or to the table's own
folder where it is not found under DATA; an absolute path must lie inside DATA. UTF-8 with or
without a BOM, CRLF, quoted cells; a `.tsv` file (or one whose header has tabs and no commas) is
tab-separated.

The images come out in the order folder discovery gives (classes sorted by name, each class's
files by path), so the same images and labels as folders or as a table split the same way and
train the same model. A bad row is one error naming the file and line: a path that leaves DATA,
a split value it does not know, the same image on rows of different splits (both lines named); a
missing column names the columns there are.

Several labels per image (multi-label, `task`): a label cell split on `label_delim` (e.g. `' '`
or `';'`: "dog;cat"), or the image listed on several rows (one label each: its rows are merged,
and `merged` says where); an empty label cell is an image with no label. Whether that is allowed
is the task's to say (`discover.from_table`: single-label data refuses both, naming the lines). A listed file that does not exist is
skipped with a warning and listed among the run's skipped files. Nothing is written next to the
table or inside DATA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config import check_delim
from ..errors import UserError
from ..files import TEXT_ERRORS, DamagedFile, csv_rows, read_text, shown, user_text
from .layout import TEST_NAMES, TRAIN_NAMES, VAL_NAMES

TABLE_LIMIT = 1 << 30  # the largest label table read
METADATA = "metadata.csv"  # Hugging Face imagefolder's table, read where it has file_name and label
SPLITS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
          "test": "test", "testing": "test"}
TRUE, FALSE = ("true", "1", "yes", "y", "t"), ("false", "0", "no", "n", "f", "")
SUFFIXES = (".csv", ".tsv", ".txt")


@dataclass(frozen=True)
class LabelTable:
    """Where the labels come from when they are not class folders: `file` (a CSV/TSV path) and
    its columns (None: the defaults above)."""

    file: str
    path_col: str | None = None
    label_col: str | None = None
    split_col: str | None = None
    label_delim: str | None = None  # splits a label cell into several labels (multi-label)
    role: str | None = None  # every row's split ("train" | "val" | "test"): a metadata.csv in a split folder
    others: tuple["LabelTable", ...] = ()  # the other split folders' metadata.csv files, read with this one


@dataclass
class TableRows:
    """What a label table says: (path, labels, line) per split role ("train" | "val" | "test", or
    "any" without a split column), the listed files that do not exist ({path, reason}), and the
    images listed again with other labels, merged into one row: (path, first line, other line)."""

    rows: dict[str, list[tuple[str, tuple[str, ...], int]]]
    missing: list[dict]
    has_split: bool
    merged: list[tuple[str, int, int]] = field(default_factory=list)


def resolve_data(data: str, labels: str | None, options) -> tuple[str, str | None]:
    """(the dataset folder, the label table or None) of DATA and --labels: DATA may be the table
    itself (its folder is then DATA); column options without a table are refused."""
    given = Path(data).expanduser()
    if labels is None and given.is_file() and given.suffix.lower() in SUFFIXES:
        return str(given.parent.absolute()), str(given.absolute())
    if labels is None and any(getattr(options, k, None) for k in ("path_col", "label_col", "split_col")):
        raise UserError("--path-col, --label-col and --split-col name the columns of a --labels table: give one")
    delim = check_delim(getattr(options, "label_delim", None))
    if labels is None and delim is not None and not (given.is_dir() and (given / METADATA).is_file()):
        raise UserError("--label-delim splits the label cells of a --labels table (or of DATA/metadata.csv): give one")
    # (absolute: the run's config.yaml names the same table from wherever it is resumed)
    return data, str(Path(labels).expanduser().absolute()) if labels else None


def table_of(options) -> LabelTable | None:
    """The label table an options object (TrainConfig, DoctorOptions, ...) names, or None."""
    labels = getattr(options, "labels", None)
    return LabelTable(labels, options.path_col, options.label_col, options.split_col,
                      getattr(options, "label_delim", None)) if labels else None


def find_metadata(root: Path, label_delim: str | None = None) -> LabelTable | None:
    """A Hugging Face `metadata.csv` with `file_name` and `label` columns, as a table (one that
    lacks a label column describes its images otherwise: the folders are the labels then): in
    DATA, or in its split folders (train/, and val/ or validation/, test/: each one's rows are in
    that split, their paths relative to its folder), read together."""
    if _is_metadata(root / METADATA):
        return LabelTable(str(root / METADATA), "file_name", "label", label_delim=label_delim)
    roles = {**{n: "train" for n in TRAIN_NAMES}, **{n: "val" for n in VAL_NAMES}, **{n: "test" for n in TEST_NAMES}}
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() in roles)
    except OSError:
        return None
    found = [LabelTable(str(p / METADATA), "file_name", "label", label_delim=label_delim, role=roles[p.name.lower()])
             for p in folders if _is_metadata(p / METADATA)]
    train = [t for t in found if t.role == "train"]
    if not train:
        return None
    return LabelTable(**{**vars(train[0]), "others": tuple(t for t in found if t is not train[0])})


def _is_metadata(file: Path) -> bool:
    """Whether `file` is a metadata.csv with file_name and label columns."""
    if not file.is_file():
        return False
    try:
        header = next(csv_rows(read_text(file, TABLE_LIMIT, TEXT_ERRORS), str(file)), (0, []))[1]
    except (OSError, DamagedFile, UserError):
        return False
    names = [h.strip() for h in header]
    return "file_name" in names and "label" in names


def read_table(table: LabelTable, root: Path | None, flag: str = "--labels") -> TableRows:
    """The rows of `table` (and of the split folders' tables read with it, `others`) for the
    images under `root` (DATA; None: images anywhere), checked; see the module. `flag`: the option
    its errors name."""
    out = _read_one(table, root, flag)
    for other in table.others:
        part = _read_one(LabelTable(**{**vars(other), "label_delim": table.label_delim}), root, flag)
        for role, rows in part.rows.items():
            out.rows.setdefault(role, []).extend(rows)
        out.missing += part.missing
        out.merged += part.merged
    return out


def _read_one(table: LabelTable, root: Path | None, flag: str = "--labels") -> TableRows:
    """`read_table` of one file; `root` None: its paths may lie anywhere (absolute, or relative
    to the table's folder: `data.added`)."""
    file = Path(table.file).expanduser()
    what = f"{flag} {shown(file)}"
    text = user_text(file, what, TABLE_LIMIT)
    first = text.split("\n", 1)[0]
    tabs = file.suffix.lower() == ".tsv" or ("\t" in first and "," not in first)
    rows = csv_rows(text, what, "\t" if tabs else ",")
    try:
        _, header = next(rows)
    except StopIteration:
        raise UserError(f"{what} is empty: it needs a header row and a row per image") from None
    names = [h.strip() for h in header]
    path_i = _column(names, table.path_col, 0, "--path-col", what)
    label_i = _column(names, table.label_col, 1, "--label-col", what)
    split_i = _column(names, table.split_col, None, "--split-col", what) if table.split_col else None
    seen: dict[str, tuple[str, int, int | None]] = {}  # path -> (role, line, position in out[role])
    out: dict[str, list[tuple[str, tuple[str, ...], int]]] = {}
    missing: list[dict] = []
    merged: list[tuple[str, int, int]] = []
    for line, cells in rows:
        where = f"{what}, line {line}"
        cells = cells + [""] * (len(names) - len(cells))
        raw, labels = cells[path_i].strip(), _labels(cells[label_i], table.label_delim)
        if not raw:
            raise UserError(f"{where}: the path cell is empty")
        role = table.role or (_role(cells[split_i].strip(), names[split_i], where) if split_i is not None else "any")
        path = _resolve(raw, root, file.parent, where)
        if path in seen:
            before, at, position = seen[path]
            if before != role:
                raise UserError(f"{what}: {shown(raw)} is in the {before} split on line {at} and in the {role} split on "
                                f"line {line}: an image is on one side of the split")
            if position is not None:
                kept, old, first = out[role][position]
                union = tuple(dict.fromkeys(old + labels))
                if union != old:
                    merged.append((kept, first, line))
                    out[role][position] = (kept, union, first)
            continue  # listed again: one image, with every label its rows give
        if not os.path.lexists(path):
            seen[path] = (role, line, None)
            missing.append({"path": path, "reason": f"listed on line {line} of {file.name}: file not found"})
            continue
        seen[path] = (role, line, len(out.setdefault(role, [])))
        out[role].append((path, labels, line))
    return TableRows(out, missing, split_i is not None or table.role is not None, merged)


def _labels(cell: str, delim: str | None) -> tuple[str, ...]:
    """The labels of one cell: split on `delim` (None: the cell is one label), stripped, empty
    parts dropped, each once."""
    parts = cell.split(delim) if delim else [cell]
    return tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))


def _column(names: list[str], asked: str | None, default: int | None, flag: str, what: str) -> int:
    if asked is None:
        if default is None or default >= len(names):
            raise UserError(f"{what} needs at least two columns (the image's path, its label); it has "
                            f"{', '.join(names) or 'none'}")
        return default
    if asked not in names:
        raise UserError(f"{flag} {asked}: {what} has no such column; it has {', '.join(names)}")
    return names.index(asked)


def _role(value: str, column: str, where: str) -> str:
    low = value.lower()
    if low in SPLITS:
        return SPLITS[low]
    if low in TRUE:  # fastai's is_valid column
        return "val"
    if low in FALSE:
        return "train"
    raise UserError(f"{where}: the {column} value '{shown(value)}' is not a split (train, val, valid, validation, "
                    "test, or a true/false is_valid)")


def _resolve(raw: str, root: Path | None, table_dir: Path, where: str) -> str:
    """The image's path: under DATA, relative to it (or to the table's folder where it is not found
    under DATA); a path that leaves DATA (`../`, an absolute path elsewhere) is refused. `root`
    None: any path, absolute or relative to the table's folder."""
    given = Path(raw).expanduser()
    if root is None:
        return os.path.abspath(os.path.normpath(given if given.is_absolute() else table_dir / given))
    candidates = [given] if given.is_absolute() else [root / given, table_dir / given]
    top = os.path.abspath(root)
    inside = [os.path.normpath(c) for c in candidates
              if os.path.commonpath([os.path.abspath(os.path.normpath(c)), top]) == top]
    if not inside:
        raise UserError(f"{where}: {shown(raw)} is not inside the dataset folder {shown(root)}; list the images "
                        "under DATA")
    return next((p for p in inside if os.path.lexists(p)), inside[0])
