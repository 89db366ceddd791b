"""Run the cells of a run as Slurm jobs through submitit (``trilemma run ... --executor slurm``).

One job per cell, submitted as a job array; partition, time limit, GPUs and CPUs are flags. A
student's job is submitted when its teacher's has finished (the driver waits anyway, to record
each cell; a Slurm ``afterok`` dependency would leave a failed teacher's students pending forever). The
driver waits, recording each cell as its job finishes; checkpoints live in the run directory (a
shared filesystem), so a requeued job continues from its cell's last checkpoint, and a driver that
dies is picked up by ``--resume``. ``--slurm-cluster local`` runs the same jobs as local processes
(submitit's LocalExecutor), which is what the tests use. submitit is an optional dependency
(``pip install 'trilemma[slurm]'``), imported only here, only when used.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from trilemma.execute import CellOutcome, failed_outcome, run_cell_in_worker
from trilemma.executor_api import Executor, Job, require
from trilemma.hookspecs import hookimpl
from trilemma.plan import Cell
from trilemma.settings import Setting


class SlurmExecutor(Executor):
    """Cells as Slurm jobs (a job array), through submitit."""

    name = "slurm"
    settings = (
        Setting("partition", protocol=False, help="Slurm partition"),
        Setting("time", parse=int, default=240, protocol=False, help="time limit per cell, minutes (default 240)"),
        Setting("gpus", parse=int, default=None, protocol=False,
                help="GPUs per cell (default 1 on CUDA runs, 0 otherwise)"),
        Setting("cpus", parse=int, default=None, protocol=False, help="CPUs per cell (default: this process's threads)"),
        Setting("folder", default=None, protocol=False, help="submitit's log folder (default <run>/slurm)"),
        Setting("cluster", default=None, protocol=False,
                help="submitit cluster: slurm (default when sbatch is there), or local for local processes"),
    )

    def check(self, options: dict) -> None:
        require("submitit", "--executor slurm", "slurm")

    def run(self, job: Job) -> Iterator[CellOutcome]:
        submitit = require("submitit", "--executor slurm", "slurm")
        options = job.options
        folder = Path(options.get("folder") or Path(job.settings.run_dir) / "slurm")
        executor = submitit.AutoExecutor(folder=folder, cluster=options.get("cluster"))
        on_gpu = job.settings.device.startswith("cuda")
        gpus = options.get("gpus") if options.get("gpus") is not None else int(on_gpu)
        parameters = {"timeout_min": int(options.get("time") or 240), "gpus_per_node": gpus,
                      "cpus_per_task": options.get("cpus") or job.settings.threads or 1, "name": "trilemma"}
        if options.get("partition"):
            parameters["slurm_partition"] = options["partition"]
        executor.update_parameters(**parameters)
        environment = job.worker_environment()
        waiting = list(job.cells)
        pending: dict[Any, Cell] = {}
        finished: set[tuple[str, int]] = set()

        def submit_ready() -> None:
            """Submit the cells whose teachers have finished, as one job array."""
            ready = [cell for cell in waiting if not job.waits_for_teacher(cell, finished)]
            if not ready:
                return
            for cell in ready:
                waiting.remove(cell)
            jobs = executor.map_array(run_cell_in_worker, ready, [job.settings] * len(ready),
                                      [environment] * len(ready))
            job.log(f"slurm: {len(jobs)} cells submitted ({executor.cluster}, job {jobs[0].job_id if jobs else '-'})"
                    + (f"; {len(waiting)} wait for their teachers" if waiting else ""))
            pending.update(zip(jobs, ready, strict=True))

        submit_ready()
        while pending:
            finished_jobs = [submitted for submitted in pending if submitted.done()]
            if not finished_jobs:
                time.sleep(1.0)
                continue
            for submitted in finished_jobs:
                cell = pending.pop(submitted)
                finished.add((cell.row_model, cell.seed))
                try:
                    outcome = submitted.result()
                except Exception as exc:  # the job failed outside the cell's own fault handling
                    yield failed_outcome(cell, job, exc)
                    continue
                for line in outcome.log_lines:  # the job's own output is in its files: shown here too
                    job.log(line)
                yield outcome
            submit_ready()

@hookimpl
def register_executors(register: Callable[..., None]) -> None:
    register(SlurmExecutor())
