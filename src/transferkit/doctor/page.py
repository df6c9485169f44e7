"""doctor.html: one self-contained page (thumbnails inline), the problems grouped by kind:
duplicate and same-scene pairs side by side, label suspects with their given and suggested
class and the nearest images of the suggested class."""

from __future__ import annotations

import html
from pathlib import Path

from ..files import atomic_write, text_bytes
from .html import section
from .kinds import KINDS
from .report import summary_lines

CSS = """body{font:15px/1.4 system-ui,sans-serif;margin:1.5rem auto;max-width:1100px;color:#1d2430}
h2{margin-top:2rem;border-bottom:1px solid #ccd}figure{display:inline-block;margin:.3rem;width:170px;
vertical-align:top}img{max-width:160px;max-height:160px}figcaption{font-size:12px;overflow-wrap:anywhere}
.pair{display:inline-block;border:1px solid #ccd;border-radius:8px;margin:.3rem;padding:.3rem}
.pair p,.item p{margin:.2rem;font-size:13px}.item{display:inline-block;margin:.3rem;width:175px;vertical-align:top}
pre{background:#f4f5f7;padding:.8rem;white-space:pre-wrap}table{border-collapse:collapse}
td,th{border:1px solid #dde;padding:.2rem .6rem;text-align:right}td:first-child{text-align:left}"""


def write_page(path: Path, report: dict) -> None:
    parts = [f"<h1>transferkit doctor: {html.escape(report['data'])}</h1>",
             f"<pre>{html.escape(chr(10).join(summary_lines(report)))}</pre>"]
    for kind in KINDS:
        parts += kind.sections(report)
    rows = "".join(f"<tr><td>{html.escape(c)}</td><td>{n['train']}</td><td>{n['val']}</td><td>{n['total']}</td></tr>"
                   for c, n in report["balance"]["per_class"].items())
    parts.append(f"<h2>Balance</h2><table><tr><th>class</th><th>train</th><th>val</th><th>all</th></tr>{rows}</table>")
    if report["unreadable"]:
        parts.append(section("Unreadable files", report["unreadable"],
                             lambda x: f"<p>{html.escape(x['path'])}: {html.escape(x['reason'])}</p>"))
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>doctor</title><style>{CSS}</style>'
            f"</head><body>{''.join(parts)}</body></html>")
    atomic_write(path, text_bytes(page))
