"""Validating registries: unique names, the right kind of object, and who provided it.

Names are first come, first served: the harness calls its built-ins first, then the first-party
plugins, then everyone else, so a later registration of a taken name is refused (and recorded as a
conflict naming both distributions) and never replaces the first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class RegistrationError(ValueError):
    """A plugin tried to register something invalid."""


@dataclass(frozen=True)
class Provider:
    """The plugin and distribution that registered an item."""

    plugin: str
    distribution: str
    version: str

    def __str__(self) -> str:
        return f"{self.distribution} {self.version}" if self.version else self.distribution


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    item: T
    provider: Provider


@dataclass(frozen=True)
class Conflict:
    """A registration that was refused because its name (or a column it declares) was taken."""

    kind: str
    name: str
    kept: Provider
    refused: Provider
    reason: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r}: refused from {self.refused} ({self.reason}); {self.kept} keeps it"


def check_name(name: object, kind: str, plugin: str) -> str:
    """``name`` if it is a valid registry name (lower-case letters, digits, '.', '_', '-')."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise RegistrationError(f"{plugin}: {kind} name {name!r} must be lower-case letters, digits, '.', '_' or '-'")
    return name


class Registry(Generic[T]):
    """Name → item, filled through ``register`` callables bound to one provider each.

    ``validate(item)`` returns a problem (the item is not of the right kind: an error) or None;
    ``clash(item, entries)`` returns the entry an item collides with beyond its name (a column
    another metric owns, say) and why, or None."""

    def __init__(self, kind: str, validate: Callable[[Any], str | None], name_of: Callable[[T], str],
                 clash: Callable[[T, list[Entry[T]]], tuple[Provider, str] | None] | None = None) -> None:
        self.kind = kind
        self._validate = validate
        self._name_of = name_of
        self._clash = clash
        self._entries: dict[str, Entry[T]] = {}
        self.conflicts: list[Conflict] = []

    def bound(self, provider: Provider) -> Callable[..., None]:
        """A ``register(item, name=None)`` callable that records ``provider`` for each item."""

        def register(item: T, name: str | None = None) -> None:
            problem = self._validate(item)
            if problem:
                raise RegistrationError(f"{provider.plugin}: cannot register {item!r} as a {self.kind}: {problem}")
            name = check_name(name or self._name_of(item), self.kind, provider.plugin)
            if name in self._entries:
                self.conflicts.append(Conflict(self.kind, name, self._entries[name].provider, provider,
                                               "name already registered"))
                return
            collision = self._clash(item, list(self._entries.values())) if self._clash else None
            if collision is not None:
                self.conflicts.append(Conflict(self.kind, name, collision[0], provider, collision[1]))
                return
            self._entries[name] = Entry(name, item, provider)

        return register

    def remove_plugin(self, plugin: str) -> None:
        """Forget what ``plugin`` registered (it broke half way)."""
        self._entries = {n: e for n, e in self._entries.items() if e.provider.plugin != plugin}

    def conflicts_for(self, name: str) -> list[Conflict]:
        return [c for c in self.conflicts if c.name == name]

    def __getitem__(self, name: str) -> T:
        return self._entries[name].item

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def in_order(self) -> list[Entry[T]]:
        """Entries in registration order: built-ins first."""
        return list(self._entries.values())

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def provider(self, name: str) -> Provider:
        return self._entries[name].provider
