"""Executors run the cells of a run; the in-process one is built in, registered like any plugin's."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace

from trilemma.errors import TrilemmaError
from trilemma.execute import CellOutcome, execute_cell, failed_outcome, run_cell_in_worker
from trilemma.executor_api import Executor, Job, require
from trilemma.hookspecs import hookimpl
from trilemma.settings import Setting

__all__ = ["Executor", "Job", "LocalExecutor", "require"]


def parse_jobs(text: str) -> int | str:
    """``--jobs``: a whole number of cells at once, or ``auto``."""
    if text == "auto":
        return text
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise TrilemmaError(f"--jobs must be a whole number ≥ 1 or 'auto', got {text!r}")
    return jobs


def cores() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def jobs_and_threads(jobs: int | str, threads: int | None, device: str) -> tuple[int, int | None]:
    """How many cells run at once and the torch threads each gets. ``auto`` is one cell per core on
    a CPU of two or more cores (one thread each: oversubscribed threads, not the share of CPU, are what
    slows torch down), and one cell on a GPU."""
    if device.startswith("cuda"):
        return (1, threads) if jobs == "auto" else (int(jobs), threads)
    count = cores() if jobs == "auto" else int(jobs)
    count = max(1, min(count, cores()))
    return count, max(1, (threads or cores()) // count) if count > 1 else threads


class LocalExecutor(Executor):
    """Runs the cells on this machine: one after another in this process, or ``--jobs N`` at once in
    worker processes, the torch threads divided among them."""

    name = "local"
    settings = (
        Setting("jobs", parse=parse_jobs, default=1, flag="--jobs", aliases=("-j",), protocol=False,
                help="cells at once on this machine, each in its own process with cores/N torch threads, or 'auto' "
                     "(default 1: one at a time in this process)"),
    )

    def run(self, job: Job) -> Iterator[CellOutcome]:
        count, threads = jobs_and_threads(job.options.get("jobs", 1), job.settings.threads, job.settings.device)
        count = min(count, len(job.cells)) or 1
        if count == 1:
            for k, cell in enumerate(job.cells, start=1):
                job.log(f"{cell.label}: cell {k} of {len(job.cells)}")
                yield execute_cell(cell, job.settings, job.registries, job.log)
            return
        yield from self._in_workers(job, count, threads)

    def _in_workers(self, job: Job, count: int, threads: int | None) -> Iterator[CellOutcome]:
        """Each cell in a process of its own (spawned, so that no torch state is shared), ``count`` at a
        time; a worker that dies (killed, out of memory) fails its own cell's rows and nothing else."""
        import multiprocessing
        from multiprocessing.connection import wait

        context = multiprocessing.get_context("spawn")
        settings = replace(job.settings, threads=threads, progress=False, parallel_cells=count)
        environment = job.worker_environment()
        job.log(f"local: {len(job.cells)} cells, {count} at once, {threads} torch thread(s) each")
        queue, running = list(job.cells), {}
        try:
            while queue or running:
                while queue and len(running) < count:
                    cell = queue.pop(0)
                    receive, send = context.Pipe(duplex=False)
                    process = context.Process(target=_cell_process, args=(send, cell, settings, environment),
                                              daemon=True)
                    process.start()
                    send.close()
                    running[receive] = (process, cell)
                    job.log(f"{cell.label}: started (cell {len(job.cells) - len(queue)} of {len(job.cells)})")
                # A worker's outcome can be larger than the pipe: read it as it comes, then reap the worker;
                # a worker that ends without one (killed) shows up as its connection's end of file.
                for receive in wait(list(running)):
                    process, cell = running.pop(receive)
                    try:
                        outcome = receive.recv()
                    except (EOFError, OSError):
                        outcome = None
                    process.join()
                    if isinstance(outcome, CellOutcome):
                        yield outcome
                    else:
                        reason = outcome if isinstance(outcome, BaseException) else RuntimeError(
                            f"its worker process exited with code {process.exitcode} before handing back its rows")
                        yield failed_outcome(cell, job, reason)
        finally:
            for process, _ in running.values():  # interrupted: no orphan keeps training
                process.kill()


def _cell_process(send: object, cell: object, settings: object, environment: dict[str, str]) -> None:
    """A worker: run one cell and send back its outcome (or what went wrong outside the cell)."""
    try:
        outcome: object = run_cell_in_worker(cell, settings, environment)  # type: ignore[arg-type]
    except BaseException as exc:  # noqa: BLE001 - handed to the driver, which fails this cell's rows
        outcome = RuntimeError(f"{type(exc).__name__}: {exc}")
    send.send(outcome)  # type: ignore[attr-defined]
    send.close()  # type: ignore[attr-defined]


@hookimpl
def register_executors(register: Callable[..., None]) -> None:
    register(LocalExecutor())
