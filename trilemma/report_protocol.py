"""What may be put together: the columns and protocol a run declared (its manifest), and which
rows of several runs pool (one identity, each seed once) or compare (the same protocol)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from trilemma.columns import COLUMN_FIELDS, Column, declared_columns, from_dicts
from trilemma.errors import TrilemmaError


def registered_metrics() -> list[Any]:
    from trilemma.plugins import collect

    return [entry.item for entry in collect().metrics.in_order()]


def _upgraded(record: dict[str, Any], now: Column | None) -> dict[str, Any]:
    """A column recorded before declarations had some of today's fields (``text``, ``spread``, ...):
    those from today's declaration of the same name, everything as recorded; ``axis`` too where it was
    recorded before the cost axis."""
    missing = COLUMN_FIELDS - set(record)
    if now is None or not missing:
        return record
    filled = {name: value for name, value in now.to_dict().items() if name in missing}
    if "text" in missing:
        filled["axis"] = record.get("axis") or now.axis
    return {**record, **filled}


def columns_of(manifests: Sequence[dict[str, Any]]) -> list[Column]:
    """The columns the runs declared (recorded in their manifests), or, for runs recorded before
    manifests held them, the columns of the metrics registered now."""
    recorded: dict[str, dict[str, Any]] = {}
    for manifest in manifests:
        for record in manifest.get("columns", []):
            recorded.setdefault(record["name"], record)
    if recorded:
        if any(COLUMN_FIELDS - set(record) for record in recorded.values()):  # recorded before today's fields
            current = {c.name: c for c in declared_columns(registered_metrics())}
            recorded = {name: _upgraded(record, current.get(name)) for name, record in recorded.items()}
        return from_dicts(recorded.values())
    return declared_columns(registered_metrics())


def protocol_fields(manifests: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Manifest fields that must agree before rows of two runs are compared or pooled: the dataset
    and each metric's ``protocol_keys``."""
    keys: dict[str, list[str]] = {}
    for manifest in manifests:
        for metric, names in manifest.get("protocol_keys", {}).items():
            keys.setdefault(metric, list(names))
    if not keys:
        keys = {metric.name: list(metric.protocol_keys) for metric in registered_metrics()}
    harness = [("dataset",), ("training", "precision"), ("training", "train_seconds_cap"), ("training", "budget_kind"),
               ("evaluation_protocol", "version")]
    return harness + [("metrics", metric, key) for metric, names in keys.items() for key in names]


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


def get_path(manifest: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = manifest
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def protocol_differences(manifests: Sequence[dict[str, Any]]) -> list[str]:
    differences = []
    for path in protocol_fields(manifests):
        values = [get_path(m, path) for m in manifests]
        if path == ("evaluation_protocol", "version"):  # runs recorded before the protocol had a version: 1
            values = [1 if value is None else value for value in values]
        if path == ("training", "budget_kind"):  # runs recorded before compute budgets trained on work
            values = ["work" if value is None else value for value in values]
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1:
            differences.append(f"{'.'.join(path)}: {' vs '.join(map(str, values))}")
    return differences


def check_protocols(run_dirs: Sequence[Path], manifests: Sequence[dict[str, Any]], force: bool) -> None:
    differences = protocol_differences(manifests)
    if differences and not force:
        raise TrilemmaError(f"runs {', '.join(map(str, run_dirs))} differ in protocol ({'; '.join(differences)}); "
                            "add --force to put them together anyway")
