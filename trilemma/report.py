"""Results → pandas → Markdown and console tables."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from trilemma.errors import TrilemmaError
from trilemma.results import MANIFEST_NAME, RESULTS_NAME, atomic_write_text, read_results

HEADLINE = [
    ("model", "model", None), ("sampler", "sampler", None), ("seed", "seed", None), ("status", "status", None),
    ("fid", "FID ↓", "{:.2f}"), ("is_mean", "IS ↑", "{:.2f}"), ("kid_mean", "KID ↓", "{:.4f}"),
    ("precision", "precision ↑", "{:.3f}"), ("recall", "recall ↑", "{:.3f}"), ("nfe", "NFE ↓", "{:g}"),
    ("ms_per_sample", "ms/sample ↓", "{:.3g}"), ("samples_per_s", "samples/s ↑", "{:.4g}"),
    ("modes_covered", "modes ↑", "{:g}"), ("kl_to_test", "KL ↓", "{:.3f}"),
    ("train_seconds", "train s", "{:.0f}"), ("params", "params", "{:,.0f}"),
]


def load_run(run_dir: Path) -> tuple[pd.DataFrame, dict]:
    results = Path(run_dir) / RESULTS_NAME
    if not results.exists():
        raise TrilemmaError(f"{run_dir}: no {RESULTS_NAME}; is it a trilemma run directory?")
    manifest_path = Path(run_dir) / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    return read_results(results), manifest


def _format(value: object, fmt: str | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if fmt is None:
        return str(value)
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def headline_table(frame: pd.DataFrame) -> pd.DataFrame:
    columns = [(key, title, fmt) for key, title, fmt in HEADLINE if key in frame]
    table = pd.DataFrame({title: [_format(v, fmt) for v in frame[key]] for key, title, fmt in columns})
    return table


def markdown_table(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def render_run(run_dir: Path) -> Path:
    """Write ``report.md`` for one run directory; returns its path."""
    frame, manifest = load_run(run_dir)
    lines = [f"# trilemma run `{Path(run_dir).name}`", ""]
    if manifest:
        device = manifest.get("device", {})
        lines += [f"Dataset {manifest.get('dataset')}, preset {manifest.get('preset')}, seeds {manifest.get('seeds')}, "
                  f"device {device.get('name', '?')}.", ""]
    lines += ["## Results", "", markdown_table(headline_table(frame)), ""]
    failed = frame[frame["status"] != "ok"]
    if len(failed):
        lines += ["## Failures", ""] + [f"- {r.model}/{r.sampler} seed {r.seed}: {r.error}" for r in failed.itertuples()] + [""]
    path = Path(run_dir) / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def render_runs(run_dirs: Sequence[Path], out: Path | None = None, force: bool = False) -> None:
    for run_dir in run_dirs:
        print(f"wrote {render_run(run_dir)}")


def print_summary(run_dir: Path) -> None:
    frame, _ = load_run(run_dir)
    print(headline_table(frame).to_string(index=False))
