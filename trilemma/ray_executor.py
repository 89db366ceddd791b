"""Run the cells of a run on Ray (``trilemma run ... --executor ray [--ray-address ADDR]``).

Each cell is one Ray task asking for what it needs (a GPU when the run is on CUDA, else CPUs);
the driver records each outcome as its task finishes. A student's task depends on its teacher's
(the teacher's result is one of its arguments), so Ray schedules the graph itself. Checkpoints live in the run directory, so it
must be on a filesystem every node sees; a task whose worker dies is retried by Ray (``max_retries``)
and continues from its cell's last checkpoint. Without ``--ray-address`` a local Ray instance is started.
Ray is an optional dependency (``pip install 'trilemma[ray]'``), imported only here, only when used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from trilemma.execute import CellOutcome, failed_outcome, run_cell_in_worker
from trilemma.executor_api import Executor, Job, require
from trilemma.hookspecs import hookimpl
from trilemma.plan import Cell
from trilemma.progress import plain_output
from trilemma.settings import Setting


class RayExecutor(Executor):
    """Cells as Ray tasks, on a local instance or the cluster at ``--ray-address``."""

    name = "ray"
    settings = (
        Setting("address", protocol=False, aliases=("--address",),
                help="with --executor ray: the Ray cluster to join (ray start --head prints it; 'auto' finds a "
                     "local one); default: start a local instance (--address is the old name)"),
        Setting("retries", parse=int, default=2, flag="--ray-retries", protocol=False,
                help="times Ray retries a cell whose worker died (default 2)"),
    )

    def check(self, options: dict) -> None:
        require("ray", "--executor ray", "ray")

    def run(self, job: Job) -> Iterator[CellOutcome]:
        ray = require("ray", "--executor ray", "ray")
        environment = job.worker_environment()
        started_here = not ray.is_initialized()
        # Ray forwards workers' lines with coloured "(pid=…)" prefixes; on a pipe, a log file or under
        # NO_COLOR the driver prints each cell's lines itself, plain, when the cell is done.
        plain = plain_output()
        if started_here:
            ray.init(address=job.options.get("address"), include_dashboard=False, log_to_driver=not plain,
                     runtime_env={"env_vars": environment}, configure_logging=False)
        try:
            on_gpu = job.settings.device.startswith("cuda")
            resources = {"num_gpus": 1} if on_gpu else {"num_cpus": job.settings.threads or 1}
            task = ray.remote(max_retries=int(job.options.get("retries", 2)), **resources)(run_cell_in_worker)
            # A student's task takes its teacher's result as an argument: Ray starts it only once the
            # teacher's task has finished (the cells come teachers first).
            pending: dict[Any, Cell] = {}
            refs: dict[tuple[str, int], Any] = {}
            for cell in job.cells:
                teacher = cell.teacher
                after = [refs[(teacher.row_model, teacher.seed)]] if teacher is not None and \
                    (teacher.row_model, teacher.seed) in refs else []
                ref = task.remote(cell, job.settings, environment, *after)
                pending[ref], refs[(cell.row_model, cell.seed)] = cell, ref
            job.log(f"ray: {len(pending)} cells submitted ({resources})")
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                cell = pending.pop(done[0])
                try:
                    outcome = ray.get(done[0])
                except ray.exceptions.RayError as exc:  # retries exhausted: the cell's rows say why
                    yield failed_outcome(cell, job, exc)
                    continue
                if plain:
                    for line in outcome.log_lines:
                        job.log(line)
                yield outcome
        finally:
            if started_here:
                ray.shutdown()


@hookimpl
def register_executors(register: Callable[..., None]) -> None:
    register(RayExecutor())
