"""Executors run the cells of a run; the in-process one is built in, registered like any plugin's."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import cast

from trilemma.errors import TrilemmaError
from trilemma.execute import CellOutcome, ExecutionSettings, execute_cell, failed_outcome, run_cell_in_worker
from trilemma.executor_api import Executor, Job, require
from trilemma.hookspecs import hookimpl
from trilemma.plan import Cell
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


MEMORY_PER_CELL = 3 * 2**30  # a quick cell's worker peaks near 2 GiB (torch, MNIST, features); room to spare


def memory_bytes() -> int | None:
    """The machine's physical memory, where the platform says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def cells_at_once(jobs: int | str, threads: int | None, device: str) -> int:
    """How many cells run at once. ``auto``: on a CPU, as many as the cores hold at the cells' thread
    count (and the memory holds); on a GPU, one (cells would share the one device)."""
    if jobs != "auto":
        return int(jobs)
    if device.startswith("cuda"):
        return 1
    count = max(1, cores() // (threads or cores()))
    memory = memory_bytes()
    return max(1, min(count, memory // MEMORY_PER_CELL)) if memory else count


class LocalExecutor(Executor):
    """Runs the cells on this machine: ``--jobs N`` at once in worker processes (by default as many as
    the cores hold), or one after another in this process. The jobs never change a cell's threads,
    so the rows are the serial run's."""

    name = "local"
    settings = (
        Setting("jobs", parse=parse_jobs, default="auto", flag="--jobs", aliases=("-j",), protocol=False,
                help="cells at once on this machine, each in a process of its own (1: one after another in this "
                     "process; default auto: as many as the cores hold at --threads each on a CPU, one on a GPU)"),
    )

    def run(self, job: Job) -> Iterator[CellOutcome]:
        threads, jobs = job.settings.threads, job.options.get("jobs", "auto")
        in_process = job.registries.plugin_manager.in_process
        if jobs == "auto" and in_process and len(job.cells) > 1:
            job.log(f"local: plugins registered in this process ({', '.join(in_process)}) cannot be loaded by "
                    "worker processes: one cell at a time")
            jobs = 1
        count = min(cells_at_once(jobs, threads, job.settings.device), len(job.cells)) or 1
        if threads and count * threads > cores():
            job.log(f"local: ⚠ {count} cells × {threads} threads on {cores()} cores: oversubscribed threads slow "
                    "torch far beyond the fair share; fewer --jobs or --threads would be faster")
        if count == 1:
            for k, cell in enumerate(job.cells, start=1):
                job.log(f"{cell.label}: cell {k} of {len(job.cells)}")
                yield execute_cell(cell, job.settings, job.registries, job.log)
            return
        yield from self._in_workers(job, count, threads)

    def _in_workers(self, job: Job, count: int, threads: int | None) -> Iterator[CellOutcome]:
        """The cells in ``count`` worker processes (spawned, so that they share no torch state with
        this one), each running one cell after another as the serial run does in this process, so
        that its one-time caches (data, feature extractors, reference statistics) are built once per
        worker, not once per cell. A worker that dies (killed, out of memory) fails its own cell's
        rows and nothing else; a new worker takes the remaining cells."""
        import multiprocessing
        from multiprocessing.connection import wait

        context = multiprocessing.get_context("spawn")
        settings = replace(job.settings, progress=False, parallel_cells=count)
        environment = job.worker_environment()
        job.log(f"local: {len(job.cells)} cells, {count} at once, {threads} torch thread(s) each")
        queue = list(job.cells)
        idle: list[tuple[BaseProcess, Connection]] = []
        busy: dict[Connection, tuple[BaseProcess, Cell]] = {}
        finished: set[tuple[str, int]] = set()
        workers: list[tuple[BaseProcess, Connection]] = []

        def start_worker() -> None:
            driver, worker = context.Pipe(duplex=True)
            process = context.Process(target=_worker_loop, args=(worker, settings, environment, os.getpid()),
                                      daemon=True)
            process.start()
            worker.close()
            workers.append((process, driver))
            idle.append((process, driver))

        try:
            for _ in range(min(count, len(queue))):
                start_worker()
            while queue or busy:
                while idle and (cell := next((c for c in queue if not job.waits_for_teacher(c, finished)), None)):
                    process, driver = idle.pop()
                    try:
                        driver.send(cell)
                    except OSError:  # it died while idle: another takes the cell
                        start_worker()
                        continue
                    queue.remove(cell)
                    busy[driver] = (process, cell)
                    job.log(f"{cell.label}: started (cell {len(job.cells) - len(queue)} of {len(job.cells)})")
                # A worker's outcome can be larger than the pipe: read it as it comes; a worker that
                # ends without one (killed) shows up as its connection's end of file.
                if not busy:  # nothing running and nothing ready: a teacher outside the order
                    raise RuntimeError(f"local: {queue[0].label} waits for a teacher that is not coming")
                for driver in cast(list[Connection], wait(list(busy))):
                    process, cell = busy.pop(driver)
                    finished.add((cell.row_model, cell.seed))
                    try:
                        outcome = driver.recv()
                    except (EOFError, OSError):
                        outcome = None
                    if isinstance(outcome, CellOutcome):
                        idle.append((process, driver))
                        yield outcome
                        continue
                    if isinstance(outcome, BaseException):  # it failed outside the cell but lives on
                        idle.append((process, driver))
                        yield failed_outcome(cell, job, outcome)
                        continue
                    process.join(timeout=5)
                    yield failed_outcome(cell, job, RuntimeError(
                        f"its worker process exited with code {process.exitcode} "
                        "before handing back its rows"))
                    if queue:
                        start_worker()
            for _, driver in workers:
                try:
                    driver.send(None)
                except OSError:
                    pass
            for process, _ in workers:
                process.join(timeout=30)
        finally:
            for process, _ in workers:  # interrupted: no orphan keeps training
                if process.is_alive():
                    process.kill()


def _exit_with(driver: int, every: float = 1.0) -> None:
    """Stop this process once the driver ``driver`` is gone. A driver killed outright (SIGKILL, or a
    SIGTERM it does not catch) runs no clean-up, and its workers would otherwise train on for hours,
    holding the cores, on rows no one will record."""
    while os.getppid() == driver:
        time.sleep(every)
    os._exit(1)


def _worker_loop(connection: Connection, settings: ExecutionSettings, environment: dict[str, str],
                 driver: int) -> None:
    """A worker: run the cells it is sent, one at a time, and send back each outcome (or what went
    wrong outside the cell); ``None`` ends it, and so does its driver's end."""
    threading.Thread(target=_exit_with, args=(driver,), name="exit-with-driver", daemon=True).start()
    while True:
        try:
            cell = connection.recv()
        except (EOFError, OSError):
            return
        if cell is None:
            return
        try:
            done = run_cell_in_worker(cell, settings, environment)
            done.log_lines = []  # printed here already; the driver has no use for a copy
            outcome: object = done
        except BaseException as exc:  # noqa: BLE001 - handed to the driver, which fails this cell's rows
            outcome = RuntimeError(f"{type(exc).__name__}: {exc}")
        connection.send(outcome)


@hookimpl
def register_executors(register: Callable[..., None]) -> None:
    register(LocalExecutor())
