"""One registry per extension point (backbones, training strategies, export formats).

An entry is registered once under its name (a second registration of a name is an error). A
registry may own a package of plug-in modules: the first look-up imports every module in it, so
adding a strategy or an export format is adding one module that calls `register`. Those modules
import only torch-free code at the top: the registries are read by `--help` and by option
validation, which must not pay the 1-2 s of importing torch.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import pkgutil
from typing import Callable, Generic, Iterator, TypeVar

from .errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind, in registration order (or by `sort_key`)."""

    def __init__(self, kind: str, package: str | None = None, sort_key: Callable[[T], object] | None = None):
        self.kind, self.package, self.sort_key = kind, package, sort_key
        self._entries: dict[str, T] = {}
        self._loaded = package is None

    def register(self, entry: T) -> T:
        name = entry.name  # type: ignore[attr-defined]
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' registered twice")
        self._entries[name] = entry
        return entry

    @contextlib.contextmanager
    def temporarily(self, entry: T) -> Iterator[T]:
        """`entry` registered within the block only (a plug-in tried out, a test's own entry)."""
        self._load()
        self.register(entry)
        try:
            yield entry
        finally:
            del self._entries[entry.name]  # type: ignore[attr-defined]

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # before importing: the modules call register() while loading
            module = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(module.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{self.package}.{info.name}")

    def names(self) -> list[str]:
        return [e.name for e in self]  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[T]:
        self._load()
        entries = list(self._entries.values())
        return iter(sorted(entries, key=self.sort_key) if self.sort_key else entries)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries

    def get(self, name: str) -> T:
        """The entry called `name`; an unknown name is a `UserError` with the closest known one."""
        self._load()
        if name in self._entries:
            return self._entries[name]
        close = difflib.get_close_matches(name, list(self._entries), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown {self.kind} '{name}'{hint}; known: {', '.join(self.names())}")
