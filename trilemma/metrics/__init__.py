"""Metrics: each fills some report columns for one (model, sampler, seed).

Built-in metrics register through ``register_metrics`` exactly as a plugin's would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from trilemma.data import Split
from trilemma.datasets import Dataset
from trilemma.model import GenerativeModel, Sampler
from trilemma.presets import Preset
from trilemma.sampling import Samples
from trilemma.settings import Setting


@dataclass
class EvalContext:
    """Everything a metric may look at for one (model, sampler, seed)."""

    model: GenerativeModel
    model_name: str
    sampler_name: str
    sampler: Sampler
    samples: Samples  # the evaluation samples, drawn once and shared by all metrics
    dataset: Dataset
    data: dict[str, Split]  # CPU uint8 splits of the dataset
    device: torch.device
    preset: Preset
    seed: int
    cache_dir: Path
    settings: Mapping[str, Any] = field(default_factory=dict)  # this metric's declared settings
    log: Callable[[str], None] = print


class Metric:
    """Base class of a metric. ``compute`` returns report columns; ``protocol`` describes how
    they were computed (it goes into the manifest). ``settings`` declares the options the metric
    takes: each becomes a ``trilemma run`` flag, and its value reaches ``ctx.settings``."""

    name: str = ""
    settings: ClassVar[tuple[Setting, ...]] = ()

    def applies_to(self, dataset: Dataset) -> bool:
        return True

    def compute(self, ctx: EvalContext) -> dict[str, Any]:
        raise NotImplementedError

    def protocol(self, ctx: EvalContext) -> dict[str, Any]:
        return {}
