"""Metrics: each fills some report columns for one (model, sampler, seed).

Built-in metrics register through ``register_metrics`` exactly as a plugin's would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import torch

from trilemma.columns import Column
from trilemma.data import Split
from trilemma.datasets import Dataset
from trilemma.model import GenerativeModel
from trilemma.presets import Preset
from trilemma.samplers import Sampler
from trilemma.sampling import Samples
from trilemma.settings import Setting


@dataclass
class EvalContext:
    """Everything a metric may look at for one (model, sampler, seed)."""

    model: GenerativeModel
    model_name: str
    sampler_name: str
    sampler: Sampler
    samples: Samples  # the evaluation samples, drawn once and shared by all metrics
    dataset: Dataset
    data: dict[str, Split]  # CPU uint8 splits of the dataset
    device: torch.device
    preset: Preset
    seed: int
    cache_dir: Path
    settings: Mapping[str, Any] = field(default_factory=dict)  # this metric's declared settings
    log: Callable[[str], None] = print
    cache: dict[str, Any] = field(default_factory=dict)  # computed once per row, shared by its metrics


def joined_marks(metrics: Iterable[Metric], row: Mapping[str, Any]) -> str:
    """Every metric's marks on one row, joined; a metric whose ``marks`` raises gives a mark saying so
    (a plugin's broken marks must not take a report or the sanity suite down)."""
    marks = []
    for metric in metrics:
        try:
            marks += [str(mark) for mark in metric.marks(row)]
        except Exception as exc:  # noqa: BLE001
            marks.append(f"⚠ {metric.name}.marks failed: {type(exc).__name__}")
    return " ".join(marks)


@dataclass
class ReportSection:
    """A metric's own section of ``report.md``: a title, notes (flags first), a table, and figures
    (title → a function that draws the figure into the PNG path it is given and returns it, or
    None when there is nothing to draw)."""

    title: str
    table: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Callable[[Path], Path | None]] = field(default_factory=dict)


class Metric:
    """Base class of a metric.

    ``columns`` declares every column ``compute`` may return (name, better direction, headline);
    a metric cannot fill a column it did not declare, nor declare one the harness or another
    metric owns. ``protocol`` describes how the columns were computed (it goes into the manifest);
    ``protocol_keys`` names the entries of that description that must agree before two runs'
    rows are compared or pooled. ``settings`` declares the options the metric takes: each becomes
    a ``trilemma run`` flag, and its value reaches ``ctx.settings``. ``needs`` says what it looks at
    (``samples``, ``real``, ``features``, ``model``), for ``trilemma list``; ``in_curves`` has it
    computed at every learning-curve point too."""

    name: str = ""
    columns: tuple[Column, ...] = ()  # a class may declare them per instance (one metric per feature space)
    protocol_keys: ClassVar[tuple[str, ...]] = ()
    settings: tuple[Setting, ...] = ()
    needs: ClassVar[tuple[str, ...]] = ("samples",)
    #: Also computed at each learning-curve point (on the curve's smaller sample); for the metrics
    #: of the three axes, not for timing or one-off checks.
    in_curves: ClassVar[bool] = False

    def applies_to(self, dataset: Dataset) -> bool:
        return True

    def compute(self, ctx: EvalContext) -> dict[str, Any]:
        raise NotImplementedError

    def protocol(self, ctx: EvalContext) -> dict[str, Any]:
        """How the columns were computed; a ``summary`` entry, if given, is the report's one line."""
        return {}

    def report_section(self, frame: pd.DataFrame) -> ReportSection | None:
        """Optionally, a section of the report about ``frame``'s rows (every seed)."""
        return None

    def marks(self, row: Mapping[str, Any]) -> list[str]:
        """Short warnings for one row of the headline table (a model and sampler, its columns
        averaged over seeds), shown next to its numbers; the section or the column description
        says what each means."""
        return []
