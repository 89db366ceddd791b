"""Recording a run: rows into ``results.csv`` as cells finish, and the manifest around them."""

from __future__ import annotations

import sys
import time
from typing import Any

from trilemma.environment import describe_device, library_versions
from trilemma.execute import CellOutcome
from trilemma.plan import Cell, Plan, RunRequest
from trilemma.rundir import RunDirectory


class Recorder:
    """Writes each finished cell's rows at once (atomically) and keeps the manifest up to date.

    An earlier run into the same directory (resumed, or re-running some models) keeps its rows
    and manifest entries."""

    def __init__(self, run_dir: RunDirectory, plan: Plan, request: RunRequest) -> None:
        self.run_dir = run_dir
        self.plan = plan
        self.request = request
        self.table = run_dir.load_table()
        self.manifest: dict[str, Any] = run_dir.read_manifest()
        self.data_source: str | None = None

    def finished(self, cell: Cell) -> bool:
        return self.table.finished(cell.model, cell.seed)

    def start(self, data_source: str) -> None:
        self.data_source = data_source
        self.manifest["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.write_manifest("running")

    def record(self, outcome: CellOutcome) -> None:
        self.table.replace_cell(outcome.cell.model, outcome.cell.seed, outcome.rows)
        self.run_dir.write_results(self.table.frame())
        if outcome.protocols:
            self.manifest.setdefault("metrics", {}).update(outcome.protocols)
            self.write_manifest("running")

    def finish(self) -> int:
        """Mark the run finished; returns the number of failed rows in the directory."""
        self.manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.write_manifest("finished")
        return self.table.failed_count()

    def write_manifest(self, status: str) -> None:
        plan = self.plan
        dists = sorted({model.provider.distribution for model in plan.models.values()})
        self.manifest.update({
            "status": status,
            "commands": list(dict.fromkeys([*self.manifest.get("commands", []), " ".join(sys.argv)])),
            "dataset": plan.dataset.name,
            "data_source": self.data_source,
            "device": {"type": plan.device.type, "name": describe_device(plan.device)},
            "seeds": sorted({*self.manifest.get("seeds", []), *self.request.seeds}),
            "preset": plan.preset,
            "models": {
                **self.manifest.get("models", {}),
                **{name: {
                    "distribution": str(model.provider),
                    "config": model.config.to_dict(),
                    "config_hash": model.config.config_hash(),
                    "budget": {"train_steps": model.preset.train_steps, "train_seconds": model.preset.train_seconds,
                               "batch_size": model.preset.batch_size},
                    "eval_samples": model.preset.eval_samples,
                } for name, model in plan.models.items()},
            },
            "versions": library_versions([d for d in dists if d != "trilemma"]),
        })
        self.run_dir.write_manifest(self.manifest)
