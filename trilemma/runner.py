"""``trilemma run``: plan the cells, hand them to an executor, record each outcome as it arrives."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from trilemma.data import default_data_dir
from trilemma.execute import ExecutionSettings, load_data
from trilemma.executors import Job
from trilemma.plan import RunRequest, plan_run
from trilemma.plugins import Registries
from trilemma.record import Recorder
from trilemma.rundir import RunDirectory
from trilemma.settings import resolve_settings


def run(request: RunRequest, registries: Registries, log: Callable[[str], None] = print) -> int:
    """Run the request; returns the number of failed rows in the run directory."""
    plan = plan_run(request, registries)
    metric_settings = {name: resolve_settings(name, registries.metrics[name].settings,
                                              request.metric_settings.get(name, {}))
                       for name in registries.metrics.names()}
    run_dir = RunDirectory(request.out_dir)
    run_dir.ensure_writable()
    recorder = Recorder(run_dir, plan, request)
    data = load_data(plan.dataset, request.data_dir)  # fails fast, before any training
    recorder.start(next(iter(data.values())).source)

    todo = []
    for cell in plan.cells:
        if request.resume and recorder.finished(cell):
            log(f"{cell.label}: already finished, skipped (--resume)")
        else:
            todo.append(cell)
    settings = ExecutionSettings(
        run_dir=run_dir.root, device=str(plan.device), data_dir=request.data_dir,
        cache_dir=Path(request.data_dir or default_data_dir()) / "fidelity-cache", resume=request.resume,
        progress=request.progress, verbose=request.verbose, metric_settings=metric_settings)
    executor = registries.executors[request.executor]
    for outcome in executor.run(Job(todo, settings, registries, log)):
        recorder.record(outcome)
    return recorder.finish()
