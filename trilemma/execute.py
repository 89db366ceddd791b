"""Executing one cell: build the model, train it (with checkpoints), evaluate each sampler.

``execute_cell`` returns the cell's rows and writes nothing but the cell's own checkpoint and
sample grids; recording the rows is the caller's job. One failure never escapes: a model that
fails to build or train gives failed rows for its samplers, a sampler that fails gives a failed row.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trilemma.cache import CACHE
from trilemma.cost import device_peak_gflops, training_flops_per_step
from trilemma.curves import CurveFile, curve_points, curve_sampler_names, evaluate_point
from trilemma.data import Split
from trilemma.datasets import Dataset
from trilemma.environment import configure_device
from trilemma.evaluate import evaluate_sampler
from trilemma.model import GenerativeModel
from trilemma.plan import Cell
from trilemma.plugins import Registries
from trilemma.presets import Preset
from trilemma.registry import NAME_PATTERN
from trilemma.results import FAILED, OK
from trilemma.rundir import RunDirectory
from trilemma.samplers import SamplerSpec, bind, specs
from trilemma.train import Budget, CheckpointError, TrainResult, load_trained, train


@dataclass(frozen=True)
class ExecutionSettings:
    """What a cell needs besides itself: plain values, so that a worker process can receive them."""

    run_dir: Path
    device: str
    cache_dir: Path
    data_dir: Path | None = None
    progress: bool = True
    verbose: bool = False
    metric_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    threads: int | None = None  # torch CPU threads per cell (the cells' own; executors size their workers by it)
    parallel_cells: int = 1  # cells running at once on this machine (time columns are measured under that sharing)


@dataclass
class CellOutcome:
    """A cell's rows (one per sampler), the metrics' protocol descriptions, and its training losses
    along the way (for trackers; steps trained by this process only)."""

    cell: Cell
    rows: list[dict[str, Any]]
    protocols: dict[str, dict[str, Any]] = field(default_factory=dict)
    losses: list[dict[str, float]] = field(default_factory=list)
    #: What the cell printed, for executors whose workers' output does not reach the console as it
    #: is (Slurm's job files; Ray's decorated lines when the output is plain): the driver prints it.
    log_lines: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(1 for row in self.rows if row["status"] != OK)


def load_data(dataset: Dataset, data_dir: Path | None) -> dict[str, Split]:
    """The dataset's splits, loaded once per process."""
    return CACHE.get("datasets", (dataset.name, str(data_dir)), lambda: dataset.load(data_dir))


def training_images(dataset: Dataset, data_dir: Path | None, device: torch.device) -> torch.Tensor:
    """The training split's images on ``device``, moved there once per process."""
    return CACHE.get("training-images", (dataset.name, str(data_dir), str(device)),
                     lambda: load_data(dataset, data_dir)["train"].images.to(device))


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def failure_row(base: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    message = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return {**base, "status": FAILED, "error": message}


def _train_columns(result: TrainResult, budget: Budget, flops_per_step: float, peak: float) -> dict[str, Any]:
    achieved = flops_per_step * result.steps / result.seconds / 1e9 if result.seconds > 0 else math.nan
    return {"train_seconds": result.seconds, "train_steps": result.steps, "images_seen": result.images_seen,
            "train_images_per_s": result.images_seen / result.seconds if result.seconds > 0 else math.nan,
            "train_pflop": flops_per_step * result.steps / 1e15,
            "train_gflop_per_step": flops_per_step / 1e9, "train_gflops": achieved, "peak_gflops": peak,
            "utilisation": achieved / peak if peak > 0 else math.nan, "train_precision": budget.precision,
            "train_capped": result.capped, "peak_mem_bytes": result.peak_mem_bytes}


def cell_specs(cell: Cell, model_class: type[GenerativeModel]) -> tuple[SamplerSpec, ...]:
    """The samplers the plan chose for the cell (a cell made by hand: its model's preset defaults)."""
    return specs(cell.samplers) if cell.samplers else model_class.sampler_specs(cell.preset.name)


def _sampler_names(cell: Cell, model_class: type[GenerativeModel] | None) -> list[str]:
    """The row names of a cell that failed before its samplers were bound ("-" where none can be said)."""
    try:
        names = [spec.name for spec in (cell_specs(cell, model_class) if model_class else specs(cell.samplers))]
        return [name for name in names if NAME_PATTERN.match(name)] or ["-"]
    except Exception:
        return ["-"]


def cell_budget(cell: Cell, model: GenerativeModel, images: torch.Tensor,
                log: Callable[[str], None] | None = None) -> tuple[Preset, Budget]:
    """The cell's preset with steps, and its training budget: a compute budget becomes the steps it
    buys at this model's counted FLOPs per step (measured on a copy, so nothing trains)."""
    preset = cell.preset
    if preset.train_pflop is not None:
        per_step = training_flops_per_step(model, images, preset.batch_size, cell.precision, seed=cell.seed)
        preset = preset.for_flops_per_step(per_step)
        if log is not None:
            log(f"{cell.label}: {cell.preset.train_pflop:g} PFLOP at {per_step / 1e9:.4g} GFLOP per step (counted) "
                f"is {preset.steps:,} steps")
    return preset, Budget(preset.steps, preset.train_seconds, preset.batch_size, preset.checkpoint_every,
                          cell.precision)


class TeacherNotTrained(Exception):
    """A student's teacher has no finished checkpoint of its identity (its cell failed, or never ran)."""


def trained_teacher(teacher: Cell, settings: ExecutionSettings, registries: Registries, dataset: Dataset,
                    images: torch.Tensor) -> tuple[GenerativeModel, float, float]:
    """A teacher cell's trained model, from its finished checkpoint (checked against its identity,
    never trained here), and the PFLOP and seconds its training cost, its own teacher's included."""
    cls = registries.models[teacher.model]
    model = cls(cls.Config.from_dict(teacher.config), channels=dataset.channels).to(images.device)
    pflop, seconds = 0.0, 0.0
    if teacher.teacher is not None:  # attached, as it trained: a PFLOP budget's steps are counted on its real step
        ancestor, pflop, seconds = trained_teacher(teacher.teacher, settings, registries, dataset, images)
        model.attach_teacher(ancestor)
    _, budget = cell_budget(teacher, model, images)
    checkpoint = RunDirectory(settings.run_dir).checkpoint(teacher.row_model, teacher.seed)
    try:
        result = load_trained(model, checkpoint, budget, teacher.identity)
    except CheckpointError as exc:
        raise TeacherNotTrained(f"its teacher {teacher.label} has no finished checkpoint (its cell failed, or was not "
                                f"trained in this run directory): {exc}") from exc
    model.optimizers = {}  # a teacher only evaluates
    return model, pflop + result.flops_per_step * result.steps / 1e15, seconds + result.seconds


def _with_teacher(model: GenerativeModel, cell: Cell, settings: ExecutionSettings, registries: Registries,
                  dataset: Dataset, images: torch.Tensor, log: Callable[[str], None]) -> dict[str, Any]:
    """Attach the cell's trained teacher to its student; the teacher's cost columns. A student that is
    only evaluated needs no teacher weights, and a teacher checkpoint gone since only blanks its costs."""
    assert cell.teacher is not None
    columns: dict[str, Any] = {"teacher": cell.teacher.row_model}
    try:
        teacher, pflop, seconds = trained_teacher(cell.teacher, settings, registries, dataset, images)
    except TeacherNotTrained as exc:
        if not cell.evaluate_only:
            raise
        log(f"{cell.label}: its teacher's cost is not known: {exc}")
        return columns
    if not cell.evaluate_only:
        model.attach_teacher(teacher)
        log(f"{cell.label}: learns from {cell.teacher.label} (trained: {pflop:.3g} PFLOP, {seconds:.0f} s)")
    return {**columns, "teacher_train_pflop": pflop, "teacher_train_seconds": seconds}


def _curve(cell: Cell, preset: Preset, settings: ExecutionSettings, model: GenerativeModel, model_class: type[GenerativeModel],
           samplers: dict[str, Any], metrics: dict[str, Any], dataset: Dataset, base: dict[str, Any],
           log: Callable[[str], None]) -> Callable[..., None] | None:
    """What a learning-curve point does at a step: evaluate the curve samplers with the curve metrics
    and record the rows in the cell's curve file."""
    run_dir = RunDirectory(settings.run_dir)
    names = curve_sampler_names(model_class.curve_samplers, samplers)
    chosen = {name: metric for name, metric in metrics.items() if getattr(metric, "in_curves", False)}
    if not names or not chosen:
        return None
    curves = CurveFile(run_dir.curve_file(cell.row_model, cell.seed))
    data = load_data(dataset, settings.data_dir)
    key = {"model": cell.row_model, "seed": cell.seed}

    def evaluate(name: str, sampler: Any, small: Any, grid: Path, samples: Any = None) -> Any:
        return evaluate_sampler(model, cell.row_model, name, sampler, metrics=chosen,
                                metric_settings=settings.metric_settings, dataset=dataset, data=data, preset=small,
                                seed=cell.seed, grid_path=grid, cache_dir=settings.cache_dir, progress=False,
                                log=log, samples=samples)

    def point(step: int, drawn: dict[str, Any] | None = None) -> None:
        started = time.perf_counter()
        fraction = step / preset.steps
        log(f"{cell.label}: learning curve at {fraction:.0%} of the budget ({step:,} step{'s' if step != 1 else ''})")
        teacher = model.__dict__.get("_teacher_model")
        model.detach_teacher()  # a student's curve samples are its own too
        try:
            curves.record(evaluate_point(evaluate, samplers, names, key, step, fraction, preset.batch_size, preset,
                                         lambda name, at: run_dir.curve_grid(cell.row_model, name, cell.seed, at),
                                         log, drawn))
        finally:
            if teacher is not None:  # back for the rest of training (the base method: no plugin's set-up again)
                GenerativeModel.attach_teacher(model, teacher)
        base["seconds_curves"] = base.get("seconds_curves", 0.0) + time.perf_counter() - started

    return point


def failed_outcome(cell: Cell, job: Any, exc: BaseException) -> CellOutcome:
    """Failed rows for a cell whose worker never came back (its sampler names are not known here)."""
    base = {"model": cell.row_model, "seed": cell.seed, "dataset": cell.dataset, "config_hash": cell.config_hash,
            "sampler": "-"}
    job.log(f"{cell.label}: FAILED on the executor: {type(exc).__name__}: {exc}")
    return CellOutcome(cell, [failure_row(base, exc)])


def run_cell_in_worker(cell: Cell, settings: ExecutionSettings, environment: dict[str, str],
                       *after: object) -> CellOutcome:
    """``execute_cell`` in another process (a Ray task, a Slurm job): the driver's plugin environment
    (``TRILEMMA_LOAD_PLUGINS``, ``PYTHONPATH`` entries) and thread count, the registries collected here.
    ``after``: the outcomes of the cells it waited for (its teacher's, as an engine's task dependency);
    the student reads its teacher from the run directory, not from them."""
    import os
    import sys

    from trilemma.plugins import ALLOWLIST_ENV, collect

    for key, value in environment.items():
        if key == "PYTHONPATH":
            sys.path[:0] = [p for p in value.split(os.pathsep) if p and p not in sys.path]
        os.environ[key] = value
    if ALLOWLIST_ENV not in environment:
        os.environ.pop(ALLOWLIST_ENV, None)
    lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    outcome = execute_cell(cell, settings, collect(), log=log)
    outcome.log_lines = lines
    return outcome


def execute_cell(cell: Cell, settings: ExecutionSettings, registries: Registries,
                 log: Callable[[str], None] = print) -> CellOutcome:
    """Train ``cell``'s model and evaluate each of its samplers, with the cell's torch threads;
    never raises for a plugin's fault."""
    before = torch.get_num_threads()
    if cell.threads:
        torch.set_num_threads(cell.threads)
    try:
        return _execute_cell(cell, settings, registries, log)
    finally:
        torch.set_num_threads(before)


def _execute_cell(cell: Cell, settings: ExecutionSettings, registries: Registries,
                  log: Callable[[str], None]) -> CellOutcome:
    run_dir = RunDirectory(settings.run_dir)
    dataset = registries.datasets[cell.dataset]
    device = torch.device(settings.device)
    configure_device(device)
    preset = cell.preset

    def log_traceback(exc: BaseException) -> None:
        if settings.verbose:
            log("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))

    base: dict[str, Any] = {"model": cell.row_model, "seed": cell.seed, "dataset": cell.dataset,
                            "config_hash": cell.config_hash, "identity": cell.identity_hash,
                            "parallel_cells": settings.parallel_cells}
    model_class: type[GenerativeModel] | None = None
    started = time.perf_counter()
    try:
        model_class = registries.models[cell.model]
        torch.manual_seed(cell.seed)
        model = model_class(model_class.Config.from_dict(cell.config), channels=dataset.channels).to(device)
        base["params"] = count_parameters(model)
        # A checkpoint here belongs to this cell (the driver cleared stale ones before a fresh run), so a
        # cell an executor retries after its worker died continues from it.
        checkpoint = run_dir.checkpoint(cell.row_model, cell.seed)
        images = training_images(dataset, settings.data_dir, device)
        if cell.teacher is not None:
            base.update(_with_teacher(model, cell, settings, registries, dataset, images, log))
        preset, budget = cell_budget(cell, model, images, log)
        if preset.train_pflop is None and cell.preset.train_pflop is not None:
            base["train_pflop_budget"] = cell.preset.train_pflop
        peak = device_peak_gflops(device, budget.precision, settings.cache_dir)
        samplers = bind(model, cell_specs(cell, model_class))
        metrics = {entry.name: entry.item for entry in registries.metrics.in_order()}  # built-ins first
        curve = None if cell.evaluate_only or not preset.curve_fractions else _curve(
            cell, preset, settings, model, model_class, samplers, metrics, dataset, base, log)
        base["seconds_setup"] = time.perf_counter() - started
        if cell.evaluate_only:
            log(f"{cell.label}: evaluating its finished checkpoint ({checkpoint.name}), no training")
            result = load_trained(model, checkpoint, budget, cell.identity)
        else:
            cap = f", capped at {preset.train_seconds:g} s" if preset.train_seconds is not None else ""
            log(f"{cell.label}: training on {preset.work}{cap}, {cell.precision}, {base['params']:,} parameters")
            pauses = {step: curve for step in curve_points(budget.steps, preset.curve_fractions)} if curve else None
            result = train(model, images, budget, seed=cell.seed, checkpoint=checkpoint, progress=settings.progress,
                           desc=cell.label, log=log, identity=cell.identity, pauses=pauses)
        model.detach_teacher()  # the samplers are evaluated on the student alone
        base.update(_train_columns(result, budget, result.flops_per_step, peak))
        unknown = math.nan if cell.teacher is not None else 0.0  # a teacher whose cost could not be read
        base["total_train_pflop"] = base["train_pflop"] + base.get("teacher_train_pflop", unknown)
        base["total_train_seconds"] = base["train_seconds"] + base.get("teacher_train_seconds", unknown)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a plugin's fault, SystemExit included, stays in its own rows
        log(f"{cell.label}: FAILED in training: {type(exc).__name__}: {exc}")
        log_traceback(exc)
        return CellOutcome(cell, [failure_row({**base, "sampler": name}, exc)
                                  for name in _sampler_names(cell, model_class)])

    data = load_data(dataset, settings.data_dir)
    rows, protocols, drawn = [], {}, {}
    kept = set(curve_sampler_names(model_class.curve_samplers, samplers)) if curve is not None else set()
    for sampler_name, (spec, sampler) in samplers.items():
        row = {**base, "sampler": sampler_name, "sampler_spec": str(spec)}
        try:
            evaluation = evaluate_sampler(
                model, cell.row_model, sampler_name, sampler, metrics=metrics, metric_settings=settings.metric_settings,
                dataset=dataset, data=data, preset=preset, seed=cell.seed,
                grid_path=run_dir.sample_grid(cell.row_model, sampler_name, cell.seed), cache_dir=settings.cache_dir,
                progress=settings.progress, log=log)
            row.update(evaluation.columns)
            row.update(status=OK, error="")
            protocols.update(evaluation.protocols)
            if sampler_name in kept:  # the curve's last point reads them; the others' are let go
                drawn[sampler_name] = evaluation.samples
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            log(f"{cell.row_model}/{sampler_name} seed {cell.seed}: FAILED: {type(exc).__name__}: {exc}")
            log_traceback(exc)
            protocols.update(getattr(exc, "protocols", {}))
            row = failure_row({**row, **getattr(exc, "partial", {})}, exc)
        rows.append(row)
    if curve is not None:  # the curve's last point: the trained model, on the first of its scored samples
        try:
            curve(result.steps, drawn)
        except Exception as exc:  # noqa: BLE001 - a curve changes no row
            log(f"{cell.label}: the learning curve's last point failed: {type(exc).__name__}: {exc}")
        for row in rows:
            row["seconds_curves"] = base.get("seconds_curves", 0.0)
    return CellOutcome(cell, rows, protocols, result.loss_history)
