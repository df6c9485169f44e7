"""The pieces doctor.html is made of: an image's figure (its thumbnail inline), a section of
findings (at most SHOWN with thumbnails), a pair side by side and a single image."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Callable

SHOWN = 60  # items per section with thumbnails (all of them are in doctor.json)


def figure(who: dict, note: str = "") -> str:
    from ..evaluation.page import thumb_uri  # (the page's alone: the analysis, which imports the kinds, needs none)

    uri = thumb_uri(who["path"])
    img = f'<img src="{uri}" alt="{html.escape(Path(who["path"]).name)}">' if uri else "(unreadable)"
    caption = html.escape(f"{who['label']} / {who['split']}: {Path(who['path']).name}") + (
        f"<br>{html.escape(note)}" if note else "")
    return f'<figure>{img}<figcaption title="{html.escape(who["path"])}">{caption}</figcaption></figure>'


def section(title: str, items: list, render: Callable[[dict], str]) -> str:
    more = f"<p>{len(items) - SHOWN} more in doctor.json</p>" if len(items) > SHOWN else ""
    body = "".join(render(x) for x in items[:SHOWN]) or "<p>none found</p>"
    return f"<h2>{html.escape(title)} ({len(items)})</h2>{body}{more}"


def pair(p: dict) -> str:
    match = f", images match {p['match']:.3f}" if p.get("match") is not None else ""
    return (f'<div class="pair"><p>{html.escape(p["kind"])}, features {p["similarity"]:.3f}{match}</p>'
            f'{figure(p["a"])}{figure(p["b"])}</div>')


def single(note_key: str) -> Callable[[dict], str]:
    """One image, captioned with its finding's `note_key`."""
    return lambda x: f'<div class="item">{figure(x, str(x.get(note_key, "")))}</div>'
