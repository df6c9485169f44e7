"""Dataset discovery: class folders, train/val matching, the stratified split. No torch here."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import cifar
from ..errors import UserError, describe_os_error
from ..files import shown
from ..task import MULTI, Task, multi_hot, stratum, task_of
from .layout import TEST_NAMES, TRAIN_NAMES, VAL_NAMES


@dataclass(frozen=True)
class Sample:
    """One image and its label: `label` is its class (single-label data); in multi-label data
    `labels` holds its classes (any number, none included) and `label` the class it is
    stratified by when the data is split or folded (`task.stratum`: its rarest label, or the
    number of classes for an image with none)."""

    path: str
    label: int
    labels: tuple[int, ...] | None = None


def targets_of(samples: list[Sample], task: Task, num_classes: int) -> np.ndarray:
    """What a model learns of (and is measured against on) `samples`: class indices (int64), or
    for a multi-label `task` (N, C) 0/1 rows (float32)."""
    if task.multi:
        return multi_hot([s.labels or () for s in samples], num_classes)
    return np.array([s.label for s in samples], dtype=np.int64)


def multi_samples(rows, num_classes: int) -> list[Sample]:
    """Multi-label samples of (path, class indices) rows, each with its stratum."""
    rows = [(p, tuple(sorted(set(c)))) for p, c in rows]
    strata = stratum([c for _, c in rows], num_classes)
    return [Sample(p, int(k), c) for (p, c), k in zip(rows, strata)]


def table_samples(rows, classes: list[str], multi: bool) -> list[Sample]:
    """Samples of a label table's (path, labels, line) rows, in the order folder discovery gives:
    by class, then path (multi-label: by path, each with its stratum)."""
    index = {c: i for i, c in enumerate(classes)}
    if multi:
        return sorted(multi_samples([(p, [index[n] for n in names]) for p, names, _ in rows], len(classes)),
                      key=lambda s: s.path)
    return sorted((Sample(p, index[names[0]]) for p, names, _ in rows), key=lambda s: (s.label, s.path))


def split_samples(split_file: str | Path, role: str) -> list[Sample]:
    """The `role` ("train" | "val") images a run's split.json lists (rows of [path, class], or
    [path, [classes]] for multi-label data); a damaged file is a UserError."""
    from ..files import user_json_object

    record = user_json_object(split_file, "the run's")
    listed, classes = record.get(role), record.get("classes")

    def index(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    try:
        if any(isinstance(label, list) for _, label in listed):
            k = len(classes) if isinstance(classes, list) else 1 + max((c for _, cs in listed for c in cs), default=0)
            return multi_samples([(str(p), [int(c) for c in cs if index(c) and 0 <= c < k]) for p, cs in listed
                                  if isinstance(p, str) and isinstance(cs, list)], k)
        return [Sample(str(p), int(label)) for p, label in listed if isinstance(p, str) and index(label)]
    except (TypeError, ValueError):
        raise UserError(f"the run's {split_file} is damaged: its '{role}' list is not [path, class] rows") from None


@dataclass
class DatasetSplit:
    """Files of one dataset, split into train and val, with class names."""

    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    val_source: str  # "folder" (DATA/val), "table" (a label table's split column) or "split" (stratified split)
    skipped: list[dict] = field(default_factory=list)  # {path, reason}
    image_size: int | None = None  # the images' native size where the format fixes it (CIFAR: 32)
    excluded: dict | None = None  # train --exclude: {file, images left out, paths listed but not found}
    fixes: dict | None = None  # train --fixes: {file, excluded, relabelled, not_found} (data.fixes)
    added: dict | None = None  # train --add: {file, images, train, val, new_classes, ...} (data.added)
    task: Task = field(default_factory=Task)  # single-label, or multi-label (samples carry `labels`)
    merged: int = 0  # images a label table lists on several rows with other labels (merged: multi-label)

    def targets(self, samples: list[Sample]) -> np.ndarray:
        """What a model learns of `samples` (`targets_of`)."""
        return targets_of(samples, self.task, len(self.classes))

    def label_counts(self, samples: list[Sample]) -> np.ndarray:
        """Images per class among `samples` (multi-label: images that have the class)."""
        if self.task.multi:
            return self.targets(samples).sum(0).astype(np.int64) if samples else np.zeros(len(self.classes), np.int64)
        return np.bincount([s.label for s in samples], minlength=len(self.classes))

    def names(self, sample: Sample) -> str:
        """The sample's label(s) by name (several joined by the task's delimiter)."""
        if self.task.multi:
            return self.task.joiner.join(self.classes[c] for c in sample.labels)
        return self.classes[sample.label]

    def excluding(self, paths: set[str], source: str) -> "DatasetSplit":
        """This split less the files listed in `source` (train --exclude), recorded."""
        found = {s.path for s in self.train + self.val} & paths
        return replace(self, train=[s for s in self.train if s.path not in paths],
                       val=[s for s in self.val if s.path not in paths],
                       excluded={"file": source, "images": len(found), "not_found": len(paths) - len(found)})

    def without(self, bad: dict[str, str]) -> "DatasetSplit":
        """This split less the unreadable files (path -> reason), which are listed as skipped."""
        if not bad:
            return self
        known = {d["path"] for d in self.skipped}
        return replace(self, train=[s for s in self.train if s.path not in bad],
                       val=[s for s in self.val if s.path not in bad],
                       skipped=self.skipped + [{"path": p, "reason": r} for p, r in sorted(bad.items()) if p not in known])

    def fingerprint(self, root: str | Path) -> str:
        """A short hash of what was trained and measured on: each image's path under `root`, its
        size, its class and its side of the split. Another run on the same files, split the same
        way, has the same fingerprint; an added, removed, resized or relabelled image changes it."""
        import hashlib

        from ..files import text_bytes

        digest = hashlib.sha256()
        for role, samples in (("train", self.train), ("val", self.val)):
            for s in sorted(samples, key=lambda s: s.path):
                try:
                    size = os.stat(s.path).st_size
                except OSError:
                    size = -1
                # (a file name that is not UTF-8 is hashed as its own bytes)
                digest.update(text_bytes(f"{role}\t{os.path.relpath(s.path, root)}\t{self.names(s)}\t{size}\n"))
        return digest.hexdigest()[:16]

    def check_not_empty(self) -> None:
        """After unreadable files are dropped, every class still needs a training image."""
        counts = self.label_counts(self.train)
        empty = [c for c, n in zip(self.classes, counts) if n == 0]
        if empty:
            raise UserError(f"no readable training images in class(es): {', '.join(empty)}")
        if not self.val:
            raise UserError("no readable validation images")


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__MACOSX") or name == "Thumbs.db"


def list_files(folder: Path, unreadable: list[dict] | None = None) -> list[str]:
    """Every non-hidden file under `folder`, recursively, sorted; hidden folders are not entered.
    Linked folders are followed, each real folder once (a link loop is walked once); a broken link
    is listed like a file (it is then skipped, saying so); transferkit's own output folders are
    not entered. Folders that cannot be read, and entries that are neither files nor folders (a
    FIFO, whose read would wait for a writer; a socket, a device), are added to `unreadable` as
    {path, reason}. One directory read per folder, as os.walk (entry types come with it)."""
    out: list[str] = []
    seen: set[str] = set()

    def failed(path: str, exc: OSError) -> None:
        if unreadable is not None:
            unreadable.append({"path": str(exc.filename or path),
                               "reason": f"folder not readable ({describe_os_error(exc)})"})

    stack = [os.fspath(folder)]  # (depth first, each folder's files before its sub-folders', as os.walk)
    while stack:
        dirpath = stack.pop()
        real = os.path.realpath(dirpath)
        if real in seen:
            continue
        seen.add(real)
        try:
            with os.scandir(dirpath) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            failed(dirpath, exc)
            continue
        folders = []
        for entry in entries:
            if is_hidden(entry.name):
                continue
            try:
                if entry.is_dir():  # (a link to a folder too: followed)
                    folders.append(entry)
                elif entry.is_file() or entry.is_symlink() and not os.path.exists(entry.path):
                    out.append(entry.path)  # a file, or a broken link (skipped later, saying so)
                elif unreadable is not None:
                    unreadable.append({"path": entry.path, "reason": "not a regular file (a pipe, a device or a socket)"})
            except OSError as exc:
                failed(entry.path, exc)
        stack += [e.path for e in reversed(folders) if not is_own_output(Path(e.path))]
    return out


def class_folders(folder: Path) -> dict[str, Path]:
    """The visible sub-folders of `folder` by name, less transferkit's own outputs."""
    if not folder.is_dir():
        raise UserError(f"folder not found: {folder}")
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise UserError(f"cannot read the folder {folder}: {describe_os_error(exc)}") from None
    return {p.name: p for p in entries if p.is_dir() and not is_hidden(p.name) and not is_own_output(p)}



def is_own_output(folder: Path) -> bool:
    """A folder transferkit wrote (a run, an export, an eval, or a folder of runs): never a class,
    never images."""
    def has(*names: str) -> bool:
        return all((folder / n).is_file() for n in names)

    return (has(OWN_MARKER) or has("model.json", "model.safetensors") or has("export.json")
            or has("metrics.json", "predictions.csv"))


OWN_MARKER = ".transferkit"  # in a folder that holds run folders (runs/)
CACHE_TAG = "CACHEDIR.TAG"  # a cache folder (transferkit's, or any program's that follows the standard)


def refuse_own_folder(root: Path) -> None:
    """A UserError where `root` is a cache folder or transferkit's own output (a run, a folder of
    runs, an export): its files are not a dataset's images."""
    from ..files import shown

    if (root / CACHE_TAG).is_file():
        raise UserError(f"{shown(root)} is a cache folder ({CACHE_TAG}), not a dataset")
    if root.is_dir() and is_own_output(root):
        raise UserError(f"{shown(root)} is transferkit's own output (a run or a folder of runs), not a dataset")
    try:
        subfolders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")] if root.is_dir() else []
    except OSError:
        return
    if subfolders and all(is_own_output(p) for p in subfolders):
        raise UserError(f"{shown(root)} is a folder of transferkit runs, not a dataset")


def find_layout(root: Path) -> tuple[Path | None, Path | None, Path | None]:
    """(train folder, val folder, test folder), each None when absent. DATA/train[/val][/test]
    under any usual split name (train or training; val, valid or validation; test), or
    DATA/<class>/ directly (train = DATA). A folder named like a split beside class folders is
    refused rather than taken as a class."""
    if not root.exists():
        raise UserError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"dataset path is not a folder: {root}")
    folders = {p.name.lower(): p for p in class_folders(root).values()}

    def first(names: tuple[str, ...]) -> Path | None:
        return next((folders[n] for n in names if n in folders), None)

    train, val, test = first(TRAIN_NAMES), first(VAL_NAMES), first(TEST_NAMES)
    if train is not None or val is not None or test is not None:
        others = sorted(p.name for n, p in folders.items() if n not in TRAIN_NAMES + VAL_NAMES + TEST_NAMES)
        if train is None and others:
            splits = ", ".join(p.name for p in (val, test) if p is not None)
            raise UserError(f"{root} has class folders and a folder named like a split ({splits}); rename it if it "
                            f"is a class, or use DATA/train/<class> + DATA/{splits.split(',')[0]}/<class>")
        return train, val, test
    return root, None, None


def scan_classes(folder: Path, what: str, unreadable: list[dict] | None = None,
                 min_classes: int = 2) -> dict[str, list[str]]:
    """Class name -> files (folders that cannot be read are added to `unreadable`). Errors: fewer
    than `min_classes` classes, an empty class."""
    classes = class_folders(folder)
    if len(classes) < min_classes:
        found = f" (found: {', '.join(classes)})" if classes else ""
        raise UserError(
            f"{what} folder {folder} needs at least {min_classes} class folder{'s' if min_classes > 1 else ''}{found}; "
            "expected layout: DATA/train/<class>/<image files>"
        )
    files = {name: list_files(path, unreadable) for name, path in classes.items()}
    empty = [name for name, f in files.items() if not f]
    if empty:
        raise UserError(f"empty class folder(s) in {folder}: {', '.join(empty)}")
    return files


def stratified_split(labels: list[int], val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation items: `val_fraction` of each class (at least one where a class
    has 2+ items, never all of it), chosen by a seeded shuffle: same seed, same split."""
    labels_arr = np.asarray(labels)
    is_val = np.zeros(len(labels_arr), dtype=bool)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == c)
        n_val = int(round(len(idx) * val_fraction))
        n_val = min(max(n_val, 1 if len(idx) >= 2 else 0), len(idx) - 1)
        is_val[rng.permutation(idx)[:n_val]] = True
    return is_val


def image_root(data: str | Path, datasets_dir: Path | None = None) -> tuple[Path, int | None]:
    """The image folder for `data`, and the images' native size when the format fixes it: a
    CIFAR-10 python-format folder is written once as PNG class folders into `datasets_dir`
    (default: the cache's)."""
    root = Path(data).expanduser()
    refuse_own_folder(root)
    folder = cifar.find(root) if root.is_dir() else None
    if folder is None:
        return root, None
    if datasets_dir is None:
        from ..cache import Cache

        datasets_dir = Cache().prepare().datasets()
    return cifar.materialize(folder, datasets_dir), cifar.SIDE


def discover(data: str | Path, val_fraction: float = 0.2, seed: int = 0,
             datasets_dir: Path | None = None, labels=None, task: str = "auto",
             label_delim: str | None = None) -> DatasetSplit:
    """Find classes and files of a dataset folder (image class folders, or CIFAR-10's python
    batches), or of the images a label table names (`labels`: a `data.table.LabelTable`; a
    Hugging Face metadata.csv in DATA with file_name and label columns is one too); raise
    `UserError` for a layout we cannot use. `task` (--task): auto (multi-label where an image
    has several labels), single or multilabel (`task.TASKS`); `label_delim`: splits the label
    cells of DATA's metadata.csv (a `labels` table carries its own)."""
    from .table import find_metadata

    if labels is not None:
        root = Path(data).expanduser()
        refuse_own_folder(root)
        if not root.is_dir():
            raise UserError(f"dataset folder not found: {root}")
        return from_table(labels, root, val_fraction, seed, task)
    root, image_size = image_root(data, datasets_dir)
    found = find_metadata(root, label_delim) if root.is_dir() else None
    if found is not None:
        return from_table(found, root, val_fraction, seed, task)
    split = replace(_discover(root, val_fraction, seed), image_size=image_size)
    if task != MULTI:
        return split
    # class folders trained multi-label: each image has its folder's class (and may be predicted to have none)
    k = len(split.classes)
    return replace(split, task=Task(MULTI), train=multi_samples([(s.path, [s.label]) for s in split.train], k),
                   val=multi_samples([(s.path, [s.label]) for s in split.val], k))


def from_table(labels, root: Path, val_fraction: float, seed: int, task: str = "auto") -> DatasetSplit:
    """The images and labels a table names (`data.table`), as folder discovery would give them:
    classes sorted, each class's images by path; its split column's train and val, else the same
    seeded stratified split. Its test rows are not trained on (as DATA/test). Multi-label (an
    image with several labels, or `task` multilabel): images by path, split and folded by their
    rarest label (`task.stratum`)."""
    from .table import read_table

    table = read_table(labels, root)
    if not any(table.rows.values()) and table.missing:
        raise UserError(f"--labels {labels.file}: none of the {len(table.missing)} image(s) it lists is there, e.g. "
                        f"{table.missing[0]['path']}: its paths are relative to DATA ({root}) or to its own folder")
    if table.has_split and not table.rows.get("train"):
        raise UserError(f"--labels {labels.file}: no row is in the training split")
    train_rows = table.rows.get("train", []) + table.rows.get("any", [])
    val_rows = table.rows.get("val", [])
    kind = task_of(task, [names for rows in table.rows.values() for _, names, _ in rows], labels.label_delim)
    if not kind.multi:
        _single_label_rows(labels.file, table, task)
    classes = sorted({label for _, names, _ in train_rows for label in names})
    if len(classes) < 2:
        raise UserError(f"--labels {labels.file}: the training rows name {len(classes)} class(es); at least 2 are "
                        "needed")
    unknown = sorted({label for _, names, _ in val_rows for label in names} - set(classes))
    if unknown:
        raise UserError(f"--labels {labels.file}: class(es) only in the validation rows: {', '.join(unknown)}")

    def samples(rows) -> list[Sample]:
        return table_samples(rows, classes, kind.multi)

    if table.has_split and val_rows:
        return DatasetSplit(classes, samples(train_rows), samples(val_rows), "table", skipped=table.missing, task=kind,
                            merged=len({p for p, _, _ in table.merged}))
    every = samples(train_rows)
    is_val = stratified_split([s.label for s in every], val_fraction, seed)
    train = [s for s, v in zip(every, is_val) if not v]
    val = [s for s, v in zip(every, is_val) if v]
    if not val:
        raise UserError("too few images to hold out a validation split; add validation rows (a split column)")
    return DatasetSplit(classes, train, val, "split", skipped=table.missing, task=kind,
                        merged=len({p for p, _, _ in table.merged}))


def _single_label_rows(file: str, table, task: str) -> None:
    """Single-label data: every image has exactly one label (a row with none, or an image listed
    again with another label, is one error naming its lines)."""
    if table.merged:
        path, first, again = table.merged[0]
        raise UserError(f"--labels {file}: {shown(path)} is labelled on line {first} and again, differently, on line "
                        f"{again}: with --task {task} an image has one label (leave --task out, or give --task "
                        f"{MULTI}, and such rows are one image with every label they give)")
    empty = next(((p, line) for rows in table.rows.values() for p, names, line in rows if not names), None)
    if empty is not None:
        raise UserError(f"--labels {file}, line {empty[1]}: the label cell is empty for {shown(empty[0])} (an image "
                        f"with no label is allowed in multi-label data: --task {MULTI})")


def _discover(root: Path, val_fraction: float, seed: int) -> DatasetSplit:
    train_dir, val_dir, _ = find_layout(root)
    if train_dir is None:
        raise UserError(f"{root} has no training folder (train/ or training/) beside {val_dir.name if val_dir else 'test'}/; "
                        "expected layout: DATA/train/<class>/<image files>")
    unreadable: list[dict] = []
    train_files = scan_classes(train_dir, "train", unreadable)
    classes = sorted(train_files)
    if val_dir is not None:
        val_files = scan_classes(val_dir, "val", unreadable)
        only_train = sorted(set(train_files) - set(val_files))
        only_val = sorted(set(val_files) - set(train_files))
        if only_train or only_val:
            parts = []
            if only_train:
                parts.append(f"only in train: {', '.join(only_train)}")
            if only_val:
                parts.append(f"only in val: {', '.join(only_val)}")
            raise UserError(f"train and val class folders differ ({'; '.join(parts)})")
        train = [Sample(p, i) for i, c in enumerate(classes) for p in train_files[c]]
        val = [Sample(p, i) for i, c in enumerate(classes) for p in val_files[c]]
        return DatasetSplit(classes, train, val, "folder", skipped=unreadable)
    every = [Sample(p, i) for i, c in enumerate(classes) for p in train_files[c]]
    is_val = stratified_split([s.label for s in every], val_fraction, seed)
    train = [s for s, v in zip(every, is_val) if not v]
    val = [s for s, v in zip(every, is_val) if v]
    if not val:
        raise UserError("too few images to hold out a validation split; add a val/ folder")
    return DatasetSplit(classes, train, val, "split", skipped=unreadable)


def eval_files(data: str | Path, classes: list[str], datasets_dir: Path | None = None, labels=None,
               task: Task | None = None) -> list[Sample]:
    """Labelled files for `transferkit eval DATA`: DATA's val folder if present, else its test
    folder, else DATA's class folders (CIFAR-10 batches: test_batch); with a label table
    (`labels`, or DATA's metadata.csv), its val rows, else its test rows, else all of them. Any of
    the model's classes may be missing (evaluated by name on those present); a class the model does
    not know is refused. A multi-label model (`task`) is evaluated on label sets: a table's
    cells split on its delimiter (the run's, unless the table names one), class folders as one
    label each."""
    from .table import find_metadata, read_table

    task = task or Task()
    root = Path(data).expanduser()
    labels = labels or (find_metadata(root, task.delimiter) if root.is_dir() else None)
    if labels is not None:
        if task.multi and labels.label_delim is None:
            labels = replace(labels, label_delim=task.delimiter)
        table = read_table(labels, root)
        rows = table.rows.get("val") or table.rows.get("test") or table.rows.get("any") or table.rows.get("train", [])
        unknown = sorted({label for _, names, _ in rows for label in names} - set(classes))
        if unknown:
            raise UserError(f"class(es) the model was not trained on: {', '.join(unknown)} "
                            f"(model classes: {', '.join(classes)})")
        if task.multi:
            return table_samples(rows, classes, True)
        if table.merged:
            raise UserError(f"{shown(labels.file)} lists {table.merged[0][0]} with several labels: the model is "
                            "single-label")
        empty = next(((p, line) for p, names, line in rows if not names), None)
        if empty is not None:
            raise UserError(f"{shown(labels.file)}, line {empty[1]}: the label cell is empty for {empty[0]}")
        return table_samples(rows, classes, False)
    root, _ = image_root(data, datasets_dir)
    train_dir, val_dir, test_dir = find_layout(root)
    folder = val_dir or test_dir or train_dir
    files = scan_classes(folder, "evaluation", min_classes=1)
    unknown = sorted(set(files) - set(classes))
    if unknown:
        raise UserError(
            f"class folder(s) the model was not trained on: {', '.join(unknown)} "
            f"(model classes: {', '.join(classes)})"
        )
    index = {c: i for i, c in enumerate(classes)}
    if task.multi:
        return multi_samples([(p, [index[c]]) for c in sorted(files) for p in files[c]], len(classes))
    return [Sample(p, index[c]) for c in sorted(files) for p in files[c]]

