"""Executors run the cells of a run; the in-process one is built in, registered like any plugin's."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from trilemma.execute import CellOutcome, execute_cell
from trilemma.executor_api import Executor, Job, require
from trilemma.hookspecs import hookimpl

__all__ = ["Executor", "Job", "LocalExecutor", "require"]


class LocalExecutor(Executor):
    """Runs the cells one after another in this process."""

    name = "local"

    def run(self, job: Job) -> Iterator[CellOutcome]:
        for cell in job.cells:
            yield execute_cell(cell, job.settings, job.registries, job.log)


@hookimpl
def register_executors(register: Callable[..., None]) -> None:
    register(LocalExecutor())
