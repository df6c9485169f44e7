"""Image issues, by kind: blank, dark, tiny or greyscale images (`checks.image_issues`, from each
image's pixel properties). Blank images go into the exclude list."""

from __future__ import annotations

from .. import checks
from ..html import section, single
from . import Evidence, Kind, register, shown_names


class ImageIssues(Kind):
    name, order = "image_issues", 60

    def find(self, evidence: Evidence):
        return checks.image_issues(evidence.props)

    def rows(self, found, who):
        return {kind: [{**who(f["i"]), "detail": f["detail"]} for f in items] for kind, items in found.items()}

    def summary(self, report):
        return [f"{kind.replace('_', ' ')} images: {len(items)}" + shown_names(items)
                for kind, items in report.get(self.name, {}).items() if items]

    def sections(self, report):
        return [section(kind.replace("_", " ").capitalize() + " images", items, single("detail"))
                for kind, items in report.get(self.name, {}).items()]

    def excluded(self, report):
        return [(x["path"], f"blank: {x['detail']}") for x in report.get(self.name, {}).get("blank", [])]

    def studio(self, report, image):
        issues = report.record(self.name)
        return {f"{kind} images": [{"kind": f.text("detail", str(kind)), "images": [image(f)]}
                                   for f in issues.items_of(kind, dict) if f.text("path")] for kind in issues}


register(ImageIssues())
