"""The results table's format: one row per (model, sampler, seed), its stable columns, and how
rows are kept in memory. Where the table lives on disk is the run directory's business."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pandas as pd

# Stable column names (DESIGN.md, Reports); metrics may add columns, never rename these.
COLUMNS = [
    "model", "sampler", "seed", "dataset", "status", "error",
    "fid", "is_mean", "is_std", "kid_mean", "kid_std", "precision", "recall",
    "nfe", "ms_per_sample", "samples_per_s", "latency_ms_batch1",
    "modes_covered", "modes_total", "kl_to_test", "kl_to_uniform", "low_confidence_share",
    "train_seconds", "train_steps", "images_seen", "params", "peak_mem_bytes", "config_hash",
]
TEXT_COLUMNS = ("model", "sampler", "dataset", "status", "error", "config_hash")
KEY = ["model", "sampler", "seed"]
OK, FAILED = "ok", "failed"


def ordered_columns(columns: Iterable[str]) -> list[str]:
    """The stable columns first, in their order, then the others alphabetically."""
    columns = list(columns)
    return [c for c in COLUMNS if c in columns] + sorted(c for c in columns if c not in COLUMNS)


def rows_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as a frame with every stable column present, in the stable order."""
    frame = pd.DataFrame(rows)
    for column in COLUMNS:
        if column not in frame:
            frame[column] = "" if column in TEXT_COLUMNS else math.nan
    return frame[ordered_columns(frame.columns)]


class ResultsTable:
    """The rows of a run in memory; a cell (model, seed) is replaced as a whole."""

    def __init__(self, rows: list[dict[str, Any]] | None = None) -> None:
        self.rows: list[dict[str, Any]] = list(rows or [])

    @staticmethod
    def _cell(row: dict[str, Any]) -> tuple[str, int]:
        return str(row["model"]), int(row["seed"])

    def replace_cell(self, model: str, seed: int, rows: list[dict[str, Any]]) -> None:
        """Drop the rows of (model, seed) and add ``rows`` in their place."""
        self.rows = [r for r in self.rows if self._cell(r) != (model, seed)] + list(rows)

    def finished(self, model: str, seed: int) -> bool:
        """True when (model, seed) has rows and all of them succeeded."""
        rows = [r for r in self.rows if self._cell(r) == (model, seed)]
        return bool(rows) and all(r["status"] == OK for r in rows)

    def failed_count(self) -> int:
        return sum(1 for r in self.rows if r["status"] != OK)

    def frame(self) -> pd.DataFrame:
        return rows_frame(self.rows)
