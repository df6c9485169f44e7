"""The runs under a folder, as a table (`transferkit runs [DIR]`), and two runs side by side
(`transferkit runs compare A B`): settings diff, metrics and per-class deltas, and the validation
images one gets right and the other wrong. Read from the run folders' own files (config.yaml,
results.json, metrics.json, predictions.csv); a damaged or unfinished folder is listed as such.
No torch here."""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


from .errors import UserError
from .files import Record, read_json_object, read_yaml_object, sweep_temporary

# What makes a folder a run's (any of them): a finished run has all of the first three.
RUN_FILES = ("model.json", "results.json", "config.yaml", "checkpoint.pt")
# What a finished run writes into its folder besides config.yaml (and, while unfinished, checkpoint.pt)
OUTPUT_FILES = ("model.safetensors", "model.json", "results.json", "metrics.json", "metrics.csv", "predictions.csv",
                "misclassified.csv", "split.json", "report.html", "curves.png", "confusion_matrix.png",
                "confusion_matrix_normalized.png", "predictions.png", "top_losses.png", "lr_find.png", "lr_find.json",
                "tracking.json", "reliability.png", "pr_curves.png", "cooccurrence.png", "cooccurrence_predicted.png",
                "heatmaps.json")
# folders of a run's own files, each with the pattern of its files: the report's heatmaps and the
# model's conversions (`engines.convert.carry`)
OWN_FOLDERS = {"heatmaps": "[0-9][0-9][0-9].jpg", "converted": "*.tkx"}
SORT_KEYS = ("when", "name", "val_acc", "balanced_accuracy", "val_map", "wall_s", "cpu_s", "size_mb")


@dataclass
class RunRow:
    """One run folder as `runs` lists it."""

    path: str
    name: str
    status: str  # finished | interrupted | unfinished (a checkpoint, no results) | incomplete (no model) | damaged
    when: float | None = None  # when it ended (results.json written) or started (config.yaml), Unix time
    data: str | None = None
    data_fingerprint: str | None = None
    backbone: str | None = None
    strategy: str | None = None  # the strategy kept (auto: the one it chose)
    val_acc: float | None = None
    balanced_accuracy: float | None = None
    val_map: float | None = None  # multi-label runs: the val mAP (macro); their val_acc is the subset accuracy
    wall_s: float | None = None
    cpu_s: float | None = None  # of the command's process and its ended children
    size_mb: float = 0.0
    problem: str | None = None  # why it is damaged or unfinished
    parent: str | None = None  # the run it started from (train --from), its folder

    def to_dict(self) -> dict:
        return asdict(self)


def is_run(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).is_file() for name in RUN_FILES)


def find_runs(root: str | Path) -> list[Path]:
    """The run folders in `root` (its subfolders that hold a run's files), or `root` itself if it is one."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"no such folder: {root}")
    if is_run(root):
        return [root]
    try:
        return sorted(p for p in root.iterdir() if not p.name.startswith(".") and is_run(p))
    except OSError as exc:
        raise UserError(f"cannot list {root}: {exc.strerror or exc}") from None


def read_run(folder: Path) -> RunRow:
    """One run folder's row; never raises for what is in the folder."""
    row = RunRow(str(folder), folder.name, "finished", size_mb=_size_mb(folder))
    cfg = read_yaml_object(folder / "config.yaml")
    if isinstance(cfg, dict):
        row.data, row.backbone, row.strategy = _str(cfg.get("data")), _str(cfg.get("model")), _str(cfg.get("strategy"))
        row.parent = _str(cfg.get("from_run"))
        row.when = _mtime(folder / "config.yaml")
    results_file = folder / "results.json"
    if not results_file.is_file():
        if (folder / "checkpoint.pt").is_file():
            row.status = "unfinished"
            row.problem = f"training did not finish (checkpoint.pt): `transferkit train --resume {folder}` continues it"
        elif cfg is not None and not (folder / "model.json").exists():
            # the command began (config.yaml is its first file) and ended before a model: stopped,
            # failed or killed during feature extraction, or still running
            row.status = "incomplete"
            row.problem = "no model: training stopped or failed before one was saved (or is still running)"
        else:
            row.status, row.problem = "damaged", "no results.json"
        return row
    results = read_json_object(results_file)
    if not isinstance(results, dict) or not isinstance(results.get("val_acc"), (int, float)):
        row.status, row.problem = "damaged", "results.json cannot be read"
        return row
    row.when = _num(results.get("finished_at")) or _mtime(results_file)
    row.val_acc = _num(results.get("val_acc"))
    row.balanced_accuracy = _num(results.get("balanced_accuracy"))
    summary = results.get("metrics") if isinstance(results.get("metrics"), dict) else {}
    row.val_map = _num(summary.get("map_macro"))
    row.wall_s = _num(results.get("wall_s"))
    row.cpu_s = _num(results.get("cpu_s"))
    row.backbone = _str(results.get("backbone")) or row.backbone
    row.strategy = _str(results.get("strategy")) or row.strategy
    data = results.get("data") if isinstance(results.get("data"), dict) else {}
    row.data = _str(data.get("path")) or row.data
    row.data_fingerprint = _str(data.get("fingerprint"))
    if results.get("interrupted"):
        row.status = "interrupted"
    if not (folder / "model.safetensors").is_file() or not (folder / "model.json").is_file():
        row.status, row.problem = "damaged", "the model (model.safetensors, model.json) is missing"
    elif (folder / "checkpoint.pt").is_file():
        row.status = "unfinished"
        row.problem = f"interrupted; `transferkit train --resume {folder}` continues it"
    return row


def remove_own_folders(folder: Path) -> None:
    """The run's files in its own folders (`OWN_FOLDERS`), and each folder if that empties it
    (anything else put there is kept)."""
    for name, pattern in OWN_FOLDERS.items():
        sub = folder / name
        if sub.is_dir() and not sub.is_symlink():
            for path in sub.glob(pattern):
                path.unlink(missing_ok=True)
            try:
                sub.rmdir()
            except OSError:
                pass


def remove_run(folder: Path) -> list[str]:
    """Delete the run in `folder`: the files and folders transferkit wrote there (its outputs,
    config.yaml, a checkpoint, export/, eval-*/, tensorboard/), then the folder if nothing else is
    left. Returns the names of what was left (files of the user's: never deleted)."""
    import shutil

    from .data.discover import OWN_MARKER, is_own_output

    if not is_run(folder):
        raise UserError(f"{folder} is not a run folder")
    for name in (*OUTPUT_FILES, "config.yaml", "checkpoint.pt", OWN_MARKER):
        (folder / name).unlink(missing_ok=True)
    remove_own_folders(folder)
    for sub in [folder / "export", folder / "tensorboard", *folder.glob("eval-*")]:
        if sub.is_dir() and not sub.is_symlink() and (sub.name == "tensorboard" or is_own_output(sub)):
            shutil.rmtree(sub)
    sweep_temporary(folder)  # (what a killed run was writing)
    left = sorted(p.name for p in folder.iterdir())
    if not left:
        folder.rmdir()
    return left


def list_runs(root: str | Path = "runs", sort: str = "when") -> list[RunRow]:
    """Every run in `root`, sorted by `sort` (one of SORT_KEYS; numbers: the highest first, the
    time: the latest last, unknown values at the end)."""
    if sort not in SORT_KEYS:
        raise UserError(f"--sort must be one of {', '.join(SORT_KEYS)} (got '{sort}')")
    rows = [read_run(p) for p in find_runs(root)]
    if sort == "name":
        return sorted(rows, key=lambda r: r.name)
    present = [r for r in rows if getattr(r, sort) is not None]
    missing = [r for r in rows if getattr(r, sort) is None]
    return sorted(present, key=lambda r: getattr(r, sort), reverse=sort != "when") + missing


def format_runs(rows: list[RunRow]) -> str:
    from .files import shown

    if not rows:
        return "no runs"
    multi = any(r.val_map is not None for r in rows)  # (a column for multi-label runs' mAP where there are any)
    parents = any(r.parent for r in rows)  # (a column saying which run each started from, where any did)
    header = ["run", "when", "data", *(["from"] if parents else []), "backbone", "strategy", "val acc", "bal acc",
              *(["mAP"] if multi else []), "wall s", "CPU s", "MB", "status"]
    table = [header] + [[shown(r.name), _when(r.when), shown(Path(r.data).name) if r.data else "-",
                         *([shown(Path(r.parent).name) if r.parent else "-"] if parents else []),
                         shown(r.backbone or "-"), shown(r.strategy or "-"), _fmt(r.val_acc), _fmt(r.balanced_accuracy),
                         *([_fmt(r.val_map)] if multi else []),
                         _fmt(r.wall_s, ".1f"), _fmt(r.cpu_s, ".1f"), f"{r.size_mb:.1f}", r.status] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    right = set(range(5 + parents, len(header) - 1))
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
             for line in table]
    problems = [f"{r.name}: {r.problem}" for r in rows if r.problem]
    return "\n".join(lines + problems)


# -- two runs side by side -----------------------------------------------------------------------

@dataclass
class Comparison:
    """Two runs: their settings that differ, their metrics, per-class metrics, and the validation
    images one gets right and the other wrong (where both measured the same images)."""

    a: RunRow
    b: RunRow
    settings: dict[str, tuple] = field(default_factory=dict)  # option -> (a's, b's)
    metrics: dict[str, tuple] = field(default_factory=dict)  # name -> (a's, b's)
    per_class: dict[str, dict[str, tuple]] = field(default_factory=dict)  # class -> metric -> (a's, b's)
    same_val: bool = False  # both measured the same validation images with the same labels
    only_a_right: list[str] = field(default_factory=list)
    only_b_right: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"a": self.a.to_dict(), "b": self.b.to_dict(), "settings": self.settings, "metrics": self.metrics,
                "per_class": self.per_class, "same_val": self.same_val, "only_a_right": self.only_a_right,
                "only_b_right": self.only_b_right, "notes": self.notes}


def compare(a: str | Path, b: str | Path) -> Comparison:
    """Compare the finished runs in folders `a` and `b`."""
    folders = []
    for given in (a, b):
        folder = Path(given).expanduser()
        if not is_run(folder):
            raise UserError(f"{folder} is not a run folder (no {', '.join(RUN_FILES[:3])})")
        folders.append(folder)
    rows = [read_run(f) for f in folders]
    for row in rows:
        if row.status in ("damaged", "unfinished", "incomplete"):
            raise UserError(f"cannot compare {row.path}: {row.problem}")
    out = Comparison(*rows)
    configs = [read_yaml_object(f / "config.yaml") or Record() for f in folders]
    results = [read_json_object(f / "results.json") or Record() for f in folders]
    _compare_settings(out, configs, results)
    metrics = [read_json_object(f / "metrics.json") or Record() for f in folders]
    _compare_metrics(out, results, metrics)
    if out.a.data_fingerprint and out.b.data_fingerprint and out.a.data_fingerprint != out.b.data_fingerprint:
        out.notes.append("the runs were trained or measured on different images (their data fingerprints differ): "
                         "the deltas mix the models' differences with the data's")
    predictions = [_predictions(f) for f in folders]
    if all(p is not None for p in predictions):
        (pa, pb) = predictions
        out.same_val = set(pa) == set(pb) and all(pa[k][0] == pb[k][0] for k in pa)
        if out.same_val:
            out.only_a_right = sorted(k for k in pa if pa[k][0] == pa[k][1] and pb[k][0] != pb[k][1])
            out.only_b_right = sorted(k for k in pb if pb[k][0] == pb[k][1] and pa[k][0] != pa[k][1])
        else:
            out.notes.append("the runs were measured on different validation images: no per-image comparison")
    return out


def _compare_settings(out: Comparison, configs: list[Record], results: list[Record]) -> None:
    """The options that differ (those only one of two strategies takes, in a note), and what auto kept."""
    other_strategies = configs[0].get("strategy") != configs[1].get("strategy")
    only_one = []
    for key in sorted(set(configs[0]) | set(configs[1])):
        if key in ("out", "name", "resume", "quiet"):
            continue
        va, vb = configs[0].get(key), configs[1].get(key)
        if va == vb:
            continue
        if other_strategies and (va is None) != (vb is None):
            only_one.append(key)  # an option one strategy takes and the other does not
        else:
            out.settings[key] = (va, vb)
    if only_one:
        out.notes.append(f"options only one of the two strategies takes: {', '.join(only_one)}")
    for key in ("strategy", "backbone"):  # what auto chose, beside what was asked for
        if results[0].get(key) != results[1].get(key):
            out.settings[f"kept {key}"] = (results[0].get(key), results[1].get(key))


def _compare_metrics(out: Comparison, results: list[Record], metrics: list[Record]) -> None:
    """Each measure either run has, side by side, and the per-class rows."""
    # (multi-label runs: the mAP rows, and val accuracy is the subset accuracy; single-label: absent)
    for name, get in (("mAP (macro)", lambda r, m: m.get("map_macro")),
                      ("mAP (micro)", lambda r, m: m.get("map_micro")),
                      ("micro F1", lambda r, m: m.record("micro_avg").get("f1")),
                      ("Hamming loss", lambda r, m: m.get("hamming_loss")),
                      ("val accuracy", lambda r, m: r.get("val_acc")),
                      ("balanced accuracy", lambda r, m: r.get("balanced_accuracy")),
                      ("macro F1", lambda r, m: m.record("macro_avg").get("f1")),
                      ("top-5 accuracy", lambda r, m: m.get("top5_accuracy")),
                      ("val images", lambda r, m: r.get("num_val")),
                      ("train images", lambda r, m: r.get("num_train")),
                      ("wall s", lambda r, m: r.get("wall_s")),
                      ("CPU s", lambda r, m: r.get("cpu_s"))):
        pair = tuple(_num(get(r, m)) for r, m in zip(results, metrics))
        if any(v is not None for v in pair):
            out.metrics[name] = pair
    per_class = [m.record("per_class") for m in metrics]
    for cls in list(dict.fromkeys([*per_class[0], *per_class[1]])):
        out.per_class[cls] = {k: tuple(pc.record(cls).number(k) for pc in per_class)
                              for k in ("precision", "recall", "f1", "support")}


def format_comparison(c: Comparison, limit: int = 10) -> str:
    from .files import shown

    a, b = shown(c.a.name), shown(c.b.name)
    lines = [f"A: {shown(c.a.path)}", f"B: {shown(c.b.path)}", ""]
    if c.settings:
        width = max(len(k) for k in c.settings)
        lines.append("settings that differ (A -> B):")
        lines += [f"  {k:<{width}}  {shown(str(va))} -> {shown(str(vb))}" for k, (va, vb) in c.settings.items()]
    else:
        lines.append("settings: the same")
    lines += ["", f"{'metric':<18} {'A':>10} {'B':>10} {'B - A':>10}"]
    for name, (va, vb) in c.metrics.items():
        fmt = ".1f" if name in ("wall s", "CPU s") else ".0f" if name.endswith("images") else ".4f"
        lines.append(f"{name:<18} {_fmt(va, fmt):>10} {_fmt(vb, fmt):>10} {_delta(va, vb, fmt):>10}")
    if c.per_class:
        width = max(8, *(len(shown(k)) for k in c.per_class))
        lines += ["", f"{'class':<{width}} {'F1 A':>7} {'F1 B':>7} {'delta':>7} {'recall A':>9} {'recall B':>9} "
                      f"{'delta':>7} {'support':>8}"]
        for cls, m in c.per_class.items():
            (fa, fb), (ra, rb), (sa, sb) = m["f1"], m["recall"], m["support"]
            support = _fmt(sa, ".0f") if sa == sb else f"{_fmt(sa, '.0f')}/{_fmt(sb, '.0f')}"
            lines.append(f"{shown(cls):<{width}} {_fmt(fa, '.3f'):>7} {_fmt(fb, '.3f'):>7} {_delta(fa, fb, '.3f'):>7} "
                         f"{_fmt(ra, '.3f'):>9} {_fmt(rb, '.3f'):>9} {_delta(ra, rb, '.3f'):>7} {support:>8}")
    if c.same_val:
        for who, names in ((f"A ({a}) gets right, B wrong", c.only_a_right), (f"B ({b}) gets right, A wrong",
                                                                              c.only_b_right)):
            lines += ["", f"{who}: {len(names)} image(s)"]
            lines += [f"  {shown(n)}" for n in names[:limit]]
            if len(names) > limit:
                lines.append(f"  ... and {len(names) - limit} more (--json lists them all)")
    lines += [f"note: {n}" for n in c.notes]
    return "\n".join(lines)


# -- reading a run's files, never raising ---------------------------------------------------------

def read_predictions(run_dir: Path) -> list[dict] | None:
    """The rows of a run's predictions.csv (its validation images): path, actual, predicted,
    probability (multi-label runs: the sets joined, and each image's `loss`; a run with an
    out-of-distribution score: each image's `ood_score`); None where it has none or it cannot be read."""
    try:
        with open(run_dir / "predictions.csv", newline="") as f:
            return [{"path": r["path"], "actual": r["actual"], "predicted": r["predicted"],
                     "probability": float(r["probability"] or 0),
                     **({"loss": float(r["loss"] or 0)} if r.get("loss") is not None else {}),
                     **({"ood_score": float(r["ood_score"])} if r.get("ood_score") else {})}
                    for r in csv.DictReader(f)]
    except (OSError, KeyError, ValueError, csv.Error):
        return None


def _predictions(run_dir: Path) -> dict[str, tuple[str, str]] | None:
    """{image path: (actual, predicted)} of a run's predictions.csv, or None."""
    rows = read_predictions(run_dir)
    return None if rows is None else {r["path"]: (r["actual"], r["predicted"]) for r in rows}


def _size_mb(folder: Path) -> float:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total / 1e6


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _num(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        else None


def _str(value) -> str | None:
    return value if isinstance(value, str) and value else None


def _fmt(value: float | None, fmt: str = ".4f") -> str:
    return "-" if value is None else f"{value:{fmt}}"


def _delta(a: float | None, b: float | None, fmt: str) -> str:
    return "-" if a is None or b is None else f"{b - a:+{fmt}}"


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t is not None else "-"
