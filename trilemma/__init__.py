"""trilemma: benchmark generative models on sample quality, sampling speed and mode coverage.

What a plugin author needs is exported here; ``docs/plugin-hooks.md`` documents the hooks.
"""

from trilemma.columns import Column
from trilemma.data import Split
from trilemma.datasets import Dataset
from trilemma.errors import TrilemmaError
from trilemma.execute import CellOutcome, ExecutionSettings
from trilemma.executors import Executor, Job
from trilemma.hookspecs import hookimpl, hookspec
from trilemma.metrics import EvalContext, Metric, ReportSection
from trilemma.model import GenerativeModel, LogLikelihood, ModelConfig, Sampler
from trilemma.plan import Cell
from trilemma.plugins import Registries, collect, get_plugin_manager
from trilemma.presets import Preset
from trilemma.sampling import Samples
from trilemma.settings import Setting

__version__ = "0.1.0"
__all__ = [
    "Cell",
    "CellOutcome",
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
    "Samples",
    "Setting",
    "Split",
    "TrilemmaError",
    "collect",
    "get_models",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
]


def get_models() -> dict[str, type[GenerativeModel]]:
    """Every registered model class by name (built-ins and installed plugins)."""
    registry = collect().models
    return {name: registry[name] for name in registry}
