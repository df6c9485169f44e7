"""Same scene: distinct shots of one scene (a burst, a turntable), not copies. Not left out of
training, but kept in one fold by train's cross-validation."""

from __future__ import annotations

from ..html import pair, section
from . import Evidence, Kind, pair_rows, register, shown_names, studio_pairs
from .duplicates import look_alikes


class SameScene(Kind):
    name, order, pairs = "same_scene", 30, True

    def find(self, evidence: Evidence):
        return look_alikes(evidence)[1]

    def rows(self, found, who):
        return pair_rows(found, who)

    def summary(self, report):
        scene = report.get(self.name, [])
        if not scene:
            return []
        across = sum(p["kind"] != "within class" for p in scene)
        return [f"same scene (distinct shots, not copies): {len(scene)} pair(s), {across} across train/val or "
                "labels; kept together in train's cross-validation" + shown_names(scene, lambda p: p["b"]["path"])]

    def sections(self, report):
        return [section("Same scene (distinct shots)", report.get(self.name, []), pair)]

    def studio(self, report, image):
        return {"same scene": studio_pairs(report, self.name, image)}


register(SameScene())
