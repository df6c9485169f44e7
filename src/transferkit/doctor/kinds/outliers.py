"""Outliers: images far from all others (a robust z-score of the mean distance to their nearest
neighbours past `checks.OUTLIER_Z`): another subject, a wrong file, a rare view."""

from __future__ import annotations

from .. import checks
from ..html import section, single
from . import Evidence, Kind, register, shown_names, studio_singles


class Outliers(Kind):
    name, order, phase = "outliers", 50, "conclude"

    def find(self, evidence: Evidence):
        return checks.outliers(evidence.sims)

    def rows(self, found, who):
        return [{**who(f["i"]), "distance": f["distance"], "z": f["z"]} for f in found]

    def summary(self, report):
        items = report.get(self.name, [])
        return [f"outliers: {len(items)}" + shown_names(items)]

    def sections(self, report):
        return [section("Outliers", report.get(self.name, []), single("z"))]

    def excluded(self, report):
        return [(x["path"], f"outlier (z {x['z']})") for x in report.get(self.name, [])]

    def studio(self, report, image):
        return {"outliers": [{"kind": f"z {f.number('z')}", "images": [image(f)]}
                             for f in studio_singles(report, self.name)]}


register(Outliers())
