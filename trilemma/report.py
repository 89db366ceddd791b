"""Results → pandas → Markdown, self-contained HTML and plots; aggregation over seeds and the
comparison of runs."""

from __future__ import annotations

import base64
import html
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trilemma.columns import Column, chart_axes, declared_columns, from_dicts
from trilemma.errors import TrilemmaError
from trilemma.metrics import ReportSection
from trilemma.rundir import RunDirectory

KEY = ["model", "sampler"]
BOOTSTRAP_RESAMPLES = 2000


# --- what the columns and the protocol are: from the metrics' own declarations ------------------

def _registered_metrics() -> list[Any]:
    from trilemma.plugins import collect

    return [entry.item for entry in collect().metrics.in_order()]


def _upgraded(record: dict[str, Any], now: Column | None) -> dict[str, Any]:
    """A column recorded before declarations said ``text`` and ``axis="cost"``: those two from today's
    declaration of the same name, everything else as recorded."""
    if now is None or "text" in record:
        return record
    return {**record, "text": now.text, "axis": record.get("axis") or now.axis}


def columns_of(manifests: Sequence[dict[str, Any]]) -> list[Column]:
    """The columns the runs declared (recorded in their manifests), or, for runs recorded before
    manifests held them, the columns of the metrics registered now."""
    recorded: dict[str, dict[str, Any]] = {}
    for manifest in manifests:
        for record in manifest.get("columns", []):
            recorded.setdefault(record["name"], record)
    if recorded:
        if any("text" not in record for record in recorded.values()):  # recorded before text and the cost axis
            current = {c.name: c for c in declared_columns(_registered_metrics())}
            recorded = {name: _upgraded(record, current.get(name)) for name, record in recorded.items()}
        return from_dicts(recorded.values())
    return declared_columns(_registered_metrics())


def protocol_fields(manifests: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Manifest fields that must agree before rows of two runs are compared or pooled: the dataset
    and each metric's ``protocol_keys``."""
    keys: dict[str, list[str]] = {}
    for manifest in manifests:
        for metric, names in manifest.get("protocol_keys", {}).items():
            keys.setdefault(metric, list(names))
    if not keys:
        keys = {metric.name: list(metric.protocol_keys) for metric in _registered_metrics()}
    harness = [("dataset",), ("training", "precision"), ("training", "train_seconds_cap")]
    return harness + [("metrics", metric, key) for metric, names in keys.items() for key in names]


# --- loading and aggregation ------------------------------------------------------------------

def identity_of(frame: pd.DataFrame) -> pd.Series:
    """Each row's training identity: the ``identity`` column, or for rows recorded before it the
    config hash ("" where neither is known)."""
    identity = frame["identity"].fillna("").astype(str) if "identity" in frame else pd.Series("", index=frame.index)
    legacy = frame["config_hash"].fillna("").astype(str).map(lambda h: f"config {h}" if h else "") \
        if "config_hash" in frame else pd.Series("", index=frame.index)
    return identity.where(identity != "", legacy)


def separate_identities(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of one (model, sampler) trained as different identities are never pooled: each keeps a
    model label of its own, ``model [id abc123]``."""
    identity = identity_of(frame)
    mixed = identity.groupby([frame["model"], frame["sampler"]]).transform("nunique") > 1
    if not mixed.any():
        return frame
    frame = frame.copy()
    frame.loc[mixed, "model"] = [f"{m} [id {i.removeprefix('config ')[:6] or '?'}]"
                                 for m, i in zip(frame.loc[mixed, "model"], identity[mixed], strict=True)]
    return frame


def check_poolable(frame: pd.DataFrame, force: bool) -> pd.DataFrame:
    """Rows of several runs pool only where they are the same identity: a seed counted twice is
    refused, and one name trained as different identities is refused (``force``: kept apart)."""
    identity = identity_of(frame)
    keyed = frame.assign(_identity=identity)
    twice = keyed[keyed.duplicated(["model", "sampler", "_identity", "seed"], keep=False)]
    if len(twice):
        shown = "; ".join(f"{model}/{sampler} seed {seed} in {', '.join(map(str, group['run']))}"
                          for (model, sampler, seed), group in twice.groupby(["model", "sampler", "seed"], sort=False))
        raise TrilemmaError(f"the same rows are in several runs ({shown}); a seed counted twice would narrow the "
                            "interval for nothing: pool runs of different seeds")
    mixed = keyed.groupby(["model", "sampler"], sort=False)["_identity"].nunique()
    mixed = mixed[mixed > 1]
    if len(mixed) and not force:
        described = []
        for model in dict.fromkeys(m for m, _ in mixed.index):
            rows = keyed[keyed["model"] == model]
            kinds = rows.groupby("_identity", sort=False)["run"].unique()
            described.append(f"{model}: " + " vs ".join(f"{ident or 'unknown'} ({', '.join(map(str, runs))})"
                                                         for ident, runs in kinds.items()))
        raise TrilemmaError("runs train a model under one name as different identities (config, budget, plugin "
                            f"version, ...): {'; '.join(described)}; pooling them would average different "
                            "things. Pool runs of one identity, or add --force to report each identity apart")
    return separate_identities(frame)


def load_run(run_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    directory = RunDirectory(run_dir)
    return directory.read_results(), directory.read_manifest()


def bootstrap_interval(values: Sequence[float], level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (NaN for fewer than two values)."""
    values = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if len(values) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(resamples, len(values)), replace=True).mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def numeric_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in ("seed",) and pd.api.types.is_numeric_dtype(frame[c])]


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, sampler): ``n_seeds``, ``failed``, and for each numeric metric its
    mean, ``<col>_std`` (ddof 1), ``<col>_ci_low`` and ``<col>_ci_high`` over the successful seeds."""
    records = []
    order = list(dict.fromkeys(zip(frame["model"], frame["sampler"], strict=True)))
    for model, sampler in order:
        group = frame[(frame["model"] == model) & (frame["sampler"] == sampler)]
        ok = group[group["status"] == "ok"]
        record: dict[str, Any] = {"model": model, "sampler": sampler, "n_seeds": len(ok),
                                  "failed": int((group["status"] != "ok").sum()),
                                  "error": "; ".join(sorted(set(group.loc[group["status"] != "ok", "error"].astype(str))))}
        for column in numeric_columns(frame):
            values = ok[column].dropna().to_numpy(dtype=float)
            record[column] = float(values.mean()) if len(values) else math.nan
            record[f"{column}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            record[f"{column}_ci_low"], record[f"{column}_ci_high"] = bootstrap_interval(values)
        records.append(record)
    return pd.DataFrame(records)


# --- tables -----------------------------------------------------------------------------------

def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def headline_table(summary: pd.DataFrame, columns: Sequence[Column]) -> pd.DataFrame:
    """The headline, one row per (model, sampler), the declared headline columns in their order:
    ``mean ± half-width`` of the 95% bootstrap interval when several seeds succeeded, the plain
    value for one."""
    table: dict[str, list[str]] = {"model": list(summary["model"]), "sampler": list(summary["sampler"]),
                                   "seeds": [str(n) for n in summary["n_seeds"]]}
    for declared in columns:
        column, title, fmt = declared.name, declared.heading, declared.fmt
        if not declared.headline or declared.is_family or column not in summary:
            continue
        cells = []
        for _, row in summary.iterrows():
            cell = _fmt(row[column], fmt)
            half = (row.get(f"{column}_ci_high", math.nan) - row.get(f"{column}_ci_low", math.nan)) / 2
            if cell != "–" and math.isfinite(half):
                cell += " ± " + _fmt(half, fmt.replace(",", ""))
            cells.append(cell)
        table[title] = cells
    table["status"] = ["ok" if f == 0 else f"{f} failed" for f in summary["failed"]]
    return pd.DataFrame(table)


def markdown_table(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _get(manifest: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = manifest
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def protocol_lines(manifest: dict[str, Any]) -> list[str]:
    """The manifest as a list: dataset, device, then each metric's own description of its protocol."""
    if not manifest:
        return ["(no manifest)"]
    versions = manifest.get("versions", {})
    lines = [
        f"- Dataset: {manifest.get('dataset')} ({manifest.get('data_source')}); preset {manifest.get('preset')}; "
        f"seeds {manifest.get('seeds')}",
        f"- Device: {_get(manifest, ('device', 'name'))}",
    ]
    training = manifest.get("training") or {}
    if training:
        cap = training.get("train_seconds_cap")
        lines.append(f"- Training: budgets in {str(training.get('budget', 'work')).split(':')[0]}; precision "
                     f"{training.get('precision')}; " + (f"**capped at {cap:g} s of wall time**" if cap else "no time cap"))
    for metric, protocol in (manifest.get("metrics") or {}).items():
        if isinstance(protocol, dict) and protocol:
            described = protocol.get("summary") or "; ".join(f"{k}: {v}" for k, v in protocol.items())
            lines.append(f"- {metric}: {described}")
    problems = manifest.get("plugin_problems") or {}
    for name, error in (problems.get("broken") or {}).items():
        lines.append(f"- Broken plugin {name}: {error}")
    for conflict in problems.get("conflicts") or []:
        lines.append(f"- Name conflict: {conflict}")
    if versions:
        lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    return lines


# --- figures ----------------------------------------------------------------------------------

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
        figures[f"{quality.title or quality.name} against {cost.title or cost.name}"] = plots.quality_vs_cost(
            ok, out.plot(f"{quality.name}_vs_{cost.name}"), quality, cost)
    for section in sections:
        for name, draw in section.figures.items():
            figures[name] = draw(out.plot(name.replace(" ", "_")))
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


# --- documents --------------------------------------------------------------------------------

def _image_md(path: Path, base: Path) -> str:
    return f"![{path.stem}]({path.relative_to(base) if path.is_relative_to(base) else path})"


def metric_sections(frame: pd.DataFrame, manifests: Sequence[dict[str, Any]] = ()) -> list[ReportSection]:
    """What the metrics that ran (named in the runs' manifests) have to say about these rows beyond
    their columns, through the code of those metrics installed now."""
    ran = {name for manifest in manifests for name in manifest.get("protocol_keys", {})}
    sections = []
    for metric in _registered_metrics():
        if ran and metric.name not in ran:
            continue
        if any(column.matches(c) for column in metric.columns for c in frame.columns):
            section = metric.report_section(frame)
            if section is not None:
                sections.append(section)
    return sections


def write_documents(out: RunDirectory, title: str, frame: pd.DataFrame, summary: pd.DataFrame,
                    manifests: list[dict[str, Any]], grids: dict[str, Path], extra_md: str = "") -> Path:
    """``report.md`` and ``report.html`` (and the figures they show) from what the runs declared."""
    columns = columns_of(manifests)
    table = headline_table(summary, columns)
    failures = summary[summary["failed"] > 0]
    sections = metric_sections(frame, manifests)
    figures = render_figures(summary, out, columns, sections)
    md = [f"# {title}", "", "## Results", "",
          "Arrows say which direction is better. With several seeds: mean ± half-width of the 95% bootstrap "
          "interval of the mean.", "", markdown_table(table), ""]
    if len(failures):
        md += ["## Failures", ""] + [f"- {r.model}/{r.sampler}: {r.error}" for r in failures.itertuples()] + [""]
    for section in sections:
        md += [f"## {section.title}", "", *section.notes, ""]
        md += [markdown_table(section.table), ""] if len(section.table) else []
    if extra_md:
        md += [extra_md, ""]
    md += ["## Protocol", ""]
    for manifest in manifests:
        md += protocol_lines(manifest) + [""]
    md += ["## Figures", ""] + [f"### {name}\n\n{_image_md(path, out.root)}\n" for name, path in figures.items()]
    md += ["## Samples", ""] + [f"### {name}\n\n{_image_md(path, out.root)}\n" for name, path in grids.items()]
    out.write_text(out.report_md, "\n".join(md))
    out.write_text(out.report_html, _html(title, table, failures, sections, manifests, figures, grids, extra_md))
    return out.report_md


def _embed(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _html(title: str, table: pd.DataFrame, failures: pd.DataFrame, sections: list[ReportSection],
          manifests: list[dict[str, Any]], figures: dict[str, Path], grids: dict[str, Path], extra_md: str) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
             "td:first-child,td:nth-child(2){text-align:left}img{max-width:100%}"
             ".grids{display:flex;flex-wrap:wrap;gap:1em}.grids figure{margin:0;width:260px}"
             "figcaption{font-size:12px;text-align:center}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><h2>Results</h2>",
             "<p>Arrows say which direction is better. With several seeds: mean ± half-width of the 95% bootstrap "
             "interval of the mean.</p>", table.to_html(index=False, escape=True, border=0)]
    if len(failures):
        parts.append("<h2>Failures</h2><ul>" + "".join(
            f"<li>{html.escape(f'{r.model}/{r.sampler}: {r.error}')}</li>" for r in failures.itertuples()) + "</ul>")
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts += [f"<p>{html.escape(note)}</p>" for note in section.notes]
        if len(section.table):
            parts.append(section.table.to_html(index=False, escape=True, border=0))
    if extra_md:
        parts.append(f"<pre>{html.escape(extra_md)}</pre>")
    parts.append("<h2>Protocol</h2>")
    for manifest in manifests:
        parts.append("<ul>" + "".join(f"<li>{html.escape(line[2:])}</li>" for line in protocol_lines(manifest)) + "</ul>")
    parts.append("<h2>Figures</h2>")
    parts += [f"<h3>{html.escape(name)}</h3>{_embed(path)}" for name, path in figures.items()]
    parts.append("<h2>Samples</h2><div class='grids'>")
    parts += [f"<figure>{_embed(path)}<figcaption>{html.escape(name)}</figcaption></figure>" for name, path in grids.items()]
    parts.append("</div></body></html>")
    return "\n".join(parts)


# --- entry points -----------------------------------------------------------------------------

def render_run(run_dir: Path) -> Path:
    """Write ``report.md``, ``report.html`` and the plots of one run directory."""
    frame, manifest = load_run(run_dir)
    frame = separate_identities(frame)
    summary = aggregate(frame)
    out = RunDirectory(run_dir)
    return write_documents(out, f"trilemma run `{out.root.name}`", frame, summary, [manifest],
                           sample_grids([run_dir], frame))


def protocol_differences(manifests: Sequence[dict[str, Any]]) -> list[str]:
    differences = []
    for path in protocol_fields(manifests):
        values = [_get(m, path) for m in manifests]
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1:
            differences.append(f"{'.'.join(path)}: {' vs '.join(map(str, values))}")
    return differences


def _check_protocols(run_dirs: Sequence[Path], manifests: Sequence[dict[str, Any]], force: bool) -> None:
    differences = protocol_differences(manifests)
    if differences and not force:
        raise TrilemmaError(f"runs {', '.join(map(str, run_dirs))} differ in protocol ({'; '.join(differences)}); "
                            "add --force to put them together anyway")


def render_runs(run_dirs: Sequence[Path], out: Path | None = None, force: bool = False,
                compare: bool = False) -> Path:
    """One run: its own report. Several: pool their rows (seeds) into one report under ``out``,
    or with ``compare`` put two runs side by side. Protocols must agree unless ``force``."""
    run_dirs = [Path(r) for r in run_dirs]
    if len(run_dirs) == 1 and not compare:
        path = render_run(run_dirs[0])
        print(f"wrote {path} and {path.with_suffix('.html')}")
        return path
    loaded = [load_run(r) for r in run_dirs]
    manifests = [m for _, m in loaded]
    _check_protocols(run_dirs, manifests, force)
    if compare and len(run_dirs) != 2:
        raise TrilemmaError("--compare takes exactly two run directories")
    if not compare:  # refused before anything is written
        frame = check_poolable(pd.concat([f.assign(run=str(r)) for (f, _), r in zip(loaded, run_dirs, strict=True)],
                                         ignore_index=True), force)
    out = RunDirectory(out if out else Path("reports") / time.strftime("combined-%Y%m%d-%H%M%S"))
    out.root.mkdir(parents=True, exist_ok=True)
    if compare:
        path = _render_comparison(run_dirs, loaded, out)
    else:
        out.write_results(frame)
        out.write_manifest({"combined_from": [str(r) for r in run_dirs], "runs": manifests})
        summary = aggregate(frame)
        out.write_text(out.file("summary.csv"), summary.to_csv(index=False))
        path = write_documents(out, f"trilemma: {len(run_dirs)} runs pooled", frame, summary, manifests,
                               sample_grids(run_dirs, frame))
    print(f"wrote {path} and {path.with_suffix('.html')}")
    return path


def comparison_table(a: pd.DataFrame, b: pd.DataFrame, columns: Sequence[Column]) -> pd.DataFrame:
    """Rows matched by (model, sampler): A, B and B − A for each numeric headline column."""
    sa, sb = aggregate(a).set_index(KEY), aggregate(b).set_index(KEY)
    compared = [c.name for c in columns if c.headline and not c.is_family and (c.name in sa or c.name in sb)]
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


def _render_comparison(run_dirs: Sequence[Path], loaded: list[tuple[pd.DataFrame, dict]], out: RunDirectory) -> Path:
    table = comparison_table(loaded[0][0], loaded[1][0], columns_of([m for _, m in loaded]))
    out.write_text(out.file("comparison.csv"), table.to_csv(index=False))
    shown = table.copy()
    for column in shown.columns[2:]:
        shown[column] = [_fmt(v, "{:+.4g}" if column.endswith("Δ") else "{:.4g}") for v in shown[column]]
    md = [f"# trilemma: {run_dirs[0]} (A) against {run_dirs[1]} (B)", "", "Δ = B − A.", "", markdown_table(shown), "",
          "## Protocol", ""]
    for name, (_, manifest) in zip("AB", loaded, strict=True):
        md += [f"### {name}", *protocol_lines(manifest), ""]
    out.write_text(out.report_md, "\n".join(md))
    out.write_text(out.report_html,
                   f"<!doctype html><meta charset='utf-8'><title>comparison</title><h1>{html.escape(md[0][2:])}</h1>"
                   f"<p>Δ = B − A.</p>{shown.to_html(index=False, border=1)}")
    return out.report_md


def print_summary(run_dir: Path) -> None:
    frame, manifest = load_run(run_dir)
    frame = separate_identities(frame)
    print(headline_table(aggregate(frame), columns_of([manifest])).to_string(index=False))
