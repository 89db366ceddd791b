"""Planning a run: the user's request, checked and resolved into cells before anything trains.

A cell is one model trained on one dataset with one seed, then evaluated with each of its
samplers (a report row each). Cells are plain values, so any executor can take them.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trilemma.datasets import Dataset
from trilemma.environment import resolve_device, resolve_precision
from trilemma.errors import TrilemmaError
from trilemma.model import ModelConfig, resolve_config
from trilemma.plugins import Registries
from trilemma.presets import Preset, get_preset
from trilemma.registry import Provider


@dataclass(frozen=True)
class RunRequest:
    """What ``trilemma run`` was asked to do."""

    models: list[str]
    preset: str = "auto"
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    out_dir: Path = Path("runs/latest")
    device: str = "auto"
    dataset: str = "mnist"
    data_dir: Path | None = None
    resume: bool = False
    progress: bool = True
    verbose: bool = False
    train_steps: int | None = None
    train_images: int | None = None
    train_seconds: float | None = None  # a wall-time cap, recorded in the protocol
    precision: str = "auto"
    metric_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    sweeps: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # model → field → values to try
    executor: str = "local"
    executor_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    command: list[str] = field(default_factory=lambda: ["trilemma", "run"])  # as typed, for the manifest


@dataclass(frozen=True)
class Cell:
    """One unit of work: train ``model`` on ``dataset`` with ``seed`` under ``preset``'s budget,
    then evaluate every sampler. ``config`` holds the resolved config values."""

    model: str
    dataset: str
    seed: int
    config: dict[str, Any] = field(hash=False)
    config_hash: str
    preset: Preset
    precision: str = "fp32"
    variant: str = ""

    @property
    def row_model(self) -> str:
        """The name the rows carry: the model, with its sweep variant in brackets."""
        return f"{self.model}[{self.variant}]" if self.variant else self.model

    @property
    def label(self) -> str:
        return f"{self.row_model} seed {self.seed}"


@dataclass(frozen=True)
class ModelPlan:
    """A model's resolved config and budget, as the manifest records them."""

    config: ModelConfig
    preset: Preset
    provider: Provider
    precision: str
    registry_name: str
    variant: str = ""


@dataclass
class Plan:
    """The resolved run: the dataset, the device, every model's plan and the cells, in order."""

    dataset: Dataset
    device: torch.device
    preset: str
    models: dict[str, ModelPlan]  # by row model name (a sweep variant is a model of its own)
    cells: list[Cell]
    precision: str  # what the run asked for (a model that does not list bf16 trains in fp32)
    train_seconds_cap: float | None = None


SWEEP_VALUE = re.compile(r"^[A-Za-z0-9._+-]+$")


def sweep_variants(sweeps: dict[str, list[str]]) -> list[tuple[str, dict[str, str]]]:
    """Every combination of the swept fields' values, as (label, overrides); one unlabelled
    variant when nothing is swept. The label ("objective=v,schedule=cosine") names the variant's rows."""
    if not sweeps:
        return [("", {})]
    for field_name, values in sweeps.items():
        for value in values:
            if not SWEEP_VALUE.match(value):
                raise TrilemmaError(f"--sweep {field_name}={value!r}: values are letters, digits, '.', '_', '+', '-'")
    return [(",".join(f"{k}={v}" for k, v in zip(sweeps, combo, strict=True)), dict(zip(sweeps, combo, strict=True)))
            for combo in itertools.product(*sweeps.values())]


def plan_run(request: RunRequest, registries: Registries) -> Plan:
    """Check the request against the registries and resolve every model's config and budget."""
    if request.dataset not in registries.datasets:
        raise TrilemmaError(f"unknown dataset {request.dataset!r}; valid: {', '.join(registries.datasets.names())}")
    dataset: Dataset = registries.datasets[request.dataset]
    device = resolve_device(request.device)
    unknown = [m for m in request.models if m not in registries.models]
    if unknown:
        valid = ", ".join(registries.models.names()) or "none installed"
        raise TrilemmaError(f"unknown model(s) {', '.join(unknown)}; valid: {valid}")
    for flag, given in (("--set", request.overrides), ("--sweep", request.sweeps)):
        stray = sorted(set(given) - set(request.models))
        if stray:
            raise TrilemmaError(f"{flag} names model(s) not in this run: {', '.join(stray)}; "
                                f"running: {', '.join(request.models)}")
    if request.executor not in registries.executors:
        raise TrilemmaError(f"unknown executor {request.executor!r}; valid: {', '.join(registries.executors.names())}")
    base = get_preset(request.preset, device.type)
    precision = resolve_precision(request.precision, device)
    models = {}
    for name in request.models:
        cls = registries.models[name]
        if dataset.channels not in cls.data_channels:
            raise TrilemmaError(f"model {name!r} cannot train on {dataset.name} ({dataset.channels} channels)")
        try:
            preset = base.with_budget(cls.presets.get(base.name, {}).get("budget", {}), where=f"model {name!r}, ")
            variants = [(label, {**request.overrides.get(name, {}), **changes})
                        for label, changes in sweep_variants(request.sweeps.get(name, {}))]
            configs = [(label, resolve_config(cls, base.name, overrides)) for label, overrides in variants]
        except TrilemmaError:
            raise
        except Exception as exc:  # a plugin's malformed presets or Config
            raise TrilemmaError(f"model {name!r} ({registries.models.provider(name)}): cannot resolve its "
                                f"{base.name} preset: {type(exc).__name__}: {exc}") from exc
        if request.train_steps is not None:
            preset = preset.with_budget({"train_steps": request.train_steps})
        if request.train_images is not None:
            preset = preset.with_budget({"train_images": request.train_images})
        if request.train_seconds is not None:
            preset = preset.capped(request.train_seconds)
        model_precision = precision if precision in cls.precisions else "fp32"
        for label, config in configs:
            row_model = f"{name}[{label}]" if label else name
            models[row_model] = ModelPlan(config, preset, registries.models.provider(name), model_precision, name, label)
    cells = [Cell(plan.registry_name, dataset.name, seed, plan.config.to_dict(), plan.config.config_hash(), plan.preset,
                  plan.precision, plan.variant)
             for seed in request.seeds for plan in models.values()]
    return Plan(dataset, device, base.name, models, cells, precision, request.train_seconds)
