"""The hooks a trilemma plugin implements (documented in full in ``docs/plugin-hooks.md``).

Each hook receives a validating ``register`` callable and returns nothing. The harness calls
each plugin's implementation on its own, through pluggy (``subset_hook_caller``), so every
registered item knows which distribution provided it, and a plugin whose hook raises is reported
as broken without stopping the rest.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT = "trilemma"
#: Environment variable: a comma-separated allowlist of the entry points to load (empty: none).
ALLOWLIST_ENV = "TRILEMMA_LOAD_PLUGINS"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_models(register: Callable[..., None]) -> None:
    """Register model classes: ``register(ModelClass)``, a ``trilemma.GenerativeModel`` subclass
    whose ``name`` is its registry name (``register(ModelClass, name="other")`` renames it)."""


@hookspec
def register_metrics(register: Callable[..., None]) -> None:
    """Register metrics: ``register(metric)``, a ``trilemma.Metric`` instance; its columns are
    added to every report row."""


@hookspec
def register_datasets(register: Callable[..., None]) -> None:
    """Register datasets: ``register(dataset)``, a ``trilemma.Dataset`` instance."""


@hookspec
def register_executors(register: Callable[..., None]) -> None:
    """Register executors: ``register(executor)``, a ``trilemma.Executor`` instance that runs the
    cells of a run (``trilemma run --executor NAME``)."""


@hookspec
def register_trackers(register: Callable[..., None]) -> None:
    """Register experiment trackers: ``register(tracker)``, a ``trilemma.Tracker`` instance that logs
    each cell as it is recorded (``trilemma run --log NAME``)."""
