"""Likely label errors: images whose given label(s) the out-of-fold opinions (heads that never
saw them, and their nearest neighbours' vote) disagree with, read by cleanlab's confident
learning (`checks.label_issues`, `checks.multilabel_issues`)."""

from __future__ import annotations

import html
from pathlib import Path

from ...data.fixes import LABELS_SEP
from .. import checks
from ..html import figure, section
from . import Evidence, Kind, register, studio_singles


class LabelIssues(Kind):
    name, order, phase = "label_issues", 40, "conclude"

    def find(self, evidence: Evidence):
        if evidence.probs is None:
            return []
        if evidence.multi_hot is not None:
            return checks.multilabel_issues(evidence.probs, evidence.multi_hot, evidence.sims, evidence.idx)
        return checks.label_issues(evidence.probs, evidence.labels, evidence.sims, evidence.idx)

    def rows(self, found, who):
        def issue(f: dict) -> dict:
            common = {**who(f["i"]), "score": f["score"],
                      "evidence": [{**who(e["i"]), "similarity": e["similarity"]} for e in f["evidence"]]}
            if not who.multi:
                return {**common, "suggested": who.split.classes[f["suggested"]]}
            return {**common, "suggested": who.split.task.joiner.join(who.names(f["suggested"])),
                    "suggested_labels": who.names(f["suggested"]), "missing": who.names(f["missing"]),
                    "extra": who.names(f["extra"])}
        return [issue(f) for f in found]

    def summary(self, report):
        issues = report.get(self.name, [])
        return [f"likely label errors: {len(issues)}" + (": " + ", ".join(
            f"{Path(x['path']).name} ({x['label'] or '(none)'} -> {x['suggested'] or '(none)'}?)" for x in issues[:3])
            + (", ..." if len(issues) > 3 else "") if issues else "")]

    def sections(self, report):
        def render(x):
            note = f"given {x['label'] or '(no label)'}, suggested {x['suggested'] or '(no label)'} (score {x['score']:.3f})"
            if "missing" in x:  # multi-label: what the image likely lacks, and what it likely should not have
                note += "".join(f"; {k} {', '.join(x[k])}" for k in ("missing", "extra") if x[k])
            evidence = "".join(figure(e, f"similarity {e['similarity']:.3f}") for e in x.get("evidence", []))
            shows = ", ".join(x["missing"]) if "missing" in x else x["suggested"]
            nearest = (f"<p>nearest images labelled {html.escape(shows)}:</p>{evidence}" if evidence else "")
            return f'<div class="pair">{figure(x, note)}{nearest}</div>'
        return [section("Likely label errors", report.get(self.name, []), render)]

    def excluded(self, report):
        return [(x["path"], f"likely label error: labelled {x['label']}, looks like {x['suggested']}")
                for x in report.get(self.name, [])]

    def studio(self, report, image):
        return {"likely label errors": [
            {"kind": f"labelled {f.text('label') or '(none)'}, looks like {f.text('suggested') or '(none)'}",
             # (multi-label: the suggested set, as the relabel action takes it)
             "suggested": LABELS_SEP.join(f.texts("suggested_labels"))
             if f.get("suggested_labels") is not None else f.text("suggested"),
             "score": f.number("score"), "images": [image(f)]}
            for f in studio_singles(report, self.name)]}


register(LabelIssues())
