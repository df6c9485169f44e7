"""What a finished training run is to its caller. No torch here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Run:
    """A finished training run: its folder and its results (results.json)."""

    path: Path
    results: dict

    @property
    def val_acc(self) -> float:
        return self.results["val_acc"]
