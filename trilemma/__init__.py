"""trilemma: benchmark generative models on sample quality, sampling speed and mode coverage."""

from trilemma.datasets import Dataset
from trilemma.errors import TrilemmaError
from trilemma.hookspecs import hookimpl, hookspec
from trilemma.metrics import EvalContext, Metric
from trilemma.model import GenerativeModel, ModelConfig
from trilemma.plugins import collect, get_plugin_manager

__version__ = "0.1.0"
__all__ = [
    "Dataset",
    "EvalContext",
    "GenerativeModel",
    "Metric",
    "ModelConfig",
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
