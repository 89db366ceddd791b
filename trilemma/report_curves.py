"""The report's "Learning curves" section and its "still improving" marks (issue 24).

A headline row is marked when its model's curve metric (the measured column with the highest
declared ``curve_rank``: FID in the autoencoder's space where it was measured, else the
classifier's) improved by more than ``IMPROVING_SHARE`` over the last doubling of its budget, from
the curve point at half the budget (or the nearest before it) to the last: a reader sees at a
glance which rows show their budget rather than their method.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from trilemma.columns import Column, chart_axes
from trilemma.metrics import ReportSection

IMPROVING_SHARE = 0.10
IMPROVING_MARK = "↗ still improving"


def curve_metric(curves: pd.DataFrame, columns: Sequence[Column]) -> Column | None:
    """The curves' metric: of the declared columns with a ``curve_rank``, the highest-ranked one measured."""
    ranked = sorted((c for c in columns if c.curve_rank > 0), key=lambda c: -c.curve_rank)
    return next((c for c in ranked if c.name in curves and curves[c.name].notna().any()), None)


def improvements(curves: pd.DataFrame, columns: Sequence[Column]) -> pd.DataFrame:
    """Per (model, sampler): the curve metric at the last point and at the point of the last doubling,
    seeds averaged, and the share it improved by (its decrease for a lower-is-better metric)."""
    declared = curve_metric(curves, columns)
    if declared is None:
        return pd.DataFrame()
    metric, sign = declared.name, -1.0 if declared.better == "higher" else 1.0
    means = curves.dropna(subset=[metric]).groupby(["model", "sampler", "step"])[metric].mean().reset_index()
    records = []
    for (model, sampler), line in means.groupby(["model", "sampler"], sort=False):
        line = line.sort_values("step")
        last = line.iloc[-1]
        earlier = line[line["step"] <= last["step"] / 2]
        if earlier.empty:
            continue
        before = earlier.iloc[-1]
        share = sign * (before[metric] - last[metric]) / abs(before[metric]) if before[metric] != 0 else math.nan
        records.append({"model": model, "sampler": sampler, "metric": metric, "before_step": int(before["step"]),
                        "before": before[metric], "last_step": int(last["step"]), "last": last[metric],
                        "improved": share})
    return pd.DataFrame(records)


def improving_models(curves: pd.DataFrame, columns: Sequence[Column]) -> set[str]:
    found = improvements(curves, columns)
    return set(found.loc[found["improved"] > IMPROVING_SHARE, "model"]) if not found.empty else set()


def curve_marks(summary: pd.DataFrame, curves: pd.DataFrame, columns: Sequence[Column]) -> list[str]:
    """``IMPROVING_MARK`` for each headline row whose model's curve is still improving."""
    improving = improving_models(curves, columns) if not curves.empty else set()
    return [IMPROVING_MARK if model in improving else "" for model in summary["model"]]


def budget_shares(fractions: pd.Series) -> dict[float, float]:
    """Each recorded share of the budget → the one column it is shown in: a point is at a whole step,
    so the same preset share lands a step apart for models of different step counts (0.1253 and
    0.1267 for 1/8); shares within 5% of each other are one column, named by the one written with
    the fewest digits (the preset's own share where a model hit it exactly), else the median's nearest."""
    groups: list[list[float]] = []
    for value in sorted(set(fractions.dropna())):
        if groups and value <= groups[-1][0] * 1.05:
            groups[-1].append(value)
        else:
            groups.append([value])
    def name(group: list[float]) -> float:
        middle = float(pd.Series(group).median())
        return min(group, key=lambda v: (len(f"{v:.6g}"), abs(v - middle)))

    return {value: name(group) for group in groups for value in group}


def curves_section(curves: pd.DataFrame, frame: pd.DataFrame, plots_dir: Path,
                   columns: Sequence[Column]) -> ReportSection | None:
    """A table of the curve metric at each point, the marks, and the curves against images and PFLOP."""
    from trilemma import plots

    declared = curve_metric(curves, columns)
    if declared is None:
        return None
    metric = declared.name
    curves = curves.copy()
    per_step = frame.groupby("model")["train_gflop_per_step"].mean() if "train_gflop_per_step" in frame else {}
    # A student's compute starts where its teacher's training ended: the teacher's PFLOP are counted.
    teachers = (frame.groupby("model")["teacher_train_pflop"].mean().fillna(0.0)
                if "teacher_train_pflop" in frame else {})
    curves["train_pflop"] = [teachers.get(model, 0.0) + step * per_step.get(model, math.nan) / 1e6
                             for model, step in zip(curves["model"], curves["step"], strict=True)]
    curves["share"] = curves["fraction"].map(budget_shares(curves["fraction"]))
    pivot = (curves.groupby(["model", "sampler", "share"])[metric].mean().unstack("share")
             .sort_index(axis=1))
    table = pivot.map(lambda v: "–" if not math.isfinite(v) else f"{v:.1f}")
    table.columns = [f"{100 * c:.3g}%" for c in table.columns]
    found = improvements(curves, columns)
    shares = {(r.model, r.sampler): r.improved for r in found.itertuples()} if not found.empty else {}
    table["last doubling"] = [f"{shares.get(key, math.nan):+.0%}".replace("+nan%", "–") for key in table.index]
    table["mark"] = [IMPROVING_MARK if shares.get(key, 0) > IMPROVING_SHARE else "" for key in table.index]
    table = table.reset_index()
    title = declared.label
    marked = sorted({m for (m, _), share in shares.items() if share > IMPROVING_SHARE})
    samples = ", ".join(f"{n:g}" for n in sorted(curves["samples"].dropna().unique())) if "samples" in curves else "?"
    notes = [f"Each cell was also evaluated at shares of its training budget on {samples} samples of its curve "
             f"samplers (fewer than the rows': FID is biased upward at small samples, so compare a curve's points "
             f"with each other, not with the table); the columns are the budget's share, the values the {title}, "
             "seeds averaged.",
             f"{IMPROVING_MARK}: the {title} improved by more than {IMPROVING_SHARE:.0%} over the last doubling of "
             "the budget (from the point at half of it to the end): the row shows its budget as much as its method; "
             "every row of a marked model carries the mark. "
             + (f"Marked: {', '.join(marked)}." if marked else "No model is marked.")]
    figures = {
        f"{title} against training images": lambda path: plots.learning_curves(
            curves, "images_seen", metric, "training images (log)", title, path),
        f"{title} against training compute": lambda path: plots.learning_curves(
            curves, "train_pflop", metric, "training PFLOP (log; counted FLOPs per step × steps, a student's "
            "teachers' included)", title, path),
    }
    coverage = chart_axes(columns).get("coverage")
    if coverage is not None and coverage.name in curves and curves[coverage.name].notna().any():
        label = coverage.title or coverage.name.replace("_", " ")
        figures[f"{label[:1].upper()}{label[1:]} against training images"] = lambda path: plots.learning_curves(
            curves, "images_seen", coverage.name, "training images (log)", label, path)
    return ReportSection("Learning curves", table, notes, figures)
