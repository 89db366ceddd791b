"""The report as one description (``ReportDocument``) rendered twice, as Markdown and as
self-contained HTML, by two Jinja2 templates: the sentences, tables and figures are chosen once.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from trilemma.columns import Column, chart_axes
from trilemma.environment import merged_versions
from trilemma.metrics import ReportSection, joined_marks
from trilemma.report_curves import curve_marks, curves_section
from trilemma.report_protocol import get_path, registered_metrics
from trilemma.report_stats import KEY, aggregate
from trilemma.report_time import time_section
from trilemma.rundir import RunDirectory

SEEDS_NOTE = ("Arrows say which direction is better. With several seeds: mean ± half-width of the 95% bootstrap "
              "interval of the mean, and the quality column's standard deviation over the training seeds "
              "(\"seed sd\": how far one training run's value falls from another's).")
FAILED_NOTE = ("Values in parentheses (grey in report.html) are what a failed row's metrics computed before it "
               "failed; they are shown, never ranked, compared or plotted.")


# --- tables -----------------------------------------------------------------------------------

def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def headline_table(summary: pd.DataFrame, columns: Sequence[Column], marks: Sequence[str] = ()) -> pd.DataFrame:
    """The headline, one row per (model, sampler), the declared headline columns in their order:
    ``mean ± half-width`` of the 95% bootstrap interval when several seeds succeeded, the plain
    value for one; ``marks`` (one string per row, from the metrics' ``marks``) last when any is set."""
    table: dict[str, list[str]] = {"model": list(summary["model"]), "sampler": list(summary["sampler"]),
                                   "seeds": [str(n) for n in summary["n_seeds"]]}
    quality = chart_axes(columns).get("quality")
    for declared in columns:
        column, title, fmt = declared.name, declared.heading, declared.fmt
        if not declared.headline or declared.is_family or column not in summary:
            continue
        cells = []
        for _, row in summary.iterrows():
            cell = _fmt(row[column], fmt)
            failed_values = row.get("failed_values")
            partial = failed_values.get(column) if isinstance(failed_values, dict) else None
            if cell == "–" and partial is not None and math.isfinite(partial):
                cells.append(f"({_fmt(partial, fmt)})")  # a failed row's value: shown, greyed, never ranked
                continue
            half = (row.get(f"{column}_ci_high", math.nan) - row.get(f"{column}_ci_low", math.nan)) / 2
            if cell != "–" and math.isfinite(half) and half > 0:  # a constant (NFE, say) has no "± 0"
                cell += " ± " + _fmt(half, fmt.replace(",", ""))
            cells.append(cell)
        table[title] = cells
        if declared is quality and f"{column}_std" in summary and (summary["n_seeds"] > 1).any():
            table[f"{declared.label} seed sd"] = [_fmt(v, fmt.replace(",", "")) for v in summary[f"{column}_std"]]
    table["status"] = ["ok" if f == 0 else f"{f} failed" for f in summary["failed"]]
    if any(marks):
        table["marks"] = list(marks)
    return pd.DataFrame(table)


def not_applicable(manifests: Sequence[dict[str, Any]], columns: Sequence[Column]) -> list[str]:
    """Why headline columns are "–" everywhere: their metric does not apply to the run's dataset."""
    titles = {c.name: c.label for c in columns}
    notes = []
    for manifest in manifests:
        for metric, names in manifest.get("does_not_apply", {}).items():
            shown = [titles[name] for name in names if name in titles]
            if shown:
                notes.append(f"{', '.join(shown)}: – because the metric {metric} does not apply to "
                             f"{manifest.get('dataset', 'this dataset')}.")
    return list(dict.fromkeys(notes))


def markdown_table(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def protocol_items(manifest: dict[str, Any]) -> list[str]:
    """The manifest as a list of plain sentences: dataset, device, training, then each metric's own
    description of its protocol, plugin problems, versions."""
    if not manifest:
        return ["(no manifest)"]
    # Each model's entry names the plugin version that trained it: listed even where an older run
    # directory's "versions" kept only its last command's.
    versions = dict(manifest.get("versions", {}))
    for entry in (manifest.get("models") or {}).values():
        dist, _, version = str(entry.get("distribution", "")).partition(" ")
        if version and version not in versions.get(dist, "").split(", then "):
            versions = merged_versions(versions, {dist: version})
    lines = [
        f"Dataset: {manifest.get('dataset')} ({manifest.get('data_source')}); preset {manifest.get('preset')}; "
        f"seeds {manifest.get('seeds')}",
        f"Device: {get_path(manifest, ('device', 'name'))}",
    ]
    training = manifest.get("training") or {}
    if training:
        cap = training.get("train_seconds_cap")
        limit = f"⚠ capped at {cap:g} s of wall time: not comparable with uncapped runs" if cap else "no time cap"
        threads = f"; {training['threads']} torch thread(s) per cell" if training.get("threads") else ""
        lines.append(f"Training: budgets in {str(training.get('budget', 'work')).split(':')[0]}; precision "
                     f"{training.get('precision')}{threads}; {limit}")
    for metric, protocol in (manifest.get("metrics") or {}).items():
        if isinstance(protocol, dict) and protocol:
            described = protocol.get("summary") or "; ".join(f"{k}: {v}" for k, v in protocol.items())
            lines.append(f"{metric}: {described}")
    problems = manifest.get("plugin_problems") or {}
    for name, error in (problems.get("broken") or {}).items():
        lines.append(f"Broken plugin {name}: {error}")
    for conflict in problems.get("conflicts") or []:
        lines.append(f"Name conflict: {conflict}")
    if versions:
        lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    return lines


# --- figures and sections ---------------------------------------------------------------------

def render_figures(summary: pd.DataFrame, out: RunDirectory, columns: Sequence[Column],
                   sections: Sequence[ReportSection] = ()) -> dict[str, Path]:
    """The trilemma chart and the quality-against-cost frontier from the declared axes, then each
    metric section's own figures."""
    from trilemma import plots

    ok = summary[summary["n_seeds"] > 0]
    axes = chart_axes(columns)
    figures = {"trilemma chart": plots.trilemma_chart(ok, out.plot("trilemma"), axes)}
    if "quality" in axes and "cost" in axes:
        quality, cost = axes["quality"], axes["cost"]
        figures[f"{quality.label} against {cost.label}"] = plots.quality_vs_cost(
            ok, out.plot(f"{quality.name}_vs_{cost.name}"), quality, cost)
    for section in sections:
        for name, draw in section.figures.items():
            figures[name] = draw(out.plot(re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_")))  # a safe link target
    return {name: path for name, path in figures.items() if path is not None}


def sample_grids(run_dirs: Sequence[Path], frame: pd.DataFrame) -> dict[str, Path]:
    grids = {}
    for model, sampler in dict.fromkeys(zip(frame["model"], frame["sampler"], strict=True)):
        for run_dir in run_dirs:
            found = RunDirectory(run_dir).sample_grids(model, sampler)
            if found:
                grids[f"{model}/{sampler}"] = found[0]
                break
    return grids


def _metrics_that_ran(frame: pd.DataFrame, manifests: Sequence[dict[str, Any]]) -> list[Any]:
    """The installed metrics that ran (named in the runs' manifests) and have columns in ``frame``."""
    ran = {name for manifest in manifests for name in manifest.get("protocol_keys", {})}
    return [metric for metric in registered_metrics() if (not ran or metric.name in ran)
            and any(column.matches(c) for column in metric.columns for c in frame.columns)]


def metric_sections(frame: pd.DataFrame, manifests: Sequence[dict[str, Any]] = ()) -> list[ReportSection]:
    """What the metrics that ran have to say about these rows beyond their columns, through the
    code of those metrics installed now."""
    sections = [metric.report_section(frame) for metric in _metrics_that_ran(frame, manifests)]
    return [section for section in sections if section is not None]


def row_marks(summary: pd.DataFrame, manifests: Sequence[dict[str, Any]] = ()) -> list[str]:
    """Each headline row's marks from the metrics that ran, joined."""
    metrics = _metrics_that_ran(summary, manifests)
    return [joined_marks(metrics, row.to_dict()) for _, row in summary.iterrows()]


# --- the document -----------------------------------------------------------------------------

@dataclass
class ReportDocument:
    """Everything a report says, once: both templates render it."""

    title: str
    table: pd.DataFrame
    intro: str = SEEDS_NOTE
    failures: list[str] = field(default_factory=list)
    sections: list[ReportSection] = field(default_factory=list)
    protocols: list[tuple[str, list[str]]] = field(default_factory=list)  # (heading, sentences)
    figures: dict[str, Path] = field(default_factory=dict)
    grids: dict[str, Path] = field(default_factory=dict)


MARKDOWN = """\
# {{ doc.title }}

## Results

{{ doc.intro }}

{{ doc.table | markdown }}
{% if doc.failures %}

## Failures

{% for failure in doc.failures %}
- {{ failure }}
{% endfor %}
{% endif %}
{% for section in doc.sections %}

## {{ section.title }}
{% for note in section.notes %}

{{ note }}
{% endfor %}
{% if section.table | length %}

{{ section.table | markdown }}
{% endif %}
{% endfor %}

## Protocol
{% for heading, items in doc.protocols %}

{% if heading %}### {{ heading }}

{% endif %}
{% for item in items %}
- {{ item }}
{% endfor %}
{% endfor %}
{% if doc.figures %}

## Figures
{% for name, path in doc.figures.items() %}

### {{ name }}

![{{ path.stem }}]({{ path | relative }})
{% endfor %}
{% endif %}
{% if doc.grids %}

## Samples
{% for name, path in doc.grids.items() %}

### {{ name }}

![{{ path.stem }}]({{ path | relative }})
{% endfor %}
{% endif %}
"""

HTML = """\
<!doctype html>
<html><head><meta charset="utf-8"><title>{{ doc.title }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}
td:first-child,td:nth-child(2){text-align:left}
.scroll{overflow-x:auto;max-width:100%}
td.failed{color:#999}
img{max-width:100%}
.grids{display:flex;flex-wrap:wrap;gap:1em}.grids figure{margin:0;width:260px}
figcaption{font-size:12px;text-align:center}
</style></head><body>
<h1>{{ doc.title }}</h1>
<h2>Results</h2>
<p>{{ doc.intro }}</p>
{{ doc.table | html_table }}
{% if doc.failures %}
<h2>Failures</h2>
<ul>{% for failure in doc.failures %}<li>{{ failure }}</li>{% endfor %}</ul>
{% endif %}
{% for section in doc.sections %}
<h2>{{ section.title }}</h2>
{% for note in section.notes %}<p>{{ note }}</p>{% endfor %}
{% if section.table | length %}{{ section.table | html_table }}{% endif %}
{% endfor %}
<h2>Protocol</h2>
{% for heading, items in doc.protocols %}
{% if heading %}<h3>{{ heading }}</h3>{% endif %}
<ul>{% for item in items %}<li>{{ item }}</li>{% endfor %}</ul>
{% endfor %}
{% if doc.figures %}
<h2>Figures</h2>
{% for name, path in doc.figures.items() %}<h3>{{ name }}</h3>{{ path | embed }}{% endfor %}
{% endif %}
{% if doc.grids %}
<h2>Samples</h2>
<div class="grids">
{% for name, path in doc.grids.items() %}<figure>{{ path | embed }}<figcaption>{{ name }}</figcaption></figure>{% endfor %}
</div>
{% endif %}
</body></html>
"""


def _embed(path: Path) -> Any:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return jinja2.utils.markupsafe.Markup('<img alt="{}" src="data:image/png;base64,{}">').format(path.stem, data)


def _environment(base: Path, autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, autoescape=autoescape, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["markdown"] = markdown_table
    env.filters["relative"] = lambda path: str(path.relative_to(base) if path.is_relative_to(base) else path)
    env.filters["html_table"] = lambda table: jinja2.utils.markupsafe.Markup(  # wide tables scroll, not overflow
        '<div class="scroll">' + re.sub(r"<td>\((?=[^<]*\)</td>)", '<td class="failed">(',
                                        table.to_html(index=False, escape=True, border=0)) + "</div>")
    env.filters["embed"] = _embed
    return env


def write_document(out: RunDirectory, doc: ReportDocument) -> Path:
    """``report.md`` and ``report.html`` of ``doc`` in ``out``; the plots an earlier rendering drew
    and this one did not (a figure renamed or gone) are removed, so none is left unreferenced (a
    document without figures, a comparison, leaves the directory's plots alone)."""
    out.write_text(out.report_md, _environment(out.root, False).from_string(MARKDOWN).render(doc=doc))
    out.write_text(out.report_html, _environment(out.root, True).from_string(HTML).render(doc=doc))
    drawn = {path.resolve() for path in doc.figures.values()}
    for stale in sorted(out.plots_dir.glob("*.png")) if drawn and out.plots_dir.is_dir() else ():
        if stale.resolve() not in drawn:
            stale.unlink()
    return out.report_md


def run_document(out: RunDirectory, title: str, frame: pd.DataFrame, summary: pd.DataFrame,
                 manifests: list[dict[str, Any]], grids: dict[str, Path],
                 curves: pd.DataFrame | None = None) -> ReportDocument:
    """The document of one run or of pooled runs (drawing its figures into ``out``); ``curves`` are
    their learning-curve rows."""
    from trilemma.report_protocol import columns_of

    columns = columns_of(manifests)
    curves = curves if curves is not None else pd.DataFrame()
    if not curves.empty and "model" in frame:  # a cell stopped before its rows (killed, say) has no row to mark
        curves = curves[curves["model"].isin(set(frame["model"]))]
    sections = metric_sections(frame, manifests)
    for section in (curves_section(curves, frame, out.plots_dir, columns) if not curves.empty else None,
                    time_section(frame)):
        if section is not None:
            sections.append(section)
    marks = [" ".join(m for m in pair if m) for pair in zip(row_marks(summary, manifests),
                                                            curve_marks(summary, curves, columns), strict=True)]
    failures = summary[summary["failed"] > 0]
    table = headline_table(summary, columns, marks)
    shown_failed = table.drop(columns=["model", "sampler"]).map(lambda v: str(v).startswith("(")).to_numpy().any()
    return ReportDocument(
        title=title, table=table,
        intro=" ".join([SEEDS_NOTE, *([FAILED_NOTE] if shown_failed else []), *not_applicable(manifests, columns)]),
        failures=[f"{r.model}/{r.sampler}: {r.error}" for r in failures.itertuples()], sections=sections,
        protocols=[("", protocol_items(manifest)) for manifest in manifests],
        figures=render_figures(summary, out, columns, sections), grids=grids)


def comparison_table(a: pd.DataFrame, b: pd.DataFrame, columns: Sequence[Column],
                     all_columns: bool = False) -> pd.DataFrame:
    """Rows matched by (model, sampler): A, B and B − A for each numeric headline column (every
    declared numeric column with ``all_columns``), under the columns' names."""
    return _comparison_table(aggregate(a), aggregate(b), columns, all_columns)


def _comparison_table(summary_a: pd.DataFrame, summary_b: pd.DataFrame, columns: Sequence[Column],
                      all_columns: bool) -> pd.DataFrame:
    sa, sb = summary_a.set_index(KEY), summary_b.set_index(KEY)
    compared = [c.name for c in _compared(columns, all_columns) if c.name in sa or c.name in sb]
    keys = list(dict.fromkeys([*sa.index, *sb.index]))
    records = []
    for key in keys:
        record: dict[str, Any] = {"model": key[0], "sampler": key[1]}
        for column in compared:
            va = sa[column].get(key, math.nan) if column in sa else math.nan
            vb = sb[column].get(key, math.nan) if column in sb else math.nan
            record[f"{column} A"], record[f"{column} B"], record[f"{column} Δ"] = va, vb, vb - va
        records.append(record)
    return pd.DataFrame(records)


def _compared(columns: Sequence[Column], all_columns: bool) -> list[Column]:
    return [c for c in columns if (c.headline or all_columns) and not c.is_family and not c.text
            and c.name not in (*KEY, "seed")]


def shared_rows(a: pd.DataFrame, b: pd.DataFrame) -> int:
    """How many (model, sampler) rows two runs have in common."""
    return len(set(map(tuple, a[list(KEY)].values)) & set(map(tuple, b[list(KEY)].values)))


def seed_spread(frame: pd.DataFrame, column: str) -> dict[tuple[str, str], tuple[float, int]]:
    """Per (model, sampler) with two or more successful seeds: the standard deviation of ``column``
    over the training seeds (ddof 1) and how many seeds it was measured on."""
    return _spread(aggregate(frame), column)


def _spread(summary: pd.DataFrame, column: str) -> dict[tuple[str, str], tuple[float, int]]:
    if f"{column}_std" not in summary:
        return {}
    return {(row["model"], row["sampler"]): (float(row[f"{column}_std"]), int(row["n_seeds"]))
            for _, row in summary.iterrows() if row["n_seeds"] > 1 and math.isfinite(row[f"{column}_std"])}


def _pooled_spread(*spreads: dict[tuple[str, str], tuple[float, int]]) -> dict[tuple[str, str], tuple[float, int]]:
    """Several runs' seed spreads of the same rows pooled: √(Σ (n−1)·sd² / Σ (n−1)), the seeds summed."""
    pooled: dict[tuple[str, str], tuple[float, int]] = {}
    for key in dict.fromkeys(key for spread in spreads for key in spread):
        parts = [spread[key] for spread in spreads if key in spread]
        variance = sum((n - 1) * sd ** 2 for sd, n in parts) / sum(n - 1 for _, n in parts)
        pooled[key] = (variance ** 0.5, sum(n for _, n in parts))
    return pooled


def _seed_noise_columns(table: pd.DataFrame, shown: pd.DataFrame, spread: dict[tuple[str, str], tuple[float, int]],
                        summary_a: pd.DataFrame, summary_b: pd.DataFrame, quality: Column) -> None:
    """The quality column's training-seed sd and its Δ in units of it: a Δ between means of n_A and
    n_B seeds has sd σ·√(1/n_A + 1/n_B) when the seeds alone differ."""
    keys = list(zip(table["model"], table["sampler"], strict=True))
    counts = [summary.set_index(KEY)["n_seeds"].to_dict() for summary in (summary_a, summary_b)]
    sd = [spread.get(key, (math.nan, 0))[0] for key in keys]
    scale = [(1 / max(counts[0].get(key, 1), 1) + 1 / max(counts[1].get(key, 1), 1)) ** 0.5 for key in keys]
    name, label = quality.name, quality.label
    table[f"{name}_seed_sd"] = sd
    shown[f"{label} seed sd"] = [_fmt(v, quality.fmt.replace(",", "")) for v in sd]
    shown[f"{label} Δ / seed noise"] = [_fmt(abs(d) / (s * k), "{:.1f}")
                                        for d, s, k in zip(table[f"{name} Δ"], sd, scale, strict=True)]


def _noise_columns(table: pd.DataFrame, shown: pd.DataFrame, intro: list[str], quality: Column,
                   spread: dict[tuple[str, str], tuple[float, int]] | None, spread_source: str,
                   summary_a: pd.DataFrame, summary_b: pd.DataFrame) -> dict[tuple[str, str], tuple[float, int]]:
    """The quality axis's Δ weighed against the draw's noise (its declared ``spread`` column on both
    sides) and against the training seed's (``spread``, or each side's own seeds); the seed spread used."""
    name, label = quality.name, quality.label
    if quality.spread and {f"{quality.spread} A", f"{quality.spread} B"} <= set(table):
        # The draw's own noise on both sides: a gap of under about 2 of these is not a method's.
        noise = (table[f"{quality.spread} A"] ** 2 + table[f"{quality.spread} B"] ** 2) ** 0.5
        shown[f"{label} Δ / noise"] = [_fmt(v, "{:.1f}") for v in (table[f"{name} Δ"].abs() / noise)]
        intro.append(f"{label} Δ / noise: |Δ {label}| over the two rows' sampling spreads combined (√(sd A² + sd B²)); "
                     "below about 2, the rows are not told apart by their samples.")
    if spread is None:
        spread = _pooled_spread(_spread(summary_a, name), _spread(summary_b, name))
        spread_source = "A's and B's own seeds"
    if spread:
        _seed_noise_columns(table, shown, spread, summary_a, summary_b, quality)
        measured = sorted({n for _, n in spread.values()})
        intro.append(f"{label} seed sd: {label}'s standard deviation over {'/'.join(map(str, measured))} training "
                     f"seeds of the same model and sampler (from {spread_source}); {label} Δ / seed noise: |Δ {label}| "
                     "over the sd the Δ would have if only the training seed differed; below about 2, retraining alone "
                     "could give the gap.")
    return spread


def comparison_document(names: Sequence[str], a: pd.DataFrame, b: pd.DataFrame, manifests: Sequence[dict[str, Any]],
                        columns: Sequence[Column], all_columns: bool = False,
                        spread: dict[tuple[str, str], tuple[float, int]] | None = None,
                        spread_source: str = "") -> tuple[ReportDocument, pd.DataFrame]:
    """Two runs side by side: the document (under the columns' headings, formatted as the run
    report formats them) and the raw comparison table. ``spread`` (from ``seed_spread``) is the quality
    axis's training-seed sd per row, measured in ``spread_source``; without it, A's and B's own seeds
    give it where either has several."""
    summary_a, summary_b = aggregate(a), aggregate(b)  # once: each is a bootstrap over every column
    table = _comparison_table(summary_a, summary_b, columns, all_columns)
    shown = table[["model", "sampler"]].copy()
    for declared in _compared(columns, all_columns):
        if f"{declared.name} A" not in table:
            continue
        for side in ("A", "B", "Δ"):
            fmt = declared.fmt if side != "Δ" else "{:+" + declared.fmt.removeprefix("{:")
            shown[f"{declared.heading} {side}"] = [_fmt(v, fmt) for v in table[f"{declared.name} {side}"]]
    intro = [f"Δ = B − A; rows matched by model and sampler; "
             f"{'headline columns; --all-columns for every one' if not all_columns else 'every numeric column'}."]
    quality = chart_axes(columns).get("quality")
    if quality is not None and f"{quality.name} Δ" in table:
        spread = _noise_columns(table, shown, intro, quality, spread, spread_source, summary_a, summary_b)
    else:
        spread = None
    devices = [str(get_path(manifest, ("device", "name"))) for manifest in manifests]
    if len(set(devices)) > 1:
        label = quality.label if quality is not None else "the quality column"
        yardstick = (f"the training-seed spread ({label} seed sd) is the yardstick for it" if spread else
                     "pass --seed-spread RUN (a run with several seeds of these models, such as reports/cpu-quick-seeds) "
                     "to quote the training-seed spread beside each Δ")
        intro.append(f"⚠ A ran on {devices[0]} and B on {devices[1]}: the same seed trains to different numbers on "
                     "different hardware (kernels sum in other orders; bf16 paths differ: DCGAN's quick FID was 22.71 on "
                     "an AMD EPYC and 23.29 on an Intel Xeon with AMX), so a Δ between devices is a Δ between training "
                     f"runs, not the same run measured twice: {yardstick}.")
    doc = ReportDocument(title=f"trilemma: {names[0]} (A) against {names[1]} (B)", table=shown,
                         intro=" ".join(intro),
                         protocols=[(f"{side}: {name}", protocol_items(manifest))
                                    for side, name, manifest in zip("AB", names, manifests, strict=True)])
    return doc, table
