"""Executors run the cells of a run; the in-process one is built in, registered like any plugin's."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from trilemma.execute import CellOutcome, ExecutionSettings, execute_cell
from trilemma.hookspecs import hookimpl
from trilemma.plan import Cell
from trilemma.plugins import ALLOWLIST_ENV, Registries
from trilemma.settings import Setting


def require(module: str, flag: str, extra: str) -> Any:
    """Import an optional engine, or say in one line how to install it."""
    import importlib

    from trilemma.errors import TrilemmaError

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise TrilemmaError(f"{flag} needs {module}: pip install 'trilemma[{extra}]'") from exc


@dataclass
class Job:
    """The cells to run, what executing them needs, and the executor's own settings (``options``)."""

    cells: Sequence[Cell]
    settings: ExecutionSettings
    registries: Registries
    log: Callable[[str], None] = print
    options: dict[str, Any] = field(default_factory=dict)

    def worker_environment(self) -> dict[str, str]:
        """What a worker process needs to find the same plugins as this one."""
        keep = (ALLOWLIST_ENV, "PYTHONPATH", "TRILEMMA_DATA_DIR", "XDG_CACHE_HOME")
        return {key: os.environ[key] for key in keep if key in os.environ}


class Executor:
    """Base class of an executor: ``run(job)`` executes every cell of ``job`` and yields each
    cell's outcome as it finishes (in any order); the harness records it at once. ``settings``
    declares its options (each a ``trilemma run`` flag; the values reach ``job.options``)."""

    name: str = ""
    settings: ClassVar[tuple[Setting, ...]] = ()

    def check(self, options: dict[str, Any]) -> None:
        """Raise ``TrilemmaError`` if this executor cannot run here (its engine is not installed, say);
        called before any work."""

    def run(self, job: Job) -> Iterator[CellOutcome]:
        raise NotImplementedError


class LocalExecutor(Executor):
    """Runs the cells one after another in this process."""

    name = "local"

    def run(self, job: Job) -> Iterator[CellOutcome]:
        for cell in job.cells:
            yield execute_cell(cell, job.settings, job.registries, job.log)


@hookimpl
def register_executors(register: Callable[..., None]) -> None:
    register(LocalExecutor())
