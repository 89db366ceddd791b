"""The process's one cache: values computed once per process (data, features, radii, device
peaks), by namespace and key, with an explicit reset.

Every in-memory cache of the harness lives here, so ``CACHE.clear()`` (tests, a long-lived process
whose data changed) resets all of them, and ``CACHE.sizes()`` says what is held. Caches on disk
(feature files, device peaks) are keyed by content hashes where they are written.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class ProcessCache:
    """``get(namespace, key, compute)`` returns the value computed once for (namespace, key)."""

    def __init__(self) -> None:
        self._store: dict[str, dict[Hashable, Any]] = {}

    def get(self, namespace: str, key: Hashable, compute: Callable[[], T]) -> T:
        entries = self._store.setdefault(namespace, {})
        if key not in entries:
            entries[key] = compute()  # a compute that raises caches nothing
        return entries[key]

    def peek(self, namespace: str, key: Hashable) -> Any | None:
        return self._store.get(namespace, {}).get(key)

    def put(self, namespace: str, key: Hashable, value: T) -> T:
        self._store.setdefault(namespace, {})[key] = value
        return value

    def clear(self, namespace: str | None = None) -> None:
        """Forget one namespace's values, or every value."""
        if namespace is None:
            self._store.clear()
        else:
            self._store.pop(namespace, None)

    def sizes(self) -> dict[str, int]:
        return {namespace: len(entries) for namespace, entries in self._store.items()}


CACHE = ProcessCache()
