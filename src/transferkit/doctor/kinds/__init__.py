"""What the doctor finds, one kind of finding per module (`Kind`, registered in `KINDS`): how
it is found, its rows in doctor.json, its lines in the console summary, its section of
doctor.html, the files it puts in the exclude list and its groups in the studio.

Adding a check is one module here that registers a `Kind`; `analysis` finds every registered
kind of a phase, and the report, the summary, the page, the exclude list and the studio ask
each kind for its part. A kind's finding (what `find` returns) is a list or a dict of plain
values with image indices, sent back from the helper process; `rows` turns the indices into
paths, labels and splits (`Who`). No torch here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ...files import Record
from ...registry import Registry


@dataclass
class Evidence:
    """What the kinds are found from: each image's nearest neighbours on the features (`sims`,
    `idx`: `checks.neighbours`), its label (multi-label: the number of its label set, and
    `multi_hot` its 0/1 row), split, content hash, pixel properties and thumbnail; the
    out-of-fold class probabilities in the "conclude" phase (None: too few images for folds).
    `found`: what the kinds found so far, by name (`result` finds one that is not yet found)."""

    sims: np.ndarray
    idx: np.ndarray
    labels: np.ndarray
    splits: list | None = None
    hashes: list | None = None
    props: list | None = None
    thumbs: list | None = None
    same_scene: float = 0.0
    multi_hot: np.ndarray | None = None
    probs: np.ndarray | None = None
    found: dict = field(default_factory=dict)
    memo: dict = field(default_factory=dict)  # work two kinds share (look-alikes: near copies and same scenes)

    def result(self, name: str):
        """What the kind `name` found, finding it first if no one has yet."""
        if name not in self.found:
            self.found[name] = KINDS.get(name).find(self)
        return self.found[name]

    def shared(self, key: str, work: Callable[[], object]):
        """`work()`'s answer, computed once for every kind that asks by `key`."""
        if key not in self.memo:
            self.memo[key] = work()
        return self.memo[key]


class Who:
    """Image `i` as doctor.json names it: its path, label(s) and split."""

    def __init__(self, split, paths: list[str], labels, splits):
        self.split, self.paths, self.labels, self.splits = split, paths, labels, splits
        self.samples = split.train + split.val  # (the order of `paths`: checks.samples_of)
        self.multi = split.task.multi

    def __call__(self, i: int) -> dict:  # (multi-label: its labels joined by the data's delimiter, "" for none)
        label = self.split.names(self.samples[i]) if self.multi else self.split.classes[self.labels[i]]
        return {"path": self.paths[i], "label": label, "split": str(self.splits[i])}

    def names(self, classes: list[int]) -> list[str]:
        return [self.split.classes[c] for c in classes]


def shown_names(items: list, key: Callable[[dict], str] = lambda x: x["path"]) -> str:
    """": a.jpg, b.jpg, c.jpg, ..." for a summary line: the first three items' file names."""
    shown = [Path(key(x)).name for x in items[:3]]
    return ": " + ", ".join(shown) + (", ..." if len(items) > 3 else "") if shown else ""


class Kind:
    """A kind of finding. `phase` "look": found from the neighbours and the images' facts,
    before the folds; "conclude": with the out-of-fold probabilities too. `pairs`: its findings
    are pairs of images kept in one fold (by train's cross-validation and the doctor's own)."""

    name: str  # its key in doctor.json
    order: int  # where it comes in the report, the summary, the page and the studio
    phase: str = "look"
    pairs: bool = False
    version: int = 1  # a new version (what it finds changed) makes the doctor find again, not reuse its stored analysis

    def find(self, evidence: Evidence):
        """The finding: a list (or a dict of lists) of plain values with image indices."""
        raise NotImplementedError

    def rows(self, found, who: Who):
        """doctor.json's rows of the finding (image indices named by `who`)."""
        raise NotImplementedError

    def summary(self, report: dict) -> list[str]:
        """Its lines of the console summary ("!" first: a warning)."""
        return []

    def sections(self, report: dict) -> list[str]:
        """Its sections of doctor.html."""
        return []

    def excluded(self, report: dict) -> list[tuple[str, str]]:
        """The files it puts in the exclude list for `train --exclude`, each with why."""
        return []

    def studio(self, report: Record, image: Callable[[Record], dict]) -> dict[str, list[dict]]:
        """Its groups in the studio's data view (`image`: one image of a finding, with its fix),
        read back from a doctor.json that may be damaged or older."""
        return {}


KINDS: Registry[Kind] = Registry("doctor check", package=__package__, sort_key=lambda k: (k.order, k.name))


def register(kind: Kind) -> Kind:
    return KINDS.register(kind)


def find(evidence: Evidence, phase: str) -> dict:
    """What every kind of `phase` finds, by name, in order (added to `evidence.found`)."""
    for kind in KINDS:
        if kind.phase == phase:
            evidence.result(kind.name)
    return {kind.name: evidence.found[kind.name] for kind in KINDS if kind.phase == phase}


def pairs_found(found: dict) -> list[tuple[int, int]]:
    """The pairs of images the kinds found that must stay in one fold."""
    return [(p["a"], p["b"]) for kind in KINDS if kind.pairs and kind.name in found for p in found[kind.name]]


def pair_rows(found: list[dict], who: Who) -> list[dict]:
    """doctor.json's rows of pairs of images."""
    return [{"kind": p["kind"], "similarity": p["similarity"], **({"match": p["match"]} if "match" in p else {}),
             "a": who(p["a"]), "b": who(p["b"])} for p in found]


def studio_pairs(report: Record, name: str, image: Callable[[Record], dict]) -> list[dict]:
    """The studio's rows of a kind of pairs (a pair without its images, as a damaged file has,
    is left out)."""
    return [{"kind": p.text("kind", ""), "similarity": p.number("similarity"),
             "images": [image(p.record("a")), image(p.record("b"))]}
            for p in report.items_of(name, dict) if p.record("a").text("path") and p.record("b").text("path")]


def studio_singles(report: Record, name: str) -> list[Record]:
    """The findings of a kind of single images that name their image."""
    return [f for f in report.items_of(name, dict) if f.text("path")]
