"""Planning a run: the user's request, checked and resolved into cells before anything trains.

A cell is one model trained on one dataset with one seed, then evaluated with each of its
samplers (a report row each). Cells are plain values, so any executor can take them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from trilemma.datasets import Dataset
from trilemma.environment import resolve_device, resolve_precision, resolve_threads
from trilemma.errors import TrilemmaError, did_you_mean
from trilemma.model import GenerativeModel, ModelConfig, resolve_config
from trilemma.plugins import Registries
from trilemma.presets import Preset, get_preset
from trilemma.registry import Provider
from trilemma.rundir import RunDirectory
from trilemma.samplers import SamplerSpec, bind, specs


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
    train_pflop: float | None = None  # a compute budget for every model instead (compute-matched rows)
    samplers: dict[str, list[str]] = field(default_factory=dict)  # model ("" for every model) → sampler specs
    retrain_changed: bool = False  # --resume: retrain cells whose identity changed instead of refusing
    precision: str = "auto"
    threads: int | None = None  # torch CPU threads per cell (None: 1 on a CPU, torch's default on a GPU)
    metric_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    sweeps: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # model → field → values to try
    executor: str = "local"
    executor_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    curves: tuple[float, ...] | None = None  # learning-curve points instead of the preset's (() for none)
    trackers: list[str] = field(default_factory=list)  # experiment trackers each cell is logged to (--log)
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
    provider: str = ""  # the plugin distribution and version that provides the model
    samplers: tuple[str, ...] = ()  # the sampler specs to evaluate (evaluation, not identity)
    evaluate_only: bool = False  # evaluate a finished checkpoint; never train (``trilemma eval``)
    threads: int | None = None  # torch CPU threads it trains and evaluates with (None: torch's default)
    teacher: Cell | None = None  # the cell whose trained model this one learns from (same seed), run first

    @property
    def identity(self) -> dict[str, Any]:
        """What the cell's rows were trained as, apart from the seed: model, variant, config hash,
        budget (kind and amount), dataset, plugin distribution and version, precision, time cap and
        CPU threads (on a CPU the thread count changes the order of float sums, and so the weights).
        Resume, checkpoints and report pooling compare this, never names alone."""
        kind = self.preset.budget.kind
        budget = {"kind": kind, "amount": getattr(self.preset, f"train_{kind}")}
        identity = {"model": self.model, "variant": self.variant, "config_hash": self.config_hash,
                    "budget": {**budget, "batch_size": self.preset.batch_size}, "dataset": self.dataset,
                    "plugin": self.provider, "precision": self.precision,
                    "train_seconds_cap": self.preset.train_seconds, "threads": self.threads}
        if self.teacher is not None:  # a student trained from another teacher is another cell
            identity["teacher"] = self.teacher.identity_hash
        return identity

    @property
    def identity_hash(self) -> str:
        return identity_hash(self.identity)

    @property
    def row_model(self) -> str:
        """The name the rows carry: the model, with its sweep variant in brackets."""
        return f"{self.model}[{self.variant}]" if self.variant else self.model

    @property
    def label(self) -> str:
        return f"{self.row_model} seed {self.seed}"


def identity_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ModelPlan:
    """A model's resolved config and budget, as the manifest records them."""

    config: ModelConfig
    preset: Preset
    provider: Provider
    precision: str
    registry_name: str
    variant: str = ""
    samplers: tuple[SamplerSpec, ...] = ()
    teacher: str = ""  # the row model of the plan this model learns from (empty: none)


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
    threads: int | None = None  # torch CPU threads per cell


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


def check_consistent(request: RunRequest) -> None:
    """Refuse input that says two things at once, before anything is resolved."""
    given = [flag for flag, value in (("--steps", request.train_steps), ("--images", request.train_images),
                                      ("--train-pflop", request.train_pflop)) if value is not None]
    if len(given) > 1:
        raise TrilemmaError(f"{' and '.join(given)} each set the training budget; give one of them")
    for model, fields in request.sweeps.items():
        both = sorted(set(fields) & set(request.overrides.get(model, {})))
        if both:
            raise TrilemmaError(f"--set and --sweep both set {', '.join(f'{model}.{f}' for f in both)}; "
                                "give each field one way")


def choose_samplers(cls: type[GenerativeModel], instance: Any, preset: str, names: Sequence[str],
                    given: dict[str, list[str]]) -> tuple[SamplerSpec, ...]:
    """The samplers a model is evaluated with: the ``--sampler`` specs prefixed with one of its
    ``names`` (``MODEL/SPEC``) and the unprefixed ones whose method it has, else its preset's. With
    an instance (None: the plugin cannot build, and its cell fails in execution), each spec is
    checked against the model's methods and made canonical."""
    prefixed = specs(spec for name in dict.fromkeys(names) for spec in given.get(name, []))
    unprefixed = specs(given.get("", []))
    methods = _methods(instance)
    if methods is None:
        return (prefixed + unprefixed) or cls.sampler_specs(preset)
    unprefixed = tuple(spec for spec in unprefixed if spec.method in methods)
    if prefixed or unprefixed:  # the user's choice: a bad spec is refused before any work
        return tuple(spec for spec, _ in bind(instance, prefixed + unprefixed).values())
    defaults = cls.sampler_specs(preset)
    try:
        return tuple(spec for spec, _ in bind(instance, defaults).values())
    except Exception:  # the plugin's own specs: its rows fail with the reason, the run goes on
        return defaults


def _instance(cls: type[GenerativeModel], config: ModelConfig, channels: int) -> Any:
    """The model built on the CPU to check its samplers; None where the plugin cannot build (its
    cell then fails in execution and is recorded like any other failure)."""
    try:
        return cls(config, channels=channels)
    except KeyboardInterrupt:
        raise
    except BaseException:  # SystemExit included: a plugin's fault is its cell's failure
        return None


def _methods(instance: Any) -> Any:
    """The instance's sampler methods; None when there is no instance or the plugin fails to say."""
    try:
        return instance.sampler_methods() if instance is not None else None
    except KeyboardInterrupt:
        raise
    except BaseException:
        return None


def _model_preset(cls: type[GenerativeModel], name: str, base: Preset, request: RunRequest) -> Preset:
    """A model's preset: the run's, with the model's own budget, then the request's budget, cap and curves."""
    preset = base.with_budget(cls.preset_settings(base.name).budget, where=f"model {name!r}, ")
    for key in ("train_steps", "train_images", "train_pflop"):
        if getattr(request, key) is not None:
            preset = preset.with_budget({key: getattr(request, key)})
    if request.train_seconds is not None:
        preset = preset.capped(request.train_seconds)
    if request.curves is not None:
        preset = preset.with_curves(request.curves)
    return preset


def _resolve(cls: type[GenerativeModel], name: str, role: str, base: Preset, request: RunRequest, provider: Provider,
             variants: Sequence[tuple[str, dict[str, str]]]) -> tuple[Preset, list[tuple[str, ModelConfig]]]:
    """A model's preset and its config for each ``(label, changes)`` variant; a plugin's malformed
    presets or Config become one line naming the plugin (``role``: "model" or "teacher")."""
    try:
        preset = _model_preset(cls, name, base, request)
        return preset, [(label, resolve_config(cls, base.name, changes)) for label, changes in variants]
    except TrilemmaError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's fault, said in one line
        raise TrilemmaError(f"{role} {name!r} ({provider}): cannot resolve its {base.name} preset: "
                            f"{type(exc).__name__}: {exc}") from exc


def _model_plan(cls: type[GenerativeModel], name: str, label: str, config: ModelConfig, preset: Preset, provider: Provider,
                precision: str, instance: Any, given_samplers: dict[str, list[str]]) -> ModelPlan:
    """The plan of one model variant: its precision where the model supports the run's, and its samplers
    (checked against ``instance``, the model built on the CPU, or None where the plugin cannot build)."""
    samplers = choose_samplers(cls, instance, preset.name, [name], given_samplers)
    return ModelPlan(config, preset, provider, precision if precision in cls.precisions else "fp32", name, label,
                     samplers)


def add_teachers(models: dict[str, ModelPlan], registries: Registries, base: Preset, request: RunRequest,
                 dataset: Dataset, precision: str) -> dict[str, ModelPlan]:
    """Link every student to its teacher's plan: the run's own plan of the teacher model (the variant
    its ``teacher_config`` names, unswept when it names none) when the run has one, else one added for
    it with the teacher's preset config, those values over it, and the run's budget rules (its rows
    are reported like any other). A teacher that is not installed, cannot train on the
    dataset, or closes a cycle is refused before any work."""
    models = dict(models)
    resolved: dict[str, str] = {}  # student row model -> teacher row model

    def teacher_of(row_model: str, chain: tuple[str, ...]) -> str:
        plan = models[row_model]
        cls = registries.models[plan.registry_name]
        try:
            name = cls.teacher_name(plan.config)
            changes = {key: str(value) for key, value in cls.teacher_config.items()} if name else {}
        except Exception as exc:  # noqa: BLE001 - a plugin's fault, said in one line
            raise TrilemmaError(f"model {row_model!r}: cannot say its teacher: {type(exc).__name__}: {exc}") from exc
        if not name:
            return ""
        label = ",".join(f"{key}={value}" for key, value in changes.items())
        teacher_row = f"{name}[{label}]" if label else name
        if teacher_row in chain or name == plan.registry_name:
            raise TrilemmaError(f"model {row_model!r}: its teachers form a cycle: {' → '.join([*chain, teacher_row])}")
        if name not in registries.models:
            raise TrilemmaError(f"model {row_model!r} learns from {name!r}, which is not installed"
                                f"{did_you_mean([name], registries.models.names())}; "
                                f"valid: {', '.join(registries.models.names())}")
        teacher_cls = registries.models[name]
        if dataset.channels not in teacher_cls.data_channels:
            raise TrilemmaError(f"model {row_model!r}: its teacher {name!r} cannot train on {dataset.name}")
        if teacher_row not in models:
            provider = registries.models.provider(name)
            preset, [(_, config)] = _resolve(teacher_cls, name, "teacher", base, request, provider, [(label, changes)])
            models[teacher_row] = _model_plan(teacher_cls, name, label, config, preset, provider, precision,
                                              _instance(teacher_cls, config, dataset.channels), {})
        if teacher_row not in resolved:
            resolved[teacher_row] = teacher_of(teacher_row, (*chain, teacher_row))
        return teacher_row

    for row_model in list(models):
        if row_model not in resolved:
            resolved[row_model] = teacher_of(row_model, (row_model,))
    return {row_model: replace(plan, teacher=resolved.get(row_model, "")) for row_model, plan in models.items()}


def cells_in_order(models: dict[str, ModelPlan], seeds: Sequence[int], dataset: str, threads: int | None) -> list[Cell]:
    """One cell per model plan and seed, every teacher's before its students' (otherwise in plan order)."""
    made: dict[tuple[str, int], Cell] = {}
    for seed in seeds:
        for row_model in models:
            make_cell(models, row_model, seed, dataset, threads, made)
    return list(made.values())


def make_cell(models: dict[str, ModelPlan], row_model: str, seed: int, dataset: str, threads: int | None,
              made: dict[tuple[str, int], Cell], evaluate_only: bool = False) -> Cell:
    """The cell of ``row_model`` and ``seed``, its teacher's cell made (into ``made``) first."""
    if (row_model, seed) not in made:
        plan = models[row_model]
        teacher = make_cell(models, plan.teacher, seed, dataset, threads, made, evaluate_only) if plan.teacher else None
        made[(row_model, seed)] = Cell(
            plan.registry_name, dataset, seed, plan.config.to_dict(), plan.config.config_hash(), plan.preset,
            plan.precision, plan.variant, str(plan.provider), tuple(str(s) for s in plan.samplers),
            evaluate_only=evaluate_only, threads=threads, teacher=teacher)
    return made[(row_model, seed)]

def plan_run(request: RunRequest, registries: Registries) -> Plan:
    """Check the request against the registries and resolve every model's config, budget and samplers."""
    check_consistent(request)
    if request.dataset not in registries.datasets:
        names = registries.datasets.names()
        raise TrilemmaError(f"unknown dataset {request.dataset!r}{did_you_mean([request.dataset], names)}; "
                            f"valid: {', '.join(names)}")
    dataset: Dataset = registries.datasets[request.dataset]
    device = resolve_device(request.device)
    unknown = [m for m in request.models if m not in registries.models]
    if unknown:
        valid = ", ".join(registries.models.names()) or "none installed"
        raise TrilemmaError(f"unknown model(s) {', '.join(unknown)}{did_you_mean(unknown, registries.models.names())}; "
                            f"valid: {valid}")
    for flag, given in (("--set", request.overrides), ("--sweep", request.sweeps),
                        ("--sampler", {k: v for k, v in request.samplers.items() if k})):
        stray = sorted(set(given) - set(request.models))
        if stray:
            raise TrilemmaError(f"{flag} names model(s) not in this run: {', '.join(stray)}; "
                                f"running: {', '.join(request.models)}")
    if request.executor not in registries.executors:
        names = registries.executors.names()
        raise TrilemmaError(f"unknown executor {request.executor!r}{did_you_mean([request.executor], names)}; "
                            f"valid: {', '.join(names)}")
    base = get_preset(request.preset, device.type)
    precision = resolve_precision(request.precision, device)
    threads = resolve_threads(request.threads, device)
    models = {}
    unmatched = {spec.method for spec in specs(request.samplers.get("", []))}
    all_built = True
    for name in request.models:
        cls = registries.models[name]
        if dataset.channels not in cls.data_channels:
            raise TrilemmaError(f"model {name!r} cannot train on {dataset.name} ({dataset.channels} channels)")
        provider = registries.models.provider(name)
        variants = [(label, {**request.overrides.get(name, {}), **changes})
                    for label, changes in sweep_variants(request.sweeps.get(name, {}))]
        preset, configs = _resolve(cls, name, "model", base, request, provider, variants)
        for label, config in configs:
            instance = _instance(cls, config, dataset.channels)
            methods = _methods(instance)
            unmatched -= set(methods or ())
            all_built = all_built and methods is not None
            models[f"{name}[{label}]" if label else name] = _model_plan(cls, name, label, config, preset, provider,
                                                                        precision, instance, request.samplers)
    if unmatched and all_built:
        raise TrilemmaError(f"--sampler: no model in this run has the method(s) {', '.join(sorted(unmatched))}")
    models = add_teachers(models, registries, base, request, dataset, precision)
    cells = cells_in_order(models, request.seeds, dataset.name, threads)
    return Plan(dataset, device, base.name, models, cells, precision, request.train_seconds, threads)


def plan_eval(request: RunRequest, registries: Registries, manifest: dict[str, Any],
              recorded_seeds: dict[str, set[int]]) -> Plan:
    """``trilemma eval``: cells that evaluate the finished checkpoints of a run directory, rebuilt
    from its manifest (config, budget, precision, plugin), with the samplers asked for (or each
    model's preset samplers). ``recorded_seeds`` maps each model to the seeds with rows."""
    check_consistent(request)
    entries = manifest.get("models") or {}
    if not entries:
        raise TrilemmaError(f"{request.out_dir}: its manifest lists no trained models; is it a trilemma run directory?")
    dataset_name = manifest.get("dataset", "mnist")
    if dataset_name not in registries.datasets:
        raise TrilemmaError(f"{request.out_dir} was trained on dataset {dataset_name!r}, which is not installed")
    dataset: Dataset = registries.datasets[dataset_name]
    wanted = request.models or list(entries)
    names = {*entries, *(e.get("registry_name") for e in entries.values())}
    unknown = [m for m in [*wanted, *(k for k in request.samplers if k)] if m not in names]
    if unknown:
        raise TrilemmaError(f"{request.out_dir} has no model(s) {', '.join(unknown)}; it has {', '.join(entries)}")
    device = resolve_device(request.device)
    base = get_preset(manifest.get("preset", "quick"), device.type)
    training = manifest.get("training") or {}
    cap, threads = training.get("train_seconds_cap"), training.get("threads")
    models: dict[str, ModelPlan] = {}
    cells: list[Cell] = []
    unmatched = {spec.method for spec in specs(request.samplers.get("", []))}

    def entry_plan(row_model: str) -> ModelPlan:
        """A recorded model's plan, rebuilt from its manifest entry (its teacher's, too)."""
        if row_model in models:
            return models[row_model]
        entry = entries.get(row_model)
        if entry is None:
            raise TrilemmaError(f"{request.out_dir}: its manifest has no entry for {row_model!r} (a teacher)")
        name = entry.get("registry_name", row_model)
        if name not in registries.models:
            raise TrilemmaError(f"model {name!r} ({entry.get('distribution')}) of {request.out_dir} is not installed")
        provider = registries.models.provider(name)
        if str(provider) != entry.get("distribution"):
            raise TrilemmaError(f"{row_model} was trained with {entry.get('distribution')} and {provider} is installed; "
                                "a checkpoint is evaluated by the plugin version that trained it")
        cls = registries.models[name]
        config = cls.Config.from_dict(entry.get("config", {}), where=row_model)
        if config.config_hash() != entry.get("config_hash"):
            raise TrilemmaError(f"{row_model}: its recorded config no longer hashes to {entry.get('config_hash')} "
                                f"under {provider} (the Config class changed)")
        recorded = entry.get("budget", {})
        budget = ({"train_pflop": recorded["train_pflop"]} if recorded.get("train_pflop") is not None
                  else {"train_images": recorded["train_images"]} if recorded.get("train_images") is not None
                  else {"train_steps": recorded.get("train_steps")})
        preset = base.with_budget({**budget, "batch_size": recorded.get("batch_size", base.batch_size)},
                                  where=f"{row_model}: ")
        if cap is not None:
            preset = preset.capped(cap)
        instance = _instance(cls, config, dataset.channels)
        unmatched.difference_update(_methods(instance) or ())
        samplers = choose_samplers(cls, instance, base.name, [row_model, name], request.samplers)
        teacher = entry.get("teacher", "")
        if teacher:
            entry_plan(teacher)
        models[row_model] = ModelPlan(config, preset, provider, entry.get("precision", "fp32"), name,
                                      entry.get("variant", ""), samplers, teacher)
        return models[row_model]

    made: dict[tuple[str, int], Cell] = {}
    for row_model, entry in entries.items():
        if row_model not in wanted and entry.get("registry_name", row_model) not in wanted:
            continue
        entry_plan(row_model)
        seeds = sorted(recorded_seeds.get(row_model, set()))
        if request.seeds:
            seeds = [s for s in seeds if s in request.seeds]
        cells += [make_cell(models, row_model, seed, dataset.name, threads, made, evaluate_only=True) for seed in seeds]
    if unmatched:
        raise TrilemmaError(f"--sampler: no model evaluated here has the method(s) {', '.join(sorted(unmatched))}")
    run_dir = RunDirectory(request.out_dir)
    untrained = [cell.label for cell in cells if not run_dir.checkpoint(cell.row_model, cell.seed).exists()]
    if untrained:
        raise TrilemmaError(f"{request.out_dir}: no checkpoint of {', '.join(untrained)} (removed, or the run never "
                            "finished it); `trilemma run ... --resume --out` it first, or leave it out of eval")
    if not cells:
        raise TrilemmaError(f"{request.out_dir}: no recorded rows of {', '.join(wanted)} for seeds {request.seeds}")
    return Plan(dataset, device, base.name, models, cells, training.get("precision", "fp32"), cap, threads)
