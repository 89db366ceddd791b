"""The report's "Where the time goes" section: each row's and each model's time, by stage.

Set-up and training are a cell's (one model and seed), shared by its sampler rows; drawing the
scored samples and each metric are a row's. The features of the samples are computed by the first
metric that asks for them and counted in its time.
"""

from __future__ import annotations

import math

import pandas as pd

from trilemma.columns import TIME_COLUMNS, Column
from trilemma.metrics import ReportSection


def _stage_columns(frame: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """(stage, its columns in ``frame``) for each stage with a column there."""
    stages = []
    for name, title in TIME_COLUMNS:
        columns = [c for c in frame.columns if Column(name).matches(c)]
        if columns:
            stages.append((title, columns))
    return stages


def time_section(frame: pd.DataFrame) -> ReportSection | None:
    """Seconds per model by stage (cells counted once for set-up and training), with each stage's share."""
    stages = _stage_columns(frame)
    if not any(title == "drawing samples" for title, _ in stages):
        return None  # runs made before these columns were recorded
    per_cell = {"set-up", "training", "learning curves"}
    records = []
    for model, rows in frame.groupby("model", sort=False):
        record: dict[str, object] = {"model": model, "rows": len(rows)}
        for title, columns in stages:
            values = rows.drop_duplicates(["seed"])[columns] if title in per_cell else rows[columns]
            record[title] = float(values.sum(min_count=1).sum()) if values.notna().any().any() else math.nan
        records.append(record)
    table = pd.DataFrame(records)
    titles = [title for title, _ in stages]
    table["total"] = table[titles].sum(axis=1)
    totals = table[titles].sum()
    grand = float(totals.sum())
    metric_columns = dict(stages).get("metrics", [])
    by_metric = frame[metric_columns].sum().sort_values(ascending=False) if metric_columns else pd.Series(dtype=float)
    shown = table.copy()
    for title in [*titles, "total"]:
        shown[title] = shown[title].map(lambda v: "–" if not math.isfinite(v) else f"{v:,.0f}")
    shared = int(frame["parallel_cells"].max()) if "parallel_cells" in frame and frame["parallel_cells"].notna().any() else 1
    notes = [f"⚠ Up to {shared} cells ran at once (--jobs): their time columns (training, drawing, speed) were "
             "measured sharing the machine and are not those of a cell alone." if shared > 1 else "",
             f"All rows: {grand / 60:,.1f} min in cells; "
             + ", ".join(f"{title} {totals[title] / 60:,.1f} min ({totals[title] / grand:.0%})" for title in titles)
             + ".",
             "Metrics, most expensive first: " + ", ".join(
                 f"{name.removeprefix('seconds_metric_').replace('_', '-')} {seconds:,.0f} s"
                 for name, seconds in by_metric.items() if seconds > 0) + "."
             if len(by_metric) else "",
             "Seconds. Set-up, training and learning curves are counted once per cell (model and seed); drawing and "
             "metrics per row. "
             "The samples' features are computed by the first metric that needs them and counted in its time; the "
             "process's start-up, data loading and the report itself are outside the cells."]
    return ReportSection("Where the time goes", shown, [note for note in notes if note])
