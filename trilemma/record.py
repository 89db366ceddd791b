"""Recording a run: rows into ``results.csv`` as cells finish, and the manifest around them."""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterable, Sequence
from typing import Any

from trilemma.columns import Column
from trilemma.environment import describe_device, library_versions, merged_versions
from trilemma.execute import CellOutcome
from trilemma.plan import Cell, Plan, RunRequest
from trilemma.plugins import Registries
from trilemma.presets import get_preset
from trilemma.results import ResultsTable
from trilemma.rundir import RunDirectory
from trilemma.seeds import SEED_OFFSETS


def portable_command(command: Sequence[str], run_dir: RunDirectory, path_flags: Iterable[str]) -> str:
    """The command as typed, with every path argument shown relative to the run directory (or by
    its name when outside it), so a manifest carries no machine-local paths."""
    path_flags = set(path_flags)
    shown: list[str] = []
    path_next = False
    for token in ["trilemma", *command[1:]]:
        if path_next:
            shown.append(run_dir.relative(token))
            path_next = False
            continue
        flag, eq, value = token.partition("=")
        if flag in path_flags:
            shown.append(f"{flag}={run_dir.relative(value)}" if eq else token)
            path_next = not eq
            continue
        shown.append(token)
    return shlex.join(shown)


def plugin_problems(registries: Registries) -> dict[str, Any]:
    return {"broken": {b.name: f"{b.distribution}: {b.error}" for b in registries.broken.values()},
            "conflicts": [str(c) for c in registries.conflicts()]}


class Recorder:
    """Merges each finished cell's rows into ``results.csv`` at once and keeps the manifest up to
    date. An earlier run into the same directory (resumed, or re-running some models) keeps its
    rows and manifest entries."""

    def __init__(self, run_dir: RunDirectory, plan: Plan, request: RunRequest, registries: Registries,
                 declared: Sequence[Column], path_flags: Iterable[str] = ("--out", "--data-dir"),
                 numerics: dict[str, Any] | None = None) -> None:
        self.run_dir = run_dir
        self.plan = plan
        self.request = request
        self.registries = registries
        self.declared = list(declared)
        self.command = portable_command(request.command, run_dir, path_flags)
        self.table: ResultsTable = run_dir.load_table()
        self.run_dir.read_manifest()  # a damaged manifest stops the run before any work
        self.data_source: str | None = None
        self.numerics = numerics or {}

    def start(self, data_source: str) -> None:
        self.data_source = data_source
        self._update_manifest("running", started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def record(self, outcome: CellOutcome) -> None:
        """The cell's rows into ``results.csv`` (a trained cell replaces all its rows, an evaluated one
        those of its samplers), then its model and identity into the manifest."""
        cell = outcome.cell
        replace = ResultsTable.replace_samplers if cell.evaluate_only else ResultsTable.replace_cell
        self.table = self.run_dir.update_results(lambda table: replace(table, cell.row_model, cell.seed, outcome.rows),
                                                 self.declared)
        self._update_manifest("running", metrics=outcome.protocols, recorded=cell)

    def finish(self) -> int:
        """Mark the run finished; returns the number of failed rows in the directory."""
        self._update_manifest("finished", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        return self.run_dir.load_table().failed_count()

    def _model_entry(self, name: str) -> dict[str, Any]:
        model = self.plan.models[name]
        teacher = {"teacher": model.teacher} if model.teacher else {}
        return {**teacher, "distribution": str(model.provider), "registry_name": model.registry_name, "variant": model.variant,
                "config": model.config.to_dict(), "config_hash": model.config.config_hash(),
                "budget": {key: model.preset.budget.to_dict()[key]
                           for key in ("train_images", "train_steps", "train_pflop", "batch_size")},
                "precision": model.precision, "eval_samples": model.preset.eval_samples,
                "samplers": [str(spec) for spec in model.samplers]}

    def _update_manifest(self, status: str, recorded: Cell | None = None, **extra: Any) -> None:
        """``models`` describes each model as its recorded rows were trained: a model's entry is
        written when its rows are (a run that changes a model's config and stops before its first
        cell finishes leaves the old entry, which still describes the old rows); ``identities``
        describes every identity a row carries, by its hash."""
        plan = self.plan
        dists = sorted({model.provider.distribution for model in plan.models.values()})
        recorded_models = {recorded.row_model} if recorded is not None else set()
        compute = any(model.preset.budget.kind == "pflop" for model in plan.models.values())

        def change(manifest: dict[str, Any]) -> None:
            metrics = {**manifest.get("metrics", {}), **extra.pop("metrics", {})}
            models = dict(manifest.get("models", {}))
            for name in plan.models:
                if name in recorded_models or name not in models:
                    entry, before = self._model_entry(name), models.get(name, {})
                    if before.get("config_hash") == entry["config_hash"]:  # samplers evaluated earlier stay listed
                        entry["samplers"] = list(dict.fromkeys([*before.get("samplers", []), *entry["samplers"]]))
                    models[name] = entry
            identities = dict(manifest.get("identities", {}))
            if recorded is not None:
                identities[recorded.identity_hash] = {**recorded.identity, "config": recorded.config}
            manifest.update(extra)
            manifest.update({
                "status": status,
                "commands": list(dict.fromkeys([*manifest.get("commands", []), self.command])),
                "dataset": plan.dataset.name,
                "data_source": self.data_source,
                "device": {"type": plan.device.type, "name": describe_device(plan.device), **self.numerics},
                "seeds": sorted({*manifest.get("seeds", []), *self.request.seeds}),
                "seed_offsets": dict(SEED_OFFSETS),
                "preset": plan.preset,
                "training": {"budget": "compute: training PFLOP, as steps at each model's counted FLOPs per step"
                             if compute else "work: training images (or steps), never wall time",
                             "budget_kind": "compute" if compute else "work",
                             "precision": plan.precision, "train_seconds_cap": plan.train_seconds_cap,
                             "threads": plan.threads},
                "evaluation_protocol": get_preset(plan.preset, plan.device.type).evaluation.to_dict(),
                "learning_curves": {"fractions": list(plan.cells[0].preset.curve_fractions) if plan.cells else [],
                                    "samples": plan.cells[0].preset.curve_samples if plan.cells else 0,
                                    "metrics": [e.name for e in self.registries.metrics.in_order()
                                                if getattr(e.item, "in_curves", False)],
                                    "rows": "curves/<model>-seed<seed>.csv"},
                "models": models,
                "identities": identities,
                "metrics": metrics,
                "columns": [column.to_dict() for column in self.declared],
                "protocol_keys": {entry.name: list(entry.item.protocol_keys)
                                  for entry in self.registries.metrics.in_order()},
                "does_not_apply": {entry.name: [c.name for c in entry.item.columns if c.headline]
                                   for entry in self.registries.metrics.in_order()
                                   if not _applies(entry.item, plan.dataset)},
                "plugin_problems": plugin_problems(self.registries),
                "versions": merged_versions(manifest.get("versions", {}),
                                            library_versions([d for d in dists if d != "trilemma"])),
            })
            if not metrics:
                manifest.pop("metrics")

        self.run_dir.update_manifest(change)


def _applies(metric: Any, dataset: Any) -> bool:
    """``metric.applies_to(dataset)``; a plugin's that raises is taken to apply (its rows say the error)."""
    try:
        return bool(metric.applies_to(dataset))
    except Exception:  # noqa: BLE001 - the manifest never fails for a plugin's fault
        return True
