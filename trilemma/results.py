"""The results table (one row per model, sampler and seed) and the run manifest, written
atomically after every row so an interrupted run keeps what finished."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
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
KEY = ["model", "sampler", "seed"]
OK, FAILED = "ok", "failed"
RESULTS_NAME, MANIFEST_NAME = "results.csv", "manifest.json"


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_results(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"error": object, "status": object})
    if "error" in frame:
        frame["error"] = frame["error"].fillna("")
    return frame


def ordered_columns(columns: Iterable[str]) -> list[str]:
    """The stable columns first, in their order, then the others alphabetically."""
    columns = list(columns)
    return [c for c in COLUMNS if c in columns] + sorted(c for c in columns if c not in COLUMNS)


class ResultsTable:
    """``results.csv`` in a run directory, kept in memory and rewritten atomically per row."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / RESULTS_NAME
        self.rows: list[dict[str, Any]] = []
        if self.path.exists():
            self.rows = read_results(self.path).to_dict("records")

    def _key(self, row: dict[str, Any]) -> tuple:
        return (str(row["model"]), str(row["sampler"]), int(row["seed"]))

    def upsert(self, row: dict[str, Any]) -> None:
        key = self._key(row)
        self.rows = [r for r in self.rows if self._key(r) != key] + [row]
        self.write()

    def drop(self, model: str, seed: int) -> None:
        self.rows = [r for r in self.rows if not (r["model"] == model and int(r["seed"]) == seed)]

    def finished(self, model: str, seed: int) -> bool:
        """True when (model, seed) has rows and all of them succeeded."""
        rows = [r for r in self.rows if r["model"] == model and int(r["seed"]) == seed]
        return bool(rows) and all(r["status"] == OK for r in rows)

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows)
        for column in COLUMNS:
            if column not in frame:
                frame[column] = "" if column in ("error", "status", "model", "sampler", "dataset") else math.nan
        return frame[ordered_columns(frame.columns)]

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, self.frame().to_csv(index=False))
