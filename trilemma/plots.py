"""The report's figures (matplotlib, Agg): class histograms, the trilemma chart, and the quality
axis against the cost axis (FID against NFE) with its Pareto frontier; every column they read is
given to them by its declaration."""

from __future__ import annotations

import math
from pathlib import Path

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
        for _, row in rows.iterrows():
            text = row["model"] if row["sampler"] == "default" else row["sampler"]
            ax.annotate(text, (row[x], row[y]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    frontier = pareto_frontier(points, x=x, y=y) if quality.better != "higher" else pareto_frontier(
        points.assign(**{y: -points[y]}), x=x, y=y).assign(**{y: lambda f: -f[y]})
    ax.step(frontier[x], frontier[y], where="post", color="black", linestyle="--", linewidth=1,
            label="Pareto frontier")
    ax.scatter(frontier[x], frontier[y], s=140, facecolors="none", edgecolors="black", linewidths=1.2)
    ax.set_xscale("log")
    ax.set_xlabel(f"{cost.title or cost.name} per sample (log scale)")
    ax.set_ylabel(f"{quality.title or quality.name} ({quality.better or '?'} is better)")
    ax.set_title("Quality against sampling cost")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
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
    """A three-axis radar chart: quality, speed and coverage for each (model, sampler)."""
    rows = trilemma_scores(frame, axes)
    if rows.empty:
        return None
    axes_names = [f"quality\n({axes['quality'].title or axes['quality'].name}, relative)",
                  f"speed\n(log {axes['speed'].title or axes['speed'].name}, rescaled)",
                  f"coverage\n({axes['coverage'].name})"]
    angles = np.linspace(0, 2 * np.pi, 3, endpoint=False).tolist()
    fig, ax = plt.subplots(figsize=(6.5, 6), subplot_kw={"polar": True})
    colours = plt.cm.tab10(np.linspace(0, 1, 10))
    for i, (_, row) in enumerate(rows.iterrows()):
        values = [row["quality"], row["speed"], row["coverage"]]
        ax.plot(angles + angles[:1], values + values[:1], "o-", color=colours[i % 10], linewidth=1.5,
                label=label(row), markersize=4)
        ax.fill(angles + angles[:1], values + values[:1], color=colours[i % 10], alpha=0.06)
    ax.set_xticks(angles)
    ax.set_xticklabels(axes_names, fontsize=9)
    ax.set_ylim(0, 1.05)
    ax.set_yticks([0.25, 0.5, 0.75, 1.0])
    ax.set_yticklabels(["0.25", "0.5", "0.75", "1"], fontsize=7)
    ax.set_rlabel_position(180)
    ax.set_title("The generative learning trilemma (outward is better on every axis)", fontsize=10, pad=20)
    ax.legend(loc="upper left", bbox_to_anchor=(1.05, 1.0), fontsize=8)
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
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(3.6 * cols, 2.6 * math.ceil(n / cols)),
                             squeeze=False, sharey=True)
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
    fig.tight_layout()
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
