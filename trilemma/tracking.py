"""Experiment trackers in a run (``--log NAME``): chosen and checked before any work, then handed
each cell as the driver records it. A tracker that fails is reported once per cell and never fails
the run: the run directory stays the record."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from trilemma.errors import TrilemmaError, did_you_mean
from trilemma.execute import CellOutcome
from trilemma.plugins import Registries
from trilemma.rundir import RunDirectory, read_curve_file
from trilemma.tracker_api import CellRecord, Tracker


def chosen_trackers(names: Sequence[str], registries: Registries) -> list[Tracker]:
    """The trackers named, each checked (its library installed); unknown names refused."""
    valid = registries.trackers.names()
    unknown = [name for name in names if name not in registries.trackers]
    if unknown:
        raise TrilemmaError(f"unknown tracker(s) {', '.join(unknown)}{did_you_mean(unknown, valid)}; "
                            f"valid: {', '.join(valid) or 'none installed'}")
    trackers = [registries.trackers[name] for name in names]
    for tracker in trackers:
        tracker.check({})
    return trackers


def cell_record(outcome: CellOutcome, run_dir: RunDirectory) -> CellRecord:
    """What trackers log of a recorded cell."""
    cell = outcome.cell
    params: dict[str, Any] = {"model": cell.row_model, "seed": cell.seed, "dataset": cell.dataset,
                              "preset": cell.preset.name, "identity": cell.identity_hash}
    for key, value in cell.identity.items():
        params[f"identity.{key}"] = value
    for key, value in cell.config.items():
        params[f"config.{key}"] = value
    curves = read_curve_file(run_dir.curve_file(cell.row_model, cell.seed))
    grids = {row["sampler"]: run_dir.sample_grid(cell.row_model, row["sampler"], cell.seed) for row in outcome.rows}
    return CellRecord(run_dir.root, cell.label, cell.row_model, cell.seed, params, outcome.rows, outcome.losses,
                      curves.to_dict("records") if curves is not None else [],
                      {sampler: path for sampler, path in grids.items() if path.exists()})


def log_to_trackers(trackers: Sequence[Tracker], outcome: CellOutcome, run_dir: RunDirectory,
                    log: Callable[[str], None]) -> None:
    if not trackers:
        return
    record = cell_record(outcome, run_dir)  # once, whatever the number of trackers
    for tracker in trackers:
        try:
            tracker.log_cell(record, {})
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a tracker's fault never fails the run
            log(f"{outcome.cell.label}: tracker {tracker.name} failed: {type(exc).__name__}: {exc} "
                "(the run directory has every row)")


def finish_trackers(trackers: Sequence[Tracker], log: Callable[[str], None]) -> None:
    for tracker in trackers:
        try:
            tracker.finish({})
        except Exception as exc:  # noqa: BLE001
            log(f"tracker {tracker.name} failed to finish: {type(exc).__name__}: {exc}")
