"""``trilemma run``: plan the cells, hand them to an executor, record each outcome as it arrives."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from trilemma.columns import declared_columns
from trilemma.data import default_data_dir
from trilemma.environment import configure_device
from trilemma.errors import TrilemmaError
from trilemma.execute import CellOutcome, ExecutionSettings, load_data
from trilemma.executor_api import Job
from trilemma.plan import Cell, Plan, RunRequest, plan_run
from trilemma.plugins import Registries
from trilemma.record import Recorder
from trilemma.results import ResultsTable
from trilemma.rundir import RunDirectory
from trilemma.samplers import SamplerSpec
from trilemma.settings import resolve_settings
from trilemma.tracking import chosen_trackers, finish_trackers, log_to_trackers


def say_who_provides(plan: Plan, request: RunRequest, registries: Registries, log: Callable[[str], None]) -> None:
    """For every name this run uses that another plugin also registered: which one it uses."""
    used = [(registries.models, name) for name in dict.fromkeys(m.registry_name for m in plan.models.values())] + \
        [(registries.metrics, entry.name) for entry in registries.metrics.in_order()] + \
        [(registries.datasets, plan.dataset.name), (registries.executors, request.executor)]
    for registry, name in used:
        for conflict in registry.conflicts_for(name):
            log(f"warning: {registry.kind} {name!r} is registered by {conflict.kept} and by {conflict.refused}; "
                f"using {conflict.kept} ({conflict.refused} was refused: {conflict.reason})")


def run(request: RunRequest, registries: Registries, log: Callable[[str], None] = print,
        plan: Plan | None = None) -> int:
    """Run the request (its cells as ``plan`` has them, or as ``plan_run`` makes them); returns the
    number of failed rows in the run directory."""
    plan = plan or plan_run(request, registries)
    numerics = configure_device(plan.device)
    metrics = registries.metrics.in_order()
    metric_settings = {entry.name: resolve_settings(entry.name, entry.item.settings,
                                                    request.metric_settings.get(entry.name, {}))
                       for entry in metrics}
    path_flags = ["--out", "--data-dir"] + [s.flag_for(e.name) for e in metrics for s in e.item.settings
                                            if s.parse is Path]
    executor = registries.executors[request.executor]
    options = resolve_settings(request.executor, executor.settings, request.executor_settings.get(request.executor, {}))
    executor.check(options)
    trackers = chosen_trackers(request.trackers, registries)
    run_dir = RunDirectory(request.out_dir)
    run_dir.ensure_writable()
    say_who_provides(plan, request, registries, log)
    recorder = Recorder(run_dir, plan, request, registries, declared_columns(e.item for e in metrics), path_flags,
                        numerics)
    with run_dir.locked(recorder.command) as lock:
        if lock.took_over:
            log(f"took over the lock of an earlier run that did not finish (pid {lock.took_over.get('pid')} on "
                f"{lock.took_over.get('host')}, since {lock.took_over.get('started')})")
        recorder.table = run_dir.load_table()  # what is recorded now, under the lock
        todo = cells_to_run(plan.cells, recorder.table, request, log)  # refuses a changed identity before any write
        data = load_data(plan.dataset, request.data_dir)  # fails fast, before any training
        recorder.start(next(iter(data.values())).source)
        for cell in todo:
            if not request.resume and not cell.evaluate_only:  # only --resume continues from an earlier checkpoint
                run_dir.checkpoint(cell.row_model, cell.seed).unlink(missing_ok=True)
        settings = ExecutionSettings(
            run_dir=run_dir.root, device=str(plan.device), data_dir=request.data_dir,
            cache_dir=Path(request.data_dir or default_data_dir()) / "fidelity-cache", progress=request.progress,
            verbose=request.verbose, metric_settings=metric_settings, threads=plan.threads)
        pending = {(cell.row_model, cell.seed): cell for cell in todo}
        for done, outcome in enumerate(executor.run(Job(todo, settings, registries, log, options)), start=1):
            check_outcome(outcome, pending, request.executor)
            recorder.record(outcome)
            log(f"{outcome.cell.label}: recorded ({done}/{len(todo)} cells, {outcome.failed} failed rows)")
            log_to_trackers(trackers, outcome, run_dir, log)
        finish_trackers(trackers, log)
        return recorder.finish()


def recorded_state(table: ResultsTable, cell: Cell) -> str:
    """``"none"`` (no rows of the cell), ``"same"`` (rows trained as this cell's identity) or ``"changed"``."""
    rows = table.rows_of(cell.row_model, cell.seed)
    if not rows:
        return "none"
    identities = table.recorded_identities(cell.row_model, cell.seed)
    if identities == {cell.identity_hash}:
        return "same"
    if identities == {""} and {str(r.get("config_hash")) for r in rows} == {cell.config_hash}:
        return "same"  # rows recorded before identities: the config is all they say
    return "changed"


def cells_to_run(cells: list[Cell], table: ResultsTable, request: RunRequest, log: Callable[[str], None]) -> list[Cell]:
    """The cells this run must execute. Without ``--resume`` every cell runs. With it, a cell whose
    rows are finished under the same identity (and have every requested sampler) is skipped; a cell
    recorded under another identity (another config, budget, plugin version, ...) is refused, unless
    ``--retrain-changed``, so that no row is kept or skipped under a description it was not trained as."""
    if not request.resume:
        return list(cells)
    changed = [cell for cell in cells if recorded_state(table, cell) == "changed"]
    if changed and not request.retrain_changed:
        listed = ", ".join(cell.label for cell in changed)
        raise TrilemmaError(f"--resume: {listed} already has rows in {request.out_dir} trained as something else "
                            "(another config, budget, dataset, precision, threads or plugin version); run into another --out, "
                            "or add --retrain-changed to train them again and replace their rows")
    todo = []
    for cell in cells:
        wanted = [SamplerSpec.parse(s).name for s in cell.samplers]
        if cell not in changed and table.finished(cell.row_model, cell.seed, wanted):
            log(f"{cell.label}: already finished, skipped (--resume)")
            continue
        if cell in changed:
            log(f"{cell.label}: recorded under another identity; training it again (--retrain-changed)")
        todo.append(cell)
    return todo


def check_outcome(outcome: CellOutcome, pending: dict[tuple[str, int], Cell], executor: str) -> None:
    """An executor hands back each cell it was given once, with rows of that cell only."""
    key = (outcome.cell.row_model, outcome.cell.seed)
    if pending.get(key) != outcome.cell:
        raise TrilemmaError(f"executor {executor!r} returned a cell it was not given, or one cell twice: "
                            f"{outcome.cell.label}")
    strays = [r for r in outcome.rows if (r.get("model"), r.get("seed"), r.get("dataset")) !=
              (outcome.cell.row_model, outcome.cell.seed, outcome.cell.dataset)]
    if strays or not outcome.rows:
        raise TrilemmaError(f"executor {executor!r} returned rows that are not {outcome.cell.label}'s")
    del pending[key]
