"""``trilemma run``: train each model, draw from each of its samplers, measure, record a row."""

from __future__ import annotations

import json
import math
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from trilemma.data import Split, default_data_dir
from trilemma.datasets import Dataset
from trilemma.errors import TrilemmaError
from trilemma.metrics import EvalContext
from trilemma.model import GenerativeModel, ModelConfig, resolve_config
from trilemma.plugins import Registries
from trilemma.presets import Preset, get_preset
from trilemma.results import FAILED, MANIFEST_NAME, OK, ResultsTable, write_json
from trilemma.sampling import draw
from trilemma.train import Budget, TrainResult, train

LIBRARIES = ("torch", "torchvision", "torch-fidelity", "pandas", "numpy", "pluggy", "matplotlib", "trilemma")


@dataclass
class RunOptions:
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
    train_steps: int | None = None
    train_seconds: float | None = None
    metric_options: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise TrilemmaError(f"unknown device {name!r}; valid: auto, cpu, cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrilemmaError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def library_versions(extra: list[str] = ()) -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for name in (*LIBRARIES, *extra):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise TrilemmaError(f"cannot write to --out {out_dir}: {exc.strerror or exc}") from exc


@dataclass
class Plan:
    """What will run: each model's class, resolved config and preset with its budget."""

    model_class: type[GenerativeModel]
    config: ModelConfig
    preset: Preset


def plan_models(options: RunOptions, registries: Registries, dataset: Dataset, device: torch.device) -> dict[str, Plan]:
    """Resolve every model's config and budget before anything trains, so bad input fails fast."""
    unknown = [m for m in options.models if m not in registries.models]
    if unknown:
        valid = ", ".join(registries.models.names()) or "none installed"
        raise TrilemmaError(f"unknown model(s) {', '.join(unknown)}; valid: {valid}")
    stray = sorted(set(options.overrides) - set(options.models))
    if stray:
        raise TrilemmaError(f"--set names model(s) not in this run: {', '.join(stray)}; running: {', '.join(options.models)}")
    base = get_preset(options.preset, device.type)
    plans = {}
    for name in options.models:
        cls = registries.models[name]
        if dataset.channels not in cls.data_channels:
            raise TrilemmaError(f"model {name!r} cannot train on {dataset.name} ({dataset.channels} channels)")
        preset = base.with_budget(cls.presets.get(base.name, {}).get("budget", {}))
        if options.train_steps is not None or options.train_seconds is not None:
            preset = preset.with_budget({"train_steps": options.train_steps, "train_seconds": options.train_seconds})
        plans[name] = Plan(cls, resolve_config(cls, base.name, options.overrides.get(name, {})), preset)
    return plans


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def failure_row(base: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    message = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return {**base, "status": FAILED, "error": message}


class Runner:
    """Runs the plan and records rows; one model's failure never stops the others."""

    def __init__(self, options: RunOptions, registries: Registries, log: Callable[[str], None] = print) -> None:
        self.options = options
        self.registries = registries
        self.log = log
        if options.dataset not in registries.datasets:
            raise TrilemmaError(f"unknown dataset {options.dataset!r}; valid: {', '.join(registries.datasets.names())}")
        self.dataset: Dataset = registries.datasets[options.dataset]
        self.device = resolve_device(options.device)
        self.plans = plan_models(options, registries, self.dataset, self.device)
        check_writable(options.out_dir)
        self.out_dir = options.out_dir
        self.results = ResultsTable(self.out_dir)
        self.cache_dir = Path(options.data_dir or default_data_dir()) / "fidelity-cache"
        self.metric_options = dict(options.metric_options, run_dir=self.out_dir)  # shared by every evaluation
        # An earlier run into the same directory (resumed, or re-running some models) keeps its entries.
        manifest_path = self.out_dir / MANIFEST_NAME
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        self.data: dict[str, Split] = {}

    # --- manifest ---------------------------------------------------------------------
    def write_manifest(self, status: str) -> None:
        dists = sorted({self.registries.models.provider(m).distribution for m in self.plans})
        self.manifest.update({
            "status": status,
            "commands": list(dict.fromkeys([*self.manifest.get("commands", []), " ".join(sys.argv)])),
            "dataset": self.dataset.name,
            "data_source": next(iter(self.data.values())).source if self.data else None,
            "device": {"type": self.device.type, "name": describe_device(self.device)},
            "seeds": sorted({*self.manifest.get("seeds", []), *self.options.seeds}),
            "preset": next(iter(self.plans.values())).preset.name if self.plans else self.options.preset,
            "models": {
                **self.manifest.get("models", {}),
                **{name: {
                    "distribution": str(self.registries.models.provider(name)),
                    "config": plan.config.to_dict(),
                    "config_hash": plan.config.config_hash(),
                    "budget": {"train_steps": plan.preset.train_steps, "train_seconds": plan.preset.train_seconds,
                               "batch_size": plan.preset.batch_size},
                    "eval_samples": plan.preset.eval_samples,
                }
                for name, plan in self.plans.items()},
            },
            "versions": library_versions([d for d in dists if d != "trilemma"]),
        })
        write_json(self.out_dir / MANIFEST_NAME, self.manifest)

    # --- the run ----------------------------------------------------------------------
    def run(self) -> int:
        """Run everything; returns the number of failed rows."""
        self.data = self.dataset.load(self.options.data_dir)
        self.manifest["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.write_manifest("running")
        train_images = self.data["train"].images.to(self.device)
        for seed in self.options.seeds:
            for name, plan in self.plans.items():
                if self.options.resume and self.results.finished(name, seed):
                    self.log(f"{name} seed {seed}: already finished, skipped (--resume)")
                    continue
                self.results.drop(name, seed)
                self.run_model(name, plan, seed, train_images)
        self.manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.write_manifest("finished")
        frame = self.results.frame()
        return int((frame["status"] != OK).sum())

    def run_model(self, name: str, plan: Plan, seed: int, train_images: torch.Tensor) -> None:
        base = {"model": name, "seed": seed, "dataset": self.dataset.name, "config_hash": plan.config.config_hash()}
        model: GenerativeModel | None = None
        try:
            torch.manual_seed(seed)
            model = plan.model_class(plan.config, channels=self.dataset.channels).to(self.device)
            base["params"] = count_parameters(model)
            base["sampling_params"] = sum(count_parameters(net) for net in model.sampling_networks())
            budget = Budget(plan.preset.train_steps, plan.preset.train_seconds, plan.preset.batch_size,
                            plan.preset.checkpoint_every)
            self.log(f"{name} seed {seed}: training ({_describe_budget(budget)}, {base['params']:,} parameters)")
            checkpoint = self.out_dir / "checkpoints" / f"{name}-seed{seed}.pt"
            if not self.options.resume:
                checkpoint.unlink(missing_ok=True)  # only --resume continues from an earlier checkpoint
            result = train(model, train_images, budget, seed=seed, checkpoint=checkpoint,
                           progress=self.options.progress, desc=f"{name} seed {seed}")
            base.update(_train_columns(result))
        except Exception as exc:
            self.log(f"{name} seed {seed}: FAILED in training: {type(exc).__name__}: {exc}")
            self._log_traceback(exc)
            names = self._sampler_names(model)
            for sampler_name in names:
                self.results.upsert(failure_row({**base, "sampler": sampler_name}, exc))
            return
        samplers = model.samplers()
        for sampler_name, sampler in samplers.items():
            row = {**base, "sampler": sampler_name}
            try:
                row.update(self.evaluate(model, name, sampler_name, sampler, plan.preset, seed))
                row.update(status=OK, error="")
            except Exception as exc:
                self.log(f"{name}/{sampler_name} seed {seed}: FAILED: {type(exc).__name__}: {exc}")
                self._log_traceback(exc)
                row = failure_row({**row, **getattr(exc, "partial", {})}, exc)
            self.results.upsert(row)

    def evaluate(self, model: GenerativeModel, name: str, sampler_name: str, sampler: Any,
                 preset: Preset, seed: int) -> dict[str, Any]:
        where = f"{name}/{sampler_name}"
        samples = draw(model, sampler, preset.eval_samples, batch_size=preset.sample_batch_size,
                       seed=seed, where=where, progress=self.options.progress)
        save_grid(samples.images[:64], self.out_dir / "samples" / f"{name}-{sampler_name}-seed{seed}.png")
        ctx = EvalContext(model=model, model_name=name, sampler_name=sampler_name, sampler=sampler,
                          samples=samples, dataset=self.dataset, data=self.data, device=self.device,
                          preset=preset, seed=seed, cache_dir=self.cache_dir,
                          options=self.metric_options, log=self.log)
        row: dict[str, Any] = {}
        errors = []
        protocols = self.manifest.setdefault("metrics", {})
        for metric_name in self.registries.metrics.names():
            metric = self.registries.metrics[metric_name]
            if not metric.applies_to(self.dataset):
                continue
            try:
                row.update(metric.compute(ctx))
                protocols[metric_name] = metric.protocol(ctx)
            except Exception as exc:
                self.log(f"{where}: metric {metric_name} failed: {type(exc).__name__}: {exc}")
                errors.append(f"metric {metric_name}: {type(exc).__name__}: {exc}")
        self.log(f"{where} seed {seed}: " + ", ".join(_summary(row)))
        if errors:
            raise MetricsFailed("; ".join(errors), row)
        return row

    def _sampler_names(self, model: GenerativeModel | None) -> list[str]:
        try:
            return list(model.samplers()) if model is not None else ["-"]
        except Exception:
            return ["-"]

    def _log_traceback(self, exc: BaseException) -> None:
        if self.options.metric_options.get("verbose"):
            self.log("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


def save_grid(images: torch.Tensor, path: Path) -> None:
    """The first samples as an 8-wide grid PNG (the report embeds it)."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, path, nrow=8, padding=2, pad_value=0.5)


class MetricsFailed(RuntimeError):
    """Some metrics failed; ``partial`` holds the columns the others computed."""

    def __init__(self, message: str, partial: dict[str, Any]) -> None:
        super().__init__(message)
        self.partial = partial


def _train_columns(result: TrainResult) -> dict[str, Any]:
    return {"train_seconds": result.seconds, "train_steps": result.steps, "images_seen": result.images_seen,
            "peak_mem_bytes": result.peak_mem_bytes}


def _describe_budget(budget: Budget) -> str:
    parts = []
    if budget.steps is not None:
        parts.append(f"{budget.steps} steps")
    if budget.seconds is not None:
        parts.append(f"{budget.seconds:g} s")
    return " or ".join(parts) + f", batch {budget.batch_size}"


def _summary(row: dict[str, Any]) -> list[str]:
    shown = []
    for key, fmt in (("fid", "{:.2f}"), ("is_mean", "{:.2f}"), ("nfe", "{:g}"), ("ms_per_sample", "{:.3g}"),
                     ("modes_covered", "{:g}")):
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            shown.append(f"{key}={fmt.format(value)}")
    return shown
