"""Report columns and who owns them.

Every column of ``results.csv`` is declared once: the harness declares its own (identity, training
cost, parameters), each metric declares the columns it fills. The report's headline table,
``report --compare`` and the column order read these declarations, and a value can only reach a
column through the component that declared it: a plugin can add columns, never fill or rename
another's.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

HARNESS = "harness"


@dataclass(frozen=True)
class Column:
    """One report column (or a family: ``name`` may end in ``*``, e.g. ``class_share_*``).

    ``better`` says which direction is better (``"lower"``, ``"higher"`` or None); ``headline``
    puts it in the report's headline table and in ``report --compare`` under ``title``, formatted
    with ``fmt``. Every row has every declared column (empty where not computed) unless it is
    ``optional`` or a family. ``axis`` makes it an axis of the report's trilemma chart (the first
    declared column for each of quality, speed and coverage; ``cost``, the work per sample such as
    NFE, is the x of the quality-against-cost frontier). ``text`` columns hold words, never numbers
    (read back as text, empty where missing). ``judged`` says how ``trilemma sanity`` holds a
    column with a ``better`` direction to a person's order: ``quality`` (how the samples look: real
    digits best, each degradation worse, digits above blobs and noise), ``coverage`` (which classes
    are there: fewer classes worse, digits above non-digits) or ``none`` (something else, copying).
    ``spread`` names the column holding this one's sampling spread (its sd over the draw alone), which
    ``report --compare`` weighs the quality axis's gaps against. The learning curves follow the
    measured column with the highest ``curve_rank`` (0: never a curve's metric)."""

    name: str
    better: Literal["lower", "higher"] | None = None
    headline: bool = False
    title: str = ""
    fmt: str = "{:.4g}"
    description: str = ""
    optional: bool = False
    axis: Literal["quality", "speed", "coverage", "cost"] | None = None
    text: bool = False
    judged: Literal["quality", "coverage", "none"] = "quality"
    spread: str = ""
    curve_rank: int = 0

    @property
    def is_family(self) -> bool:
        return self.name.endswith("*")

    def matches(self, key: str) -> bool:
        return fnmatch.fnmatchcase(key, self.name) if self.name.endswith("*") else key == self.name

    @property
    def label(self) -> str:
        """What the column is called in reports: its ``title``, else its name."""
        return self.title or self.name

    @property
    def heading(self) -> str:
        arrow = {"lower": " ↓", "higher": " ↑"}.get(self.better or "", "")
        return f"{self.label}{arrow}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Every field a Column declares (a manifest records them; one recorded earlier may lack later ones).
COLUMN_FIELDS = frozenset(f.name for f in fields(Column))

# The harness's own columns: identity first, then cost; metric columns go between the two groups.
HARNESS_IDENTITY = (
    Column("model", description="registry name of the model", text=True),
    Column("sampler", description="the model's sampler (one row each), named after its spec", text=True),
    Column("seed"),
    Column("dataset", text=True),
    Column("status", description="ok, or failed with the error", text=True),
    Column("error", text=True),
)
HARNESS_COST = (
    Column("images_seen", headline=True, title="train images", fmt="{:,.0f}", description="training images processed"),
    Column("train_steps", description="optimizer updates"),
    Column("train_seconds", headline=True, title="train s", fmt="{:.0f}", description="training wall time (a cost)"),
    Column("train_images_per_s", better="higher", headline=True, title="train img/s", fmt="{:.0f}"),
    Column("train_pflop", headline=True, title="train PFLOP", fmt="{:.3g}",
           description="training compute spent: counted FLOPs per step × steps, PFLOP"),
    Column("train_pflop_budget", optional=True,
           description="the compute budget the steps were derived from (--train-pflop), PFLOP; empty on work budgets"),
    Column("teacher", optional=True, text=True,
           description="the row model a student learned from (its teacher's cell, same seed); empty for others"),
    Column("teacher_train_pflop", optional=True, headline=True, title="teacher PFLOP", fmt="{:.3g}",
           description="a student's teacher's training compute, its own teachers' included, PFLOP (not in train_pflop, "
                       "which is the student's own training: any teacher calls in its steps, pair generation say, "
                       "included)"),
    Column("teacher_train_seconds", optional=True, description="a student's teacher's training wall time, its "
                                                               "own teachers' included (a cost)"),
    Column("total_train_pflop", optional=True, headline=True, title="total PFLOP", fmt="{:.3g}",
           description="training compute of the row, its teachers' included: train_pflop + teacher_train_pflop"),
    Column("total_train_seconds", optional=True,
           description="training wall time of the row, its teachers' included (a cost)"),
    Column("train_gflop_per_step", description="mean FLOPs of the real training steps counted under "
                                                "torch.utils.flop_counter (up to 16, spread over the run), GFLOP"),
    Column("train_gflops", better="higher", description="achieved GFLOP/s in training: FLOPs per step × steps / time"),
    Column("peak_gflops", description="the device's measured matmul peak in the training precision, GFLOP/s"),
    Column("utilisation", better="higher", headline=True, title="util.", fmt="{:.0%}",
           description="achieved / peak GFLOP/s in training"),
    Column("train_precision", description="fp32, or bf16 (autocast) where the model and the device allow", text=True),
    Column("train_capped", description="True when the user's --train-seconds cap stopped training early"),
    Column("params", headline=True, title="params (all)", fmt="{:,.0f}", description="every parameter of the model"),
    Column("sampling_params", headline=True, title="params (sampling)", fmt="{:,.0f}",
           description="elements of the model's parameters the scored draw used (watched, not declared)"),
    Column("peak_mem_bytes", description="peak CUDA memory in training (NaN on the CPU)"),
    Column("config_hash", description="hash of the resolved config", text=True),
    Column("identity", description="hash of what the cell was trained as, apart from its seed: model, config, "
                                   "budget, dataset, plugin and version, precision, time cap, threads", text=True),
    Column("sampler_spec", description="the sampler's method and parameters, e.g. ddim:steps=20,eta=1", text=True),
    Column("parallel_cells", description="cells running at once on the machine (--jobs) when the row was measured: "
                                         "with more than one, its time columns were measured sharing the machine"),
    Column("seconds_setup", description="the cell's set-up before training: building the model, the training images "
                                        "on the device, the device's peak (once per cell, repeated on its rows; a cost)"),
    Column("seconds_curves", description="the cell's learning-curve points: drawing and scoring them (once per "
                                         "cell, repeated on its rows; not training time; a cost)"),
    Column("seconds_draw", description="drawing this row's scored samples, counted (a cost)"),
    Column("seconds_metric_*", description="each metric's time on this row, the features it asked for first "
                                           "included (a cost)"),
)
#: Where a cell's time goes, in the order the report shows it: (column or family, what it is).
TIME_COLUMNS = (("seconds_setup", "set-up"), ("train_seconds", "training"), ("seconds_curves", "learning curves"),
                ("seconds_draw", "drawing samples"), ("seconds_metric_*", "metrics"))


def declared_columns(metrics: Iterable[Any]) -> list[Column]:
    """Every column of a run's rows in order: the harness's identity columns, each metric's
    columns in metric order, then the harness's cost columns."""
    return [*HARNESS_IDENTITY, *(column for metric in metrics for column in metric.columns), *HARNESS_COST]


def chart_axes(columns: Iterable[Column]) -> dict[str, Column]:
    """The trilemma chart's axes: the first declared column for each of quality, speed, coverage."""
    axes: dict[str, Column] = {}
    for column in columns:
        if column.axis and column.axis not in axes:
            axes[column.axis] = column
    return axes


def owner_of(key: str, owners: Mapping[str, Sequence[Column]]) -> str | None:
    """Which owner (``"harness"`` or a metric name) declared ``key``, if any."""
    for owner, columns in owners.items():
        if any(column.matches(key) for column in columns):
            return owner
    return None


def ordered(keys: Iterable[str], declared: Sequence[Column]) -> list[str]:
    """``keys`` in declaration order (a family's members sorted), then undeclared keys alphabetically."""
    keys = list(dict.fromkeys(keys))
    placed: list[str] = []
    for column in declared:
        placed += sorted(k for k in keys if column.matches(k) and k not in placed)
    return placed + sorted(k for k in keys if k not in placed)


def from_dicts(records: Iterable[Mapping[str, Any]]) -> list[Column]:
    """Columns read back from a manifest."""
    return [Column(**{k: v for k, v in record.items() if k in COLUMN_FIELDS}) for record in records]
