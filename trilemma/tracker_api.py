"""The tracker extension point: ``Tracker`` and the ``CellRecord`` it receives. Base types only, at
the bottom of the import graph; the built-in TensorBoard and MLflow trackers are in ``trilemma.trackers``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from trilemma.settings import Setting


@dataclass
class CellRecord:
    """One cell, as a tracker logs it once its rows are recorded: a run per cell, named ``label``.

    ``params``: what the cell was trained and evaluated as (identity, config, preset, dataset, seed),
    flat; ``rows``: its rows (one per sampler, every column); ``losses``: training losses along the
    way (``{"step": s, name: value, ...}``); ``curves``: its learning-curve rows (``step``,
    ``sampler`` and the curve metrics); ``grids``: each sampler's sample grid (PNG)."""

    run_dir: Path
    label: str
    model: str
    seed: int
    params: dict[str, Any]
    rows: list[dict[str, Any]]
    losses: list[dict[str, float]] = field(default_factory=list)
    curves: list[dict[str, Any]] = field(default_factory=list)
    grids: dict[str, Path] = field(default_factory=dict)

    @property
    def final_step(self) -> int:
        steps = [int(row["train_steps"]) for row in self.rows if _number(row.get("train_steps"))]
        return max(steps, default=0)


def _number(value: Any) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def numeric(row: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a row (what a tracker can plot)."""
    return {key: float(value) for key, value in row.items() if _number(value)}


#: A curve row's coordinates, not its measurements.
CURVE_KEYS = ("step", "seed", "images_seen", "fraction", "samples")


def scalars(record: CellRecord) -> list[tuple[tuple[str, ...], float, int]]:
    """Everything plottable of a cell as (name parts, value, step): ``("train", loss)`` along
    training, ``("curve", sampler, metric)`` at each curve point, ``(sampler, column)`` at the last step."""
    out: list[tuple[tuple[str, ...], float, int]] = [
        (("train", key), value, int(point["step"])) for point in record.losses
        for key, value in point.items() if key != "step"]
    out += [(("curve", str(point["sampler"]), key), value, int(point["step"])) for point in record.curves
            for key, value in numeric(point).items() if key not in CURVE_KEYS]
    out += [((str(row["sampler"]), key), value, record.final_step) for row in record.rows
            for key, value in numeric(row).items()]
    return out


class Tracker:
    """Base class of an experiment tracker (``trilemma run --log NAME``): ``log_cell(record)`` is
    called in the driver each time a cell's rows are recorded. A tracker's failure is reported and
    never fails the run or changes a row. ``check`` raises ``TrilemmaError`` before any work when
    its library is missing."""

    name: str = ""
    settings: ClassVar[tuple[Setting, ...]] = ()

    def check(self, options: dict[str, Any]) -> None:
        """Raise ``TrilemmaError`` if this tracker cannot log here (its library is not installed, say)."""

    def log_cell(self, record: CellRecord, options: dict[str, Any]) -> None:
        raise NotImplementedError

    def finish(self, options: dict[str, Any]) -> None:
        """Called once when the run ends (flush, close)."""
