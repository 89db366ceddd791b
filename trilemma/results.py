"""The results table's format: one row per (model, sampler, seed), its columns in declaration
order, and how rows are kept in memory. Where the table lives on disk is the run directory's business."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from trilemma.columns import HARNESS_COST, HARNESS_IDENTITY, Column, ordered

KEY = ["model", "sampler", "seed"]
OK, FAILED = "ok", "failed"
#: With no metric declarations at hand (reading a bare CSV), the harness's own columns still lead.
HARNESS_COLUMNS = (*HARNESS_IDENTITY, *HARNESS_COST)
#: The harness's text columns; a run's own declarations (its manifest) add the metrics'.
TEXT_COLUMNS = tuple(column.name for column in HARNESS_COLUMNS if column.text)


def text_columns(declared: Sequence[Column]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*TEXT_COLUMNS, *(c.name for c in declared if c.text and not c.is_family)]))


def rows_frame(rows: list[dict[str, Any]], declared: Sequence[Column] = HARNESS_COLUMNS) -> pd.DataFrame:
    """Rows as a frame with every declared column present (empty where a row has no value),
    families and optional columns only where filled, in declaration order."""
    frame = pd.DataFrame(rows)
    for column in declared:
        if not column.is_family and not column.optional and column.name not in frame:
            frame[column.name] = "" if column.text else math.nan
    return frame[ordered(frame.columns, declared)]


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


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

    def replace_samplers(self, model: str, seed: int, rows: list[dict[str, Any]]) -> None:
        """Drop the rows of (model, seed) for the samplers in ``rows`` and add ``rows``: an evaluation
        of a trained cell keeps the rows of its other samplers."""
        samplers = {str(r["sampler"]) for r in rows}
        self.rows = [r for r in self.rows if self._cell(r) != (model, seed) or str(r["sampler"]) not in samplers] \
            + list(rows)

    def rows_of(self, model: str, seed: int) -> list[dict[str, Any]]:
        return [r for r in self.rows if self._cell(r) == (model, seed)]

    def recorded_identities(self, model: str, seed: int) -> set[str]:
        """The identities the rows of (model, seed) were trained as ("" for rows from before identities)."""
        return {_text(r.get("identity")) for r in self.rows_of(model, seed)}

    def finished(self, model: str, seed: int, samplers: Sequence[str] = ()) -> bool:
        """True when (model, seed) has rows, all of them succeeded, and every sampler in ``samplers``
        has its row (whether they were trained as the cell asks is ``runner.recorded_state``'s question)."""
        rows = self.rows_of(model, seed)
        if not rows or any(r["status"] != OK for r in rows):
            return False
        return set(samplers) <= {str(r["sampler"]) for r in rows}

    def failed_count(self) -> int:
        return sum(1 for r in self.rows if r["status"] != OK)

    def frame(self, declared: Sequence[Column] = HARNESS_COLUMNS) -> pd.DataFrame:
        return rows_frame(self.rows, declared)
