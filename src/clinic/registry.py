"""One registry for everything clinic finds by name: methods, repair methods, judges, selectors,
tasks and presets.

A :class:`Registry` maps a name to an entry (a spec, a class, a settings dict). Entries are
added with :meth:`Registry.register` (a decorator, or a call with the entry) and, where the
registry names a ``package``, found by discovery: the first look-up imports every module of that
package, so that a new module registers itself and no list of modules is kept by hand.
A name that is not there is a one-line :class:`~clinic.errors.ClinicError` with the nearest name
and the choices.

This module is the lowest layer: it imports nothing heavy (modules are imported on look-up).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from .errors import ClinicError
from .values import nearest_hint


class Registry(Mapping):
    """Name -> entry, read like a dict (``name in r``, ``r[name]``, iteration in listing order).

    ``kind`` names an entry in messages (``"unknown {kind} 'x'"``). ``package``: the dotted name
    of a package whose modules are imported on the first look-up (discovery). Entries list in
    the order of their ``order`` (given at registration; default: after every ordered entry),
    then in registration order; ``sort=True`` lists them alphabetically instead.
    """

    def __init__(self, kind: str, package: str | None = None, sort: bool = False):
        self.kind, self.package, self.sort = kind, package, sort
        self._entries: dict[str, Any] = {}
        self._order: dict[str, float] = {}
        self._discovered = package is None

    # -- filling ---------------------------------------------------------------------------

    def register(self, name: str, entry: Any = None, *, order: float = float("inf")):
        """``register(name, entry)`` adds ``entry``; ``@register(name)`` adds the decorated
        object. A name registered twice is a programming error (two modules claim it)."""

        def add(obj):
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            self._order[name] = order
            return obj

        return add if entry is None else add(entry)

    def discover(self) -> None:
        """Import every module of the package (once), so that each registers its entries."""
        if self._discovered:
            return
        self._discovered = True  # set first: a module that looks the registry up while importing does not recurse
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{self.package}.{module.name}")

    # -- reading ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        self.discover()
        if self.sort:
            return sorted(self._entries)
        position = {name: i for i, name in enumerate(self._entries)}
        return sorted(self._entries, key=lambda name: (self._order[name], position[name]))

    def items(self) -> list[tuple[str, Any]]:  # type: ignore[override]
        return [(name, self._entries[name]) for name in self.names()]

    def get(self, name: str, default: Any = ...) -> Any:  # type: ignore[override]
        """The entry called ``name``; a one-line error naming the nearest name and the choices
        (or ``default``, when one is given)."""
        self.discover()
        if name in self._entries:
            return self._entries[name]
        if default is not ...:
            return default
        raise self.unknown(name)

    def unknown(self, name: str, choices: Iterable[str] | None = None, kind: str | None = None,
                where: str = "") -> ClinicError:
        """The error for a name that is not among ``choices`` (default: every name);
        ``where`` goes after the name (e.g. ``" in evaluate"``)."""
        choices = list(self.names() if choices is None else choices)
        return ClinicError(f"unknown {kind or self.kind} {name!r}{where}{nearest_hint(name, choices)}; "
                           f"choose one of {', '.join(choices)}")

    def check(self, name: str, where: str = "") -> None:
        """A one-line error unless ``name`` is registered."""
        if name not in self:
            raise self.unknown(name, where=where)

    def filter(self, keep: Callable[[Any], bool]) -> dict[str, Any]:
        """The entries for which ``keep(entry)`` is true, in listing order."""
        return {name: entry for name, entry in self.items() if keep(entry)}

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self.discover()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names() if self._discovered else '...'})"
