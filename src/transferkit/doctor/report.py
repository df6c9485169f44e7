"""doctor's report: doctor.json's object made from what the checks found (`build_report`), its
console summary (`summary_lines`) and the exclude list for `train --exclude` (`exclude_text`).
What `diagnose` writes and the page (`page`) shows."""

from __future__ import annotations

from pathlib import Path

from ..config import DoctorOptions
from . import checks, copies, kinds


def build_report(data: Path, options: DoctorOptions, split, paths, labels, splits, found: dict, timings: dict) -> dict:
    """doctor.json's object: every kind's rows (`kinds`), the class balance, the thresholds used."""
    who = kinds.Who(split, paths, labels, splits)
    samples = split.train + split.val  # (the order of `paths`: checks.samples_of)
    return {
        "data": str(data), "model": options.model, "images": len(paths), "classes": split.classes,
        "val_source": split.val_source,
        "thresholds": {"same_scene_cosine": options.near_threshold, "copy_candidate_cosine": copies.CANDIDATE,
                       "copy_match": copies.COPY_MATCH, "copy_match_plus_cosine": copies.COPY_SUM,
                       "outlier_z": checks.OUTLIER_Z, "small_class": checks.SMALL_CLASS},
        "unreadable": split.skipped,
        **{kind.name: kind.rows(found[kind.name], who) for kind in kinds.KINDS},
        "groups": found["groups"],
        "task": split.task.kind,
        "label_issue_folds": found["label_folds"],
        "balance": checks.balance_multilabel(split.targets(samples), splits, split.classes) if split.task.multi else
        checks.balance(labels, splits, split.classes),
        "timings": timings,
    }


def summary_lines(report: dict) -> list[str]:
    """One line per kind of problem with its count and the worst examples ("!" first: a warning)."""
    lines = [f"{report['images']} images in {len(report['classes'])} classes ({report['val_source']} validation)"]
    for kind in kinds.KINDS:
        lines += kind.summary(report)
    if report["unreadable"]:
        lines.append(f"!unreadable files: {len(report['unreadable'])}" + kinds.shown_names(report["unreadable"]))
    b = report["balance"]
    lines.append(f"balance: largest/smallest class {b['max_min_ratio']:g}x" +
                 (f"; small classes: {', '.join(b['small_classes'])}" if b["small_classes"] else ""))
    lines += [f"  remedy: {r}" for r in b["remedies"]]
    return lines


EXCLUDE_HEAD = b"# transferkit doctor "  # how an exclude list starts: doctor replaces only its own


def exclude_text(report: dict) -> str:
    """The files doctor would leave out, for `train --exclude`: those each kind names (`Kind.excluded`:
    the second file of each duplicate pair (the val copy of a leak), both files of an image with
    two labels, likely label errors, outliers and blank images). One path per line, each after a
    comment saying why (the first kind's that names it)."""
    chosen: dict[str, str] = {}
    for kind in kinds.KINDS:
        for path, why in kind.excluded(report):
            chosen.setdefault(path, why)
    lines = [f"{EXCLUDE_HEAD.decode()}{report['data']}: {len(chosen)} file(s) to leave out (train --exclude THIS_FILE)"]
    for path, why in chosen.items():
        lines += [f"# {why}", path]
    return "\n".join(lines) + "\n"
