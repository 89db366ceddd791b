"""Built-in experiment trackers, registered like any plugin's: TensorBoard and MLflow (optional extras).

Each cell is one tracker run under the run directory (``<out>/tensorboard/<model>-seed<seed>``, or
an MLflow file store in ``<out>/mlruns``): its identity and config as parameters, its training
losses by step, its learning curves by step, every row's numbers at the final step under
``<sampler>/<column>``, and the sample grids.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from trilemma.executor_api import require
from trilemma.hookspecs import hookimpl
from trilemma.tracker_api import CellRecord, Tracker, scalars

__all__ = ["MLflowTracker", "TensorBoardTracker"]


def _grid_array(path: Path) -> Any:
    """A PNG as an H×W×3 uint8 array."""
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


class TensorBoardTracker(Tracker):
    """One TensorBoard event directory per cell, ``<out>/tensorboard/<model>-seed<seed>``."""

    name = "tensorboard"

    def check(self, options: dict[str, Any]) -> None:
        require("tensorboard", "--log tensorboard", "tensorboard")

    def log_cell(self, record: CellRecord, options: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(record.run_dir / "tensorboard" / f"{record.model}-seed{record.seed}"))
        try:
            writer.add_text("cell", "\n".join(f"- {key}: {value}" for key, value in record.params.items()))
            for name, value, step in scalars(record):
                writer.add_scalar("/".join(name), value, step)
            for sampler, grid in record.grids.items():
                writer.add_image(f"samples/{sampler}", _grid_array(grid), record.final_step, dataformats="HWC")
        finally:
            writer.close()


class MLflowTracker(Tracker):
    """One MLflow run per cell in a local file store, ``<out>/mlruns`` (experiment: the run directory's name)."""

    name = "mlflow"

    def check(self, options: dict[str, Any]) -> None:
        require("mlflow", "--log mlflow", "mlflow")

    def log_cell(self, record: CellRecord, options: dict[str, Any]) -> None:
        import os

        import mlflow

        # MLflow 3 keeps the file store in maintenance mode behind this opt-out; a file store needs no
        # server and no database, and lives in the run directory with the rest of the run.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        client = mlflow.tracking.MlflowClient(tracking_uri=(record.run_dir / "mlruns").resolve().as_uri())
        experiment = client.get_experiment_by_name(record.run_dir.name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(record.run_dir.name)
        run = client.create_run(experiment_id, run_name=record.label)
        run_id = run.info.run_id
        try:
            for key, value in record.params.items():
                client.log_param(run_id, key, str(value)[:500])
            for name, value, step in scalars(record):
                client.log_metric(run_id, "_".join(name), value, step=step)
            for grid in record.grids.values():
                client.log_artifact(run_id, str(grid))
        finally:
            client.set_terminated(run_id)


@hookimpl
def register_trackers(register: Callable[..., None]) -> None:
    register(TensorBoardTracker())
    register(MLflowTracker())
