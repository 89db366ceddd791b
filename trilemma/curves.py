"""Learning curves (issue 24): each cell is also evaluated at shares of its budget (the preset's
``curve_fractions``) and at its end, on ``curve_samples`` samples of its curve samplers, with the
metrics that declare ``in_curves``. Training pauses for each point (``train(pauses=...)``): the
weights are those of a run without curves, and the time is not training time. A cell's rows go to
its own file, rewritten atomically after each point, so a resumed cell keeps the points it has.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from trilemma.files import atomic_write_text
from trilemma.rundir import read_curve_file
from trilemma.samplers import SamplerSpec

#: Columns every curve row has, before the metrics'.
CURVE_KEY = ("model", "sampler", "seed", "step", "fraction", "images_seen", "samples")


def curve_points(steps: int, fractions: Sequence[float]) -> dict[int, float]:
    """Step → share of the budget for each point before the end (rounded to a whole step ≥ 1)."""
    points: dict[int, float] = {}
    for fraction in fractions:
        step = max(1, round(fraction * steps))
        if step < steps:
            points.setdefault(step, step / steps)
    return points


def curve_sampler_names(declared: Sequence[str], bound: Mapping[str, tuple[SamplerSpec, Any]]) -> list[str]:
    """The model's declared curve samplers that this cell evaluates, else the one with the fewest steps."""
    chosen = [name for name in declared if name in bound]
    if chosen:
        return chosen

    def steps(name: str) -> float:
        value = bound[name][0].values.get("steps", 1)
        try:
            return float(value)
        except (TypeError, ValueError):
            return math.inf

    return [min(bound, key=steps)] if bound else []


class CurveFile:
    """One cell's curve rows: a point's rows replace earlier rows of the same sampler and step."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self) -> list[dict[str, Any]]:
        frame = read_curve_file(self.path)
        return [] if frame is None else frame.to_dict("records")

    def record(self, new: Sequence[Mapping[str, Any]]) -> None:
        replaced = {(row["sampler"], row["step"]) for row in new}
        kept = [row for row in self.rows() if (row.get("sampler"), row.get("step")) not in replaced]
        frame = pd.DataFrame([*kept, *new])
        ordered = [c for c in CURVE_KEY if c in frame] + [c for c in frame.columns if c not in CURVE_KEY]
        buffer = io.StringIO()
        frame[ordered].sort_values(["sampler", "step"]).to_csv(buffer, index=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, buffer.getvalue())


def evaluate_point(evaluate: Callable[..., Any], samplers: Mapping[str, tuple[SamplerSpec, Any]],
                   names: Sequence[str], base: Mapping[str, Any], step: int, fraction: float, batch_size: int,
                   preset: Any, grid: Callable[[str, int], Path], log: Callable[[str], None],
                   drawn: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """One curve point: each curve sampler evaluated by ``evaluate(sampler_name, sampler, preset, grid_path,
    samples)`` (``evaluate_sampler`` with the curve metrics bound) on the curve's sample count, from
    the first of the ``drawn`` samples where a sampler's are given (the end point reuses the scored
    draw's), else a draw of its own; a failure is the point's error, never the cell's."""
    from trilemma.evaluate import MetricsFailed

    small = replace(preset, evaluation=replace(preset.evaluation, eval_samples=preset.curve_samples,
                                               stacked_samples=preset.curve_samples))
    rows = []
    for name in names:
        row: dict[str, Any] = {**base, "sampler": name, "step": step, "fraction": fraction,
                               "images_seen": step * batch_size, "samples": preset.curve_samples, "error": ""}
        try:
            given = (drawn or {}).get(name)
            if given is not None and len(given.images) >= preset.curve_samples:
                given = given.head(preset.curve_samples)
                row["reused_draw"] = True
            else:
                given = None
            row.update(evaluate(name, samplers[name][1], small, grid(name, step), given).columns)
        except KeyboardInterrupt:
            raise
        except MetricsFailed as exc:
            row.update(exc.partial, error=str(exc))
        except BaseException as exc:  # noqa: BLE001 - a point that cannot be drawn is recorded, training goes on
            row["error"] = f"{type(exc).__name__}: {exc}"
            log(f"{base['model']}/{name}: curve point at step {step} failed: {row['error']}")
        rows.append(row)
    return rows
