"""doctor.html: one self-contained page (thumbnails inline), the problems grouped by kind:
duplicate and same-scene pairs side by side, label suspects with their given and suggested
class and the nearest images of the suggested class."""

from __future__ import annotations

import html
from pathlib import Path

from ..evaluation.page import thumb_uri
from ..files import atomic_write, text_bytes
from .report import summary_lines

SHOWN = 60  # items per section with thumbnails (all of them are in doctor.json)

CSS = """body{font:15px/1.4 system-ui,sans-serif;margin:1.5rem auto;max-width:1100px;color:#1d2430}
h2{margin-top:2rem;border-bottom:1px solid #ccd}figure{display:inline-block;margin:.3rem;width:170px;
vertical-align:top}img{max-width:160px;max-height:160px}figcaption{font-size:12px;overflow-wrap:anywhere}
.pair{display:inline-block;border:1px solid #ccd;border-radius:8px;margin:.3rem;padding:.3rem}
.pair p,.item p{margin:.2rem;font-size:13px}.item{display:inline-block;margin:.3rem;width:175px;vertical-align:top}
pre{background:#f4f5f7;padding:.8rem;white-space:pre-wrap}table{border-collapse:collapse}
td,th{border:1px solid #dde;padding:.2rem .6rem;text-align:right}td:first-child{text-align:left}"""


def _figure(who: dict, note: str = "") -> str:
    uri = thumb_uri(who["path"])
    img = f'<img src="{uri}" alt="{html.escape(Path(who["path"]).name)}">' if uri else "(unreadable)"
    caption = html.escape(f"{who['label']} / {who['split']}: {Path(who['path']).name}") + (
        f"<br>{html.escape(note)}" if note else "")
    return f'<figure>{img}<figcaption title="{html.escape(who["path"])}">{caption}</figcaption></figure>'


def _section(title: str, items: list, render) -> str:
    more = f"<p>{len(items) - SHOWN} more in doctor.json</p>" if len(items) > SHOWN else ""
    body = "".join(render(x) for x in items[:SHOWN]) or "<p>none found</p>"
    return f"<h2>{html.escape(title)} ({len(items)})</h2>{body}{more}"


def write_page(path: Path, report: dict) -> None:
    def pair(p):
        match = f", images match {p['match']:.3f}" if p.get("match") is not None else ""
        return (f'<div class="pair"><p>{html.escape(p["kind"])}, features {p["similarity"]:.3f}{match}</p>'
                f'{_figure(p["a"])}{_figure(p["b"])}</div>')

    def label(x):
        note = f"given {x['label'] or '(no label)'}, suggested {x['suggested'] or '(no label)'} (score {x['score']:.3f})"
        if "missing" in x:  # multi-label: what the image likely lacks, and what it likely should not have
            note += "".join(f"; {k} {', '.join(x[k])}" for k in ("missing", "extra") if x[k])
        evidence = "".join(_figure(e, f"similarity {e['similarity']:.3f}") for e in x.get("evidence", []))
        shows = ", ".join(x["missing"]) if "missing" in x else x["suggested"]
        nearest = (f"<p>nearest images labelled {html.escape(shows)}:</p>{evidence}" if evidence else "")
        return f'<div class="pair">{_figure(x, note)}{nearest}</div>'

    def plain(note_key):
        return lambda x: f'<div class="item">{_figure(x, str(x.get(note_key, "")))}</div>'

    parts = [f"<h1>transferkit doctor: {html.escape(report['data'])}</h1>",
             f"<pre>{html.escape(chr(10).join(summary_lines(report)))}</pre>",
             _section("Exact duplicates", report["exact_duplicates"], pair),
             _section("Near duplicates", report["near_duplicates"], pair),
             _section("Same scene (distinct shots)", report.get("same_scene", []), pair),
             _section("Likely label errors", report["label_issues"], label),
             _section("Outliers", report["outliers"], plain("z"))]
    for kind, items in report["image_issues"].items():
        parts.append(_section(kind.replace("_", " ").capitalize() + " images", items, plain("detail")))
    rows = "".join(f"<tr><td>{html.escape(c)}</td><td>{n['train']}</td><td>{n['val']}</td><td>{n['total']}</td></tr>"
                   for c, n in report["balance"]["per_class"].items())
    parts.append(f"<h2>Balance</h2><table><tr><th>class</th><th>train</th><th>val</th><th>all</th></tr>{rows}</table>")
    if report["unreadable"]:
        parts.append(_section("Unreadable files", report["unreadable"],
                              lambda x: f"<p>{html.escape(x['path'])}: {html.escape(x['reason'])}</p>"))
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>doctor</title><style>{CSS}</style>'
            f"</head><body>{''.join(parts)}</body></html>")
    atomic_write(path, text_bytes(page))
