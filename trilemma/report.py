"""``trilemma report``: render one run's report, pool several runs' seeds, or compare two runs.

The jobs live in their own modules: ``report_stats`` (aggregation over seeds), ``report_protocol``
(what the runs declared, and what may be pooled or compared), ``report_document`` (the one
description of a report, rendered as Markdown and HTML).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from trilemma.columns import chart_axes
from trilemma.errors import TrilemmaError
from trilemma.report_document import (
    comparison_document,
    comparison_table,
    headline_table,
    row_marks,
    run_document,
    sample_grids,
    seed_spread,
    shared_rows,
    write_document,
)
from trilemma.report_protocol import check_poolable, check_protocols, columns_of, separate_identities
from trilemma.report_stats import aggregate, bootstrap_interval
from trilemma.rundir import RunDirectory

__all__ = ["aggregate", "bootstrap_interval", "columns_of", "comparison_table", "load_run", "print_summary",
           "render_run", "render_runs"]


def load_run(run_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    directory = RunDirectory(run_dir)
    return directory.read_results(), directory.read_manifest()


def render_run(run_dir: Path) -> Path:
    """Write ``report.md``, ``report.html`` and the plots of one run directory."""
    frame, manifest = load_run(run_dir)
    frame = separate_identities(frame)
    out = RunDirectory(run_dir)
    doc = run_document(out, f"trilemma run {out.root.name}", frame, aggregate(frame), [manifest],
                       sample_grids([run_dir], frame), out.read_curves())
    return write_document(out, doc)


def render_runs(run_dirs: Sequence[Path], out: Path | None = None, force: bool = False,
                compare: bool = False, all_columns: bool = False, spread_runs: Sequence[Path] = ()) -> Path:
    """One run: its own report. Several: pool their rows (seeds) into one report under ``out``,
    or with ``compare`` put two runs side by side (headline columns, or ``all_columns``), quoting
    FID's training-seed spread from ``spread_runs`` (pooled) when given.
    Protocols must agree, and compared runs share rows, unless ``force``."""
    run_dirs = [Path(r) for r in run_dirs]
    if spread_runs and not compare:
        raise TrilemmaError("--seed-spread only applies with --compare")
    if len(run_dirs) == 1 and not compare:
        path = render_run(run_dirs[0])
        print(f"wrote {path} and {path.with_suffix('.html')}")
        return path
    loaded = [load_run(r) for r in run_dirs]
    manifests = [m for _, m in loaded]
    check_protocols(run_dirs, manifests, force)
    if compare and len(run_dirs) != 2:
        raise TrilemmaError("--compare takes exactly two run directories")
    if compare and not force and not shared_rows(loaded[0][0], loaded[1][0]):
        raise TrilemmaError(f"{run_dirs[0]} and {run_dirs[1]} share no (model, sampler) rows: nothing to compare "
                            "(add --force to write the side-by-side anyway)")
    # Refused before anything is written: rows that do not pool, a spread with nothing to quote.
    if not compare:
        frame = _pooled_rows(run_dirs, [f for f, _ in loaded], force)
    columns = columns_of(manifests)
    spread, source = None, ""
    if spread_runs:
        quality = chart_axes(columns).get("quality")
        if quality is None:
            raise TrilemmaError("--seed-spread: the runs declare no quality column to quote a spread of")
        spread = seed_spread(_pooled_rows(spread_runs, [load_run(Path(r))[0] for r in spread_runs], force),
                             quality.name)
        source = ", ".join(map(str, spread_runs))
        if not spread:
            raise TrilemmaError(f"--seed-spread {source}: no model and sampler there has two or more seeds")
    directory = RunDirectory(out if out else Path("reports") / time.strftime("combined-%Y%m%d-%H%M%S"))
    directory.root.mkdir(parents=True, exist_ok=True)
    if compare:
        doc, table = comparison_document([str(r) for r in run_dirs], loaded[0][0], loaded[1][0], manifests,
                                         columns, all_columns, spread, source)
        directory.write_text(directory.file("comparison.csv"), table.to_csv(index=False))
    else:
        directory.write_results(frame)
        directory.write_manifest({"combined_from": [str(r) for r in run_dirs], "runs": manifests})
        summary = aggregate(frame)
        directory.write_text(directory.file("summary.csv"), summary.drop(columns="failed_values").to_csv(index=False))
        curves = pd.concat([RunDirectory(r).read_curves() for r in run_dirs], ignore_index=True)
        doc = run_document(directory, f"trilemma: {len(run_dirs)} runs pooled", frame, summary, manifests,
                           sample_grids(run_dirs, frame), curves)
    path = write_document(directory, doc)
    print(f"wrote {path} and {path.with_suffix('.html')}")
    return path


def _pooled_rows(run_dirs: Sequence[Path], frames: Sequence[pd.DataFrame], force: bool) -> pd.DataFrame:
    """Several runs' rows as one frame, each tagged with its run, refused unless they pool (one
    identity per row, each seed once) or ``force``."""
    return check_poolable(pd.concat([f.assign(run=str(r)) for f, r in zip(frames, run_dirs, strict=True)],
                                    ignore_index=True), force)


def print_summary(run_dir: Path) -> None:
    frame, manifest = load_run(run_dir)
    frame = separate_identities(frame)
    summary = aggregate(frame)
    print(headline_table(summary, columns_of([manifest]), row_marks(summary, [manifest])).to_string(index=False))
