"""The experiment trackers `train --track` can log to: one module in `trackers/` each, registering
a `TrackerKind`. Nothing here imports a tracker's library: option validation and --help read this
registry, and a run without --track never imports MLflow or TensorBoard."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

from ..errors import UserError
from ..registry import Registry


@dataclass(frozen=True)
class TrackerKind:
    """One tracker: its name, what it needs installed, and how to open it for a run folder."""

    name: str
    summary: str
    module: str  # the library it imports (checked before the run starts)
    extra: str  # the package extra that installs it: pip install transferkit[extra]
    open: Callable  # (run_dir: Path) -> a tracker (see `tracking`): cheap, imports nothing heavy

    def check(self) -> None:
        """A one-line error before anything runs where the library is not installed."""
        if importlib.util.find_spec(self.module) is None:
            raise UserError(f"--track {self.name} needs {self.module}, which is not installed: "
                            f"pip install 'transferkit[{self.extra}]'")


TRACKERS: Registry[TrackerKind] = Registry("tracker", package=f"{__package__}.trackers")
register = TRACKERS.register
