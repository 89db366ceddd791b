"""trilemma: benchmark generative models on sample quality, sampling speed and mode coverage.

What a plugin author needs is exported here; ``docs/plugin-hooks.md`` documents the hooks. The
facade is light: ``import trilemma`` loads only the hook markers, and each public name imports its
module on first use (PEP 562), so a plugin importing trilemma does not pull in the engine, pandas
or torch until it uses them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from trilemma.hookspecs import hookimpl, hookspec

__version__ = "0.1.0"

#: Public name → the module that defines it.
_LAZY = {
    "Cell": "trilemma.plan",
    "CellOutcome": "trilemma.execute",
    "CellRecord": "trilemma.tracker_api",
    "Column": "trilemma.columns",
    "Dataset": "trilemma.datasets",
    "EvalContext": "trilemma.metrics",
    "ExecutionSettings": "trilemma.execute",
    "Executor": "trilemma.executor_api",
    "GenerativeModel": "trilemma.model",
    "Job": "trilemma.executor_api",
    "LogLikelihood": "trilemma.model",
    "Metric": "trilemma.metrics",
    "ModelConfig": "trilemma.model",
    "Preset": "trilemma.presets",
    "Registries": "trilemma.plugins",
    "ReportSection": "trilemma.metrics",
    "Sampler": "trilemma.samplers",
    "SamplerSpec": "trilemma.samplers",
    "Samples": "trilemma.sampling",
    "Setting": "trilemma.settings",
    "Split": "trilemma.data",
    "Tracker": "trilemma.tracker_api",
    "TrilemmaError": "trilemma.errors",
    "collect": "trilemma.plugins",
    "get_plugin_manager": "trilemma.plugins",
    "grid": "trilemma.samplers",
}
__all__ = [
    "Cell",
    "CellOutcome",
    "CellRecord",
    "Column",
    "Dataset",
    "EvalContext",
    "ExecutionSettings",
    "Executor",
    "GenerativeModel",
    "Job",
    "LogLikelihood",
    "Metric",
    "ModelConfig",
    "Preset",
    "Registries",
    "ReportSection",
    "Sampler",
    "SamplerSpec",
    "Samples",
    "Setting",
    "Split",
    "Tracker",
    "TrilemmaError",
    "collect",
    "get_models",
    "get_plugin_manager",
    "grid",
    "hookimpl",
    "hookspec",
]

if TYPE_CHECKING:
    from trilemma.columns import Column
    from trilemma.data import Split
    from trilemma.datasets import Dataset
    from trilemma.errors import TrilemmaError
    from trilemma.execute import CellOutcome, ExecutionSettings
    from trilemma.executor_api import Executor, Job
    from trilemma.metrics import EvalContext, Metric, ReportSection
    from trilemma.model import GenerativeModel, LogLikelihood, ModelConfig
    from trilemma.plan import Cell
    from trilemma.plugins import Registries, collect, get_plugin_manager
    from trilemma.presets import Preset
    from trilemma.samplers import Sampler, SamplerSpec, grid
    from trilemma.sampling import Samples
    from trilemma.settings import Setting


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trilemma' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return __all__


def get_models() -> dict[str, type[GenerativeModel]]:
    """Every registered model class by name (built-ins and installed plugins)."""
    registry = importlib.import_module("trilemma.plugins").collect().models
    return {name: registry[name] for name in registry}
