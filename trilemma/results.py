"""The results table's format: one row per (model, sampler, seed), its columns in declaration
order, and how rows are kept in memory. Where the table lives on disk is the run directory's business."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from trilemma.columns import HARNESS_COST, HARNESS_IDENTITY, Column, ordered

TEXT_COLUMNS = ("model", "sampler", "dataset", "status", "error", "config_hash", "train_precision", "bpd_kind",
                "nfe_check")
KEY = ["model", "sampler", "seed"]
OK, FAILED = "ok", "failed"
#: With no metric declarations at hand (reading a bare CSV), the harness's own columns still lead.
HARNESS_COLUMNS = (*HARNESS_IDENTITY, *HARNESS_COST)


def rows_frame(rows: list[dict[str, Any]], declared: Sequence[Column] = HARNESS_COLUMNS) -> pd.DataFrame:
    """Rows as a frame with every declared column present (empty where a row has no value),
    families and optional columns only where filled, in declaration order."""
    frame = pd.DataFrame(rows)
    for column in declared:
        if not column.is_family and not column.optional and column.name not in frame:
            frame[column.name] = "" if column.name in TEXT_COLUMNS else math.nan
    return frame[ordered(frame.columns, declared)]


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

    def frame(self, declared: Sequence[Column] = HARNESS_COLUMNS) -> pd.DataFrame:
        return rows_frame(self.rows, declared)
