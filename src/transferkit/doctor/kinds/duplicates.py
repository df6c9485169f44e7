"""Exact duplicates (the same bytes) and near duplicates (the same picture, resized, recompressed
or lightly edited: `doctor.copies`): across train and val (leakage), with two labels, or within
a class."""

from __future__ import annotations

from .. import checks
from ..html import pair, section
from . import Evidence, Kind, pair_rows, register, shown_names, studio_pairs

PAIR_KINDS = ("leakage", "two labels", "within class")


class Duplicates(Kind):
    pairs = True

    def __init__(self, name: str, order: int, label: str, title: str, studio_name: str):
        self.name, self.order, self.label, self.title, self.studio_name = name, order, label, title, studio_name

    def rows(self, found, who):
        return pair_rows(found, who)

    def summary(self, report):
        items = report.get(self.name, [])
        by = {k: [p for p in items if p["kind"] == k] for k in PAIR_KINDS}
        return [f"{'!' if by['leakage'] or by['two labels'] else ''}{self.label}: {len(items)} pair(s) "
                f"({len(by['leakage'])} across train/val, {len(by['two labels'])} with two labels, "
                f"{len(by['within class'])} within a class)" + shown_names(items, lambda p: p["b"]["path"])]

    def sections(self, report):
        return [section(self.title, report.get(self.name, []), pair)]

    def excluded(self, report):
        """Both files of a pair with two labels; otherwise the second (the val copy of a leak)."""
        chosen = []
        for p in report.get(self.name, []):
            if p["kind"] == "two labels":
                chosen.append((p["a"]["path"], f"{self.name}: also labelled {p['b']['label']} ({p['b']['path']})"))
                chosen.append((p["b"]["path"], f"{self.name}: also labelled {p['a']['label']} ({p['a']['path']})"))
            else:
                dropped, kept = (p["a"], p["b"]) if p["a"]["split"] == "val" and p["b"]["split"] == "train" else (p["b"], p["a"])
                chosen.append((dropped["path"], f"{self.name} ({p['kind']}) of {kept['path']}"))
        return chosen

    def studio(self, report, image):
        return {self.studio_name: studio_pairs(report, self.name, image)}


class Exact(Duplicates):
    def find(self, evidence: Evidence):
        return checks.exact_duplicates(evidence.hashes, evidence.labels, evidence.splits)


class Near(Duplicates):
    def find(self, evidence: Evidence):
        return look_alikes(evidence)[0]


def look_alikes(evidence: Evidence) -> tuple[list[dict], list[dict]]:
    """(near copies, same-scene pairs): `checks.look_alikes`, once for both kinds; byte-identical
    pairs and blank images (all alike) left out."""
    def work():
        blank = {f["i"] for f in evidence.result("image_issues").get("blank", [])}
        return checks.look_alikes(evidence.sims, evidence.idx, evidence.thumbs, evidence.labels, evidence.splits,
                                  evidence.result("exact_duplicates"), blank, evidence.same_scene)
    return evidence.shared("look_alikes", work)


register(Exact("exact_duplicates", 10, "exact duplicates", "Exact duplicates", "exact copies"))
register(Near("near_duplicates", 20, "near duplicates", "Near duplicates", "near copies"))
