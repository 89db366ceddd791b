"""The report's figures (matplotlib, Agg): class histograms, the trilemma chart, and the quality
axis against the cost axis (FID against NFE) with its Pareto frontier; every column they read is
given to them by its declaration."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from trilemma.columns import Column  # noqa: E402

DPI = 110
#: The three axes of the trilemma chart (a cost axis, such as NFE, is the frontier's x instead).
TRILEMMA_AXES = ("quality", "speed", "coverage")


def label(row: pd.Series) -> str:
    return f"{row['model']}/{row['sampler']}"


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def pareto_frontier(frame: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Rows no other row beats on both ``x`` and ``y`` (lower is better on both), sorted by ``x``."""
    points = frame.dropna(subset=[x, y]).sort_values([x, y])
    keep, best = [], math.inf
    for index, row in points.iterrows():
        if row[y] < best:
            keep.append(index)
            best = row[y]
    return points.loc[keep]


#: Where a point's label may go, in points from the point: right, above, below, left, further out.
LABEL_OFFSETS = ((5, 3), (5, -10), (-5, 8), (-5, -14), (8, 14), (8, -20), (-8, 18), (-8, -24))


def _place_labels(ax: plt.Axes, points: list[tuple[float, float, str]]) -> None:
    """Label each point at the first offset whose text box overlaps no label placed before it (the
    last offset when every one does): neighbouring samplers' names stay readable."""
    renderer = ax.figure.canvas.get_renderer()  # type: ignore[attr-defined]  # the Agg canvas the report draws on
    placed: list[Any] = []
    for px, py, text in points:
        for offset in LABEL_OFFSETS:
            label_ = ax.annotate(text, (px, py), textcoords="offset points", xytext=offset, fontsize=7,
                                 ha="left" if offset[0] > 0 else "right")
            box = label_.get_window_extent(renderer).expanded(1.05, 1.1)
            if not any(box.overlaps(other) for other in placed) or offset == LABEL_OFFSETS[-1]:
                placed.append(box)
                break
            label_.remove()


def quality_vs_cost(frame: pd.DataFrame, path: Path, quality: Column, cost: Column) -> Path | None:
    """The quality axis (FID) against the cost axis (NFE, log scale), every (model, sampler), the
    Pareto frontier marked."""
    y, x = quality.name, cost.name
    points = frame.dropna(subset=[x, y])
    if points.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    models = sorted(points["model"].unique())
    colours = {model: plt.cm.tab10(i % 10) for i, model in enumerate(models)}
    for model in models:
        rows = points[points["model"] == model].sort_values(x)
        ax.plot(rows[x], rows[y], "o-", color=colours[model], label=model, alpha=0.85, markersize=6)
    frontier = pareto_frontier(points, x=x, y=y) if quality.better != "higher" else pareto_frontier(
        points.assign(**{y: -points[y]}), x=x, y=y).assign(**{y: lambda f: -f[y]})
    ax.step(frontier[x], frontier[y], where="post", color="black", linestyle="--", linewidth=1,
            label="Pareto frontier")
    ax.scatter(frontier[x], frontier[y], s=140, facecolors="none", edgecolors="black", linewidths=1.2)
    ax.set_xscale("log")
    ax.set_xlabel(f"{cost.label} per sample (log scale)")
    ax.set_ylabel(f"{quality.label} ({quality.better or '?'} is better)")
    ax.set_title("Quality against sampling cost")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _place_labels(ax, [(row[x], row[y], row["model"] if row["sampler"] == "default" else row["sampler"])
                       for _, row in points.iterrows()])
    return _save(fig, path)


def _relative(values: pd.Series, better: str | None) -> pd.Series:
    """Higher is better, in [0, 1]: a share of 1 as is, any other value relative to the best row."""
    if better == "lower":
        return values.min() / values
    if values.between(0, 1).all():
        return values
    return values / values.max()


def trilemma_scores(frame: pd.DataFrame, axes: dict[str, Column]) -> pd.DataFrame:
    """Each axis in [0, 1], higher is better, relative to the rows of this report: quality and
    coverage relative to the best row (a share as it is); speed as log rescaled from the slowest
    (0.05) to the fastest (1)."""
    axes = {kind: column for kind, column in axes.items() if kind in TRILEMMA_AXES}
    if set(axes) != set(TRILEMMA_AXES):
        return frame.iloc[0:0]
    rows = frame.dropna(subset=[c.name for c in axes.values() if c.name in frame]).copy()
    if rows.empty or any(c.name not in rows for c in axes.values()):
        return frame.iloc[0:0]
    rows["quality"] = _relative(rows[axes["quality"].name], axes["quality"].better)
    log_speed = np.log10(rows[axes["speed"].name]) * (-1 if axes["speed"].better == "lower" else 1)
    spread = log_speed.max() - log_speed.min()
    rows["speed"] = 0.05 + 0.95 * ((log_speed - log_speed.min()) / spread if spread > 0 else 1.0)
    rows["coverage"] = _relative(rows[axes["coverage"].name], axes["coverage"].better)
    return rows


def trilemma_chart(frame: pd.DataFrame, path: Path, axes: dict[str, Column]) -> Path | None:
    """Three-axis radar charts of quality, speed and coverage (scores relative to every row of the
    report): small multiples, one panel per model with its samplers, so each stays readable."""
    rows = trilemma_scores(frame, axes)
    if rows.empty:
        return None
    axes_names = [f"quality\n({axes['quality'].label})",
                  f"speed\n(log {axes['speed'].label})",
                  f"coverage\n({axes['coverage'].name})"]
    angles = np.linspace(0, 2 * np.pi, 3, endpoint=False).tolist()
    models = list(dict.fromkeys(rows["model"]))
    cols = min(3, len(models))
    nrows = math.ceil(len(models) / cols)
    fig, panels = plt.subplots(nrows, cols, figsize=(4.2 * cols, 4.0 * nrows), subplot_kw={"polar": True},
                               squeeze=False, constrained_layout=True)
    colours = plt.cm.tab10(np.linspace(0, 1, 10))
    for ax, model in zip(panels.flat, models, strict=False):
        for i, (_, row) in enumerate(rows[rows["model"] == model].iterrows()):
            values = [row["quality"], row["speed"], row["coverage"]]
            ax.plot(angles + angles[:1], values + values[:1], "o-", color=colours[i % 10], linewidth=1.5,
                    label=row["sampler"], markersize=4)
            ax.fill(angles + angles[:1], values + values[:1], color=colours[i % 10], alpha=0.08)
        ax.set_xticks(angles)
        ax.set_xticklabels(axes_names, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_yticks([0.5, 1.0])
        ax.set_yticklabels(["0.5", "1"], fontsize=7)
        ax.set_title(model, fontsize=10, pad=14)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=7, ncol=2, frameon=False)
    for ax in list(panels.flat)[len(models):]:
        ax.axis("off")
    fig.suptitle("The generative learning trilemma: outward is better on every axis (relative to the best row)",
                 fontsize=11)
    return _save(fig, path)


def class_histograms(frame: pd.DataFrame, share_columns: list[str], real_shares: list[float], path: Path,
                     titles: list[str] | None = None) -> Path | None:
    """Class shares (``share_columns``, one per class) of each row's samples against the real ones,
    a panel a row (titled by ``titles``, else model/sampler)."""
    rows = frame.dropna(subset=share_columns)
    if rows.empty:
        return None
    n = len(rows)
    cols = min(3, n)
    # Each panel its own y-range: one row's single class at 70% would flatten everyone else's ~2% bars.
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(3.6 * cols, 2.6 * math.ceil(n / cols)),
                             squeeze=False, constrained_layout=True)
    digits = np.arange(len(share_columns))
    titles = titles or [label(row) for _, row in rows.iterrows()]
    for ax, (_, row), title in zip(axes.flat, rows.iterrows(), titles, strict=False):
        ax.bar(digits, [100 * row[c] for c in share_columns], color="tab:blue", alpha=0.75, label="generated")
        ax.plot(digits, [100 * s for s in real_shares], "k_", markersize=14, markeredgewidth=2, label="real (test)")
        ax.set_title(title, fontsize=8)
        ax.set_xticks(digits)
        ax.set_xlabel("class (pinned classifier)", fontsize=8)
        ax.set_ylabel("share of samples (%)", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Class histograms of generated digits", fontsize=10)
    return _save(fig, path)


def learning_curves(curves: pd.DataFrame, x: str, y: str, x_label: str, y_label: str, path: Path) -> Path | None:
    """One line per model and sampler: ``y`` against ``x`` (log x), seeds averaged."""
    points = curves.dropna(subset=[x, y])
    if points.empty:
        return None
    means = points.groupby(["model", "sampler", x], sort=False)[y].mean().reset_index()
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for i, ((model, sampler), line) in enumerate(means.groupby(["model", "sampler"], sort=False)):
        line = line.sort_values(x)
        ax.plot(line[x], line[y], marker="o", ms=3, color=plt.cm.tab10(i % 10), linestyle="-" if i < 10 else "--",
                label=f"{model}/{sampler}")
    ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _save(fig, path)
