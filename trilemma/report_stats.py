"""Statistics over seeds: one row per (model, sampler) with means, spreads and bootstrap intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

KEY = ["model", "sampler"]
BOOTSTRAP_RESAMPLES = 2000


def bootstrap_interval(values: Sequence[float], level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (NaN for fewer than two values)."""
    finite = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if len(finite) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = rng.choice(finite, size=(resamples, len(finite)), replace=True).mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def numeric_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in ("seed",) and pd.api.types.is_numeric_dtype(frame[c])]


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, sampler): ``n_seeds``, ``failed``, and for each numeric metric its
    mean, ``<col>_std`` (ddof 1), ``<col>_ci_low`` and ``<col>_ci_high`` over the successful seeds;
    where no seed succeeded, ``failed_values`` holds what the failed rows computed (for display)."""
    records = []
    order = list(dict.fromkeys(zip(frame["model"], frame["sampler"], strict=True)))
    for model, sampler in order:
        group = frame[(frame["model"] == model) & (frame["sampler"] == sampler)]
        ok = group[group["status"] == "ok"]
        record: dict[str, Any] = {"model": model, "sampler": sampler, "n_seeds": len(ok),
                                  "failed": int((group["status"] != "ok").sum()),
                                  "error": "; ".join(sorted(set(group.loc[group["status"] != "ok", "error"].astype(str))))}
        failed = group[group["status"] != "ok"]
        partial: dict[str, float] = {}
        for column in numeric_columns(frame):
            values = ok[column].dropna().to_numpy(dtype=float)
            record[column] = float(values.mean()) if len(values) else math.nan
            record[f"{column}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            record[f"{column}_ci_low"], record[f"{column}_ci_high"] = bootstrap_interval(values)
            if not len(ok) and column in failed:
                kept = failed[column].dropna().to_numpy(dtype=float)
                if len(kept):
                    partial[column] = float(kept.mean())
        record["failed_values"] = partial  # shown greyed, never ranked, pooled or plotted
        records.append(record)
    return pd.DataFrame(records)
