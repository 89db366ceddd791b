"""The executor extension point: ``Executor`` and the ``Job`` it runs. Base types only, at the
bottom of the import graph; the built-in in-process executor is in ``trilemma.executors``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from trilemma.hookspecs import ALLOWLIST_ENV
from trilemma.settings import Setting

if TYPE_CHECKING:
    from trilemma.execute import CellOutcome, ExecutionSettings
    from trilemma.plan import Cell
    from trilemma.plugins import Registries


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

    def waits_for_teacher(self, cell: Cell, finished: set[tuple[str, int]]) -> bool:
        """Whether ``cell``'s teacher is one of this job's cells and its outcome (keys ``(row_model,
        seed)`` in ``finished``) has not come back yet: a student starts only after its teacher."""
        teacher = cell.teacher
        if teacher is None:
            return False
        key = (teacher.row_model, teacher.seed)
        return key not in finished and any((c.row_model, c.seed) == key for c in self.cells)

    def worker_environment(self) -> dict[str, str]:
        """What a worker process needs to find the same plugins as this one."""
        keep = (ALLOWLIST_ENV, "PYTHONPATH", "TRILEMMA_DATA_DIR", "XDG_CACHE_HOME")
        return {key: os.environ[key] for key in keep if key in os.environ}


class Executor:
    """Base class of an executor: ``run(job)`` executes every cell of ``job`` and yields each
    cell's outcome as it finishes (in any order, but a student's never before its teacher's has
    finished: ``job.waits_for_teacher``); the harness records it at once. ``settings``
    declares its options (each a ``trilemma run`` flag; the values reach ``job.options``)."""

    name: str = ""
    settings: ClassVar[tuple[Setting, ...]] = ()

    def check(self, options: dict[str, Any]) -> None:
        """Raise ``TrilemmaError`` if this executor cannot run here (its engine is not installed, say);
        called before any work."""

    def run(self, job: Job) -> Iterator[CellOutcome]:
        raise NotImplementedError
