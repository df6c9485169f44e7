"""doctor's report: doctor.json's object made from what the checks found (`build_report`), its
console summary (`summary_lines`) and the exclude list for `train --exclude` (`exclude_text`).
What `diagnose` writes and the page (`page`) shows."""

from __future__ import annotations

from pathlib import Path

from ..config import DoctorOptions
from . import checks, copies


def build_report(data: Path, options: DoctorOptions, split, paths, labels, splits, found: dict, timings: dict) -> dict:
    classes = split.classes
    samples = split.train + split.val  # (the order of `paths`: checks.samples_of)
    multi = split.task.multi

    def who(i: int) -> dict:  # (multi-label: its labels joined by the data's delimiter, "" for none)
        return {"path": paths[i], "label": split.names(samples[i]) if multi else classes[labels[i]],
                "split": str(splits[i])}

    def names(indices) -> list[str]:
        return [classes[c] for c in indices]

    def issue(f: dict) -> dict:
        common = {**who(f["i"]), "score": f["score"],
                  "evidence": [{**who(e["i"]), "similarity": e["similarity"]} for e in f["evidence"]]}
        if not multi:
            return {**common, "suggested": classes[f["suggested"]]}
        return {**common, "suggested": split.task.joiner.join(names(f["suggested"])),
                "suggested_labels": names(f["suggested"]), "missing": names(f["missing"]),
                "extra": names(f["extra"])}

    def pairs(items):
        return [{"kind": p["kind"], "similarity": p["similarity"], **({"match": p["match"]} if "match" in p else {}),
                 "a": who(p["a"]), "b": who(p["b"])} for p in items]

    return {
        "data": str(data), "model": options.model, "images": len(paths), "classes": classes,
        "val_source": split.val_source,
        "thresholds": {"same_scene_cosine": options.near_threshold, "copy_candidate_cosine": copies.CANDIDATE,
                       "copy_match": copies.COPY_MATCH, "copy_match_plus_cosine": copies.COPY_SUM,
                       "outlier_z": checks.OUTLIER_Z, "small_class": checks.SMALL_CLASS},
        "unreadable": split.skipped,
        "exact_duplicates": pairs(found["exact_duplicates"]),
        "near_duplicates": pairs(found["near_duplicates"]),
        "same_scene": pairs(found["same_scene"]),
        "groups": found["groups"],
        "task": split.task.kind,
        "label_issues": [issue(f) for f in found["label_issues"]],
        "label_issue_folds": found["label_folds"],
        "outliers": [{**who(f["i"]), "distance": f["distance"], "z": f["z"]} for f in found["outliers"]],
        "image_issues": {kind: [{**who(f["i"]), "detail": f["detail"]} for f in items]
                         for kind, items in found["image_issues"].items()},
        "balance": checks.balance_multilabel(split.targets(samples), splits, classes) if multi else
        checks.balance(labels, splits, classes),
        "timings": timings,
    }


def summary_lines(report: dict) -> list[str]:
    """One line per kind of problem with its count and the worst examples ("!" first: a warning)."""
    def names(items, key=lambda x: x["path"]):
        shown = [Path(key(x)).name for x in items[:3]]
        return ": " + ", ".join(shown) + (", ..." if len(items) > 3 else "") if shown else ""

    lines = [f"{report['images']} images in {len(report['classes'])} classes ({report['val_source']} validation)"]
    for kind, label in (("exact_duplicates", "exact duplicates"), ("near_duplicates", "near duplicates")):
        items = report[kind]
        by = {k: [p for p in items if p["kind"] == k] for k in ("leakage", "two labels", "within class")}
        lines.append(f"{'!' if by['leakage'] or by['two labels'] else ''}{label}: {len(items)} pair(s) "
                     f"({len(by['leakage'])} across train/val, {len(by['two labels'])} with two labels, "
                     f"{len(by['within class'])} within a class)" + names(items, lambda p: p["b"]["path"]))
    scene = report.get("same_scene", [])
    if scene:
        across = sum(p["kind"] != "within class" for p in scene)
        lines.append(f"same scene (distinct shots, not copies): {len(scene)} pair(s), {across} across train/val or "
                     "labels; kept together in train's cross-validation" + names(scene, lambda p: p["b"]["path"]))
    issues = report["label_issues"]
    lines.append(f"likely label errors: {len(issues)}" + (": " + ", ".join(
        f"{Path(x['path']).name} ({x['label'] or '(none)'} -> {x['suggested'] or '(none)'}?)" for x in issues[:3])
        + (", ..." if len(issues) > 3 else "") if issues else ""))
    lines.append(f"outliers: {len(report['outliers'])}" + names(report["outliers"]))
    for kind, items in report["image_issues"].items():
        if items:
            lines.append(f"{kind.replace('_', ' ')} images: {len(items)}" + names(items))
    if report["unreadable"]:
        lines.append(f"!unreadable files: {len(report['unreadable'])}" + names(report["unreadable"]))
    b = report["balance"]
    lines.append(f"balance: largest/smallest class {b['max_min_ratio']:g}x" +
                 (f"; small classes: {', '.join(b['small_classes'])}" if b["small_classes"] else ""))
    lines += [f"  remedy: {r}" for r in b["remedies"]]
    return lines


EXCLUDE_HEAD = b"# transferkit doctor "  # how an exclude list starts: doctor replaces only its own


def exclude_text(report: dict) -> str:
    """The files doctor would leave out, for `train --exclude`: the second file of each duplicate
    pair (the val copy of a leak), both files of an image with two labels, likely label errors,
    outliers and blank images. One path per line, each after a comment saying why."""
    chosen: dict[str, str] = {}
    for kind in ("exact_duplicates", "near_duplicates"):
        for p in report[kind]:
            if p["kind"] == "two labels":
                chosen.setdefault(p["a"]["path"], f"{kind}: also labelled {p['b']['label']} ({p['b']['path']})")
                chosen.setdefault(p["b"]["path"], f"{kind}: also labelled {p['a']['label']} ({p['a']['path']})")
            else:
                dropped, kept = (p["a"], p["b"]) if p["a"]["split"] == "val" and p["b"]["split"] == "train" else (p["b"], p["a"])
                chosen.setdefault(dropped["path"], f"{kind} ({p['kind']}) of {kept['path']}")
    for x in report["label_issues"]:
        chosen.setdefault(x["path"], f"likely label error: labelled {x['label']}, looks like {x['suggested']}")
    for x in report["outliers"]:
        chosen.setdefault(x["path"], f"outlier (z {x['z']})")
    for x in report["image_issues"].get("blank", []):
        chosen.setdefault(x["path"], f"blank: {x['detail']}")
    lines = [f"{EXCLUDE_HEAD.decode()}{report['data']}: {len(chosen)} file(s) to leave out (train --exclude THIS_FILE)"]
    for path, why in chosen.items():
        lines += [f"# {why}", path]
    return "\n".join(lines) + "\n"
