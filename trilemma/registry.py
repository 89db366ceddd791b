"""Validating registries: unique names, the right kind of object, and who provided it."""

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


class Registry(Generic[T]):
    """Name → item, filled through ``register`` callables bound to one provider each."""

    def __init__(self, kind: str, validate: Callable[[Any], str | None], name_of: Callable[[T], str]):
        self.kind = kind
        self._validate = validate
        self._name_of = name_of
        self._entries: dict[str, Entry[T]] = {}

    def bound(self, provider: Provider) -> Callable[..., None]:
        """A ``register(item, name=None)`` callable that records ``provider`` for each item."""

        def register(item: T, name: str | None = None) -> None:
            problem = self._validate(item)
            if problem:
                raise RegistrationError(f"{provider.plugin}: cannot register {item!r} as a {self.kind}: {problem}")
            name = name or self._name_of(item)
            if not isinstance(name, str) or not NAME_PATTERN.match(name):
                raise RegistrationError(
                    f"{provider.plugin}: {self.kind} name {name!r} must be lower-case letters, digits, '.', '_' or '-'"
                )
            if name in self._entries:
                other = self._entries[name].provider
                raise RegistrationError(f"{provider.plugin}: {self.kind} {name!r} is already registered by {other}")
            self._entries[name] = Entry(name, item, provider)

        return register

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

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def provider(self, name: str) -> Provider:
        return self._entries[name].provider
