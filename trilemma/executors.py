"""Executors run the cells of a run; the in-process one is built in, registered like any plugin's."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

from trilemma.execute import CellOutcome, ExecutionSettings, execute_cell
from trilemma.hookspecs import hookimpl
from trilemma.plan import Cell
from trilemma.plugins import Registries
from trilemma.settings import Setting


@dataclass
class Job:
    """The cells to run and what executing them needs."""

    cells: Sequence[Cell]
    settings: ExecutionSettings
    registries: Registries
    log: Callable[[str], None] = print


class Executor:
    """Base class of an executor: ``run(job)`` executes every cell of ``job`` and yields each
    cell's outcome as it finishes (in any order); the harness records it at once."""

    name: str = ""
    settings: ClassVar[tuple[Setting, ...]] = ()

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
