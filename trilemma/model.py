"""The model contract: ``GenerativeModel`` and its ``ModelConfig``.

The harness owns the loop, the data, the device, the budget and checkpoints; a model owns its
networks, losses and optimizers, its samplers, and says which networks a sampler evaluates.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from trilemma.errors import TrilemmaError, did_you_mean
from trilemma.samplers import SamplerSpec, specs
from trilemma.values import coerce

LikelihoodKind = Literal["exact", "dequantized", "elbo", "vlb"]
#: What each kind of ``LogLikelihood`` is, in words the report and the docs use.
LIKELIHOOD_KINDS: dict[str, str] = {
    "exact": "log P(x) of the 8-bit image itself (a discrete model)",
    "dequantized": "a uniform-dequantization bound E_u log p(x + u) ≤ log P(x) (Theis et al. 2016), estimated "
                   "with random u: a continuous model's (a flow's) density of the dequantized image",
    "elbo": "an evidence lower bound (a VAE)",
    "vlb": "a diffusion model's variational bound",
}


@dataclasses.dataclass(frozen=True)
class LogLikelihood:
    """log P(x) of each 8-bit image (the discrete image, 256 levels a pixel), in nats, or a lower
    bound on it: ``kind`` is ``exact`` (a discrete model's log P(x) itself), ``dequantized`` (a
    continuous density's uniform-dequantization bound, a flow's), ``elbo`` (a VAE) or ``vlb`` (a
    diffusion model's variational bound); ``LIKELIHOOD_KINDS`` says each in words. Bits per
    dimension = −nats / (pixels · ln 2)."""

    nats: torch.Tensor
    kind: LikelihoodKind


@dataclasses.dataclass
class ModelConfig:
    """Base for a model's hyper-parameters: a dataclass whose defaults suit MNIST."""

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, where: str = "") -> ModelConfig:
        """Build a config; values may be strings (from the command line) and are coerced to the
        field's type. Unknown fields and values of the wrong type raise ``TrilemmaError``."""
        types_ = cls.field_types()
        unknown = sorted(set(values) - set(types_))
        if unknown:
            raise TrilemmaError(
                f"{where or cls.__qualname__}: unknown field(s) {', '.join(unknown)}"
                f"{did_you_mean(unknown, types_)}; valid: {', '.join(sorted(types_))}"
            )
        return cls(**{k: coerce(v, types_[k], f"{where}.{k}" if where else k) for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, values: Mapping[str, Any], *, where: str = "") -> ModelConfig:
        merged = {**self.to_dict(), **values}
        return type(self).from_dict(merged, where=where)

    def config_hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class ModelPreset:
    """A model's settings for one preset: config values, changes to the preset's training budget
    (``train_images`` or ``train_steps``, ``batch_size``), and the samplers evaluated."""

    config: Mapping[str, Any]
    budget: Mapping[str, Any]
    samplers: tuple[SamplerSpec, ...]


class GenerativeModel(nn.Module):
    """Base class of every model plugin.

    Subclasses set ``name`` and ``Config`` and implement ``configure_optimizers``,
    ``training_step``, ``sample`` and ``sampling_networks``; they may offer sampler methods with
    ``sampler_methods`` (which ones a run evaluates is chosen at evaluation time: ``samplers``,
    a preset's ``samplers``, ``--sampler``) and per-preset settings with ``presets``.
    """

    #: Version of this contract: 2 took samplers out of the training config (``sampler_methods``
    #: and specs chosen at evaluation time replace protocol 1's ``samplers()`` dict).
    protocol: ClassVar[int] = 2

    name: ClassVar[str] = ""
    Config: ClassVar[type[ModelConfig]] = ModelConfig
    #: Channel counts of data the model can train on (3 for Stacked-MNIST).
    data_channels: ClassVar[tuple[int, ...]] = (1,)
    #: Training precisions the model keeps its quality in: add "bf16" once measured (same budget,
    #: FID within the seed-to-seed spread); the harness then trains it under bf16 autocast where
    #: the device is fast at bf16.
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    #: Per preset: ``{"config": {field: value}, "budget": {"train_images": .. (or "train_steps"),
    #: "batch_size": ..}, "samplers": (spec, ...)}``; ``--set`` overrides the config, ``--sampler``
    #: the samplers. Checked when the model registers (``declaration_problem``).
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: The samplers evaluated where a preset lists none: specs (``"ddim:steps=20"``,
    #: ``SamplerSpec``, ``trilemma.samplers.grid(...)``), one report row each.
    samplers: ClassVar[tuple[Any, ...]] = ("default",)
    #: The rows whose learning curves a run draws (sampler names, e.g. ``"ddim-10"``), among those it
    #: evaluates; empty: the evaluated sampler with the fewest steps (the cheapest to draw).
    curve_samplers: ClassVar[tuple[str, ...]] = ()
    #: A student's teacher: the registry name of the model it learns from (empty: none). The
    #: teacher's cell (its own preset config and budget, or the run's cell of it) trains first or is
    #: reused by identity; the student receives it, trained and frozen, through ``teacher_model``. A
    #: config field named ``teacher`` overrides this per run (``--set student.teacher=NAME``).
    teacher: ClassVar[str] = ""
    #: Config values the teacher's cell trains with over its preset's (``{"objective": "v"}``): they make
    #: it a variant of the teacher model, reported as ``teacher[objective=v]``, as ``--sweep`` names one.
    teacher_config: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: ModelConfig | None = None, channels: int = 1) -> None:
        super().__init__()
        if config is None:
            config = self.Config()
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__} needs a {self.Config.__name__}, got {type(config).__name__}")
        if channels not in self.data_channels:
            raise TrilemmaError(f"model {self.name!r} takes {self.data_channels}-channel data, not {channels}")
        self.config = config
        self.channels = channels
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    @classmethod
    def teacher_name(cls, config: ModelConfig) -> str:
        """The registry name of the model this one learns from under ``config`` (empty: none)."""
        return str(getattr(config, "teacher", cls.teacher) or "")

    @property
    def teacher_model(self) -> GenerativeModel:
        """The trained teacher (frozen, in eval mode, on this model's device), for a student whose
        ``teacher`` is set, during training only: the harness attaches it before training and detaches
        it before any sampler is evaluated. Not a submodule: its weights are never in the student's
        parameters, checkpoint or sampling networks."""
        teacher = self.__dict__.get("_teacher_model")
        if teacher is None:
            raise TrilemmaError(f"model {self.name!r} has no teacher attached (a teacher is there in training only; "
                                f"its `teacher` is {self.teacher!r})")
        return teacher

    def attach_teacher(self, teacher: GenerativeModel) -> None:
        """Hand the student its trained teacher, frozen; kept out of the module tree."""
        teacher.eval()
        teacher.requires_grad_(False)
        self.__dict__["_teacher_model"] = teacher

    def detach_teacher(self) -> None:
        """Let the teacher go (the harness does once training ends): a student samples on its own, so
        its samplers' NFE, FLOPs and time are its own."""
        self.__dict__.pop("_teacher_model", None)

    # --- training -------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Create the optimizers, by name; called once, after the model is on its device."""
        raise NotImplementedError

    def training_step(self, batch: torch.Tensor, step: int) -> Mapping[str, float | torch.Tensor]:
        """One update on ``batch`` (N×C×28×28 floats in [0, 1]) with ``self.optimizers``;
        returns the losses to log. A non-finite loss marks the run of this model failed."""
        raise NotImplementedError

    # --- sampling -------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images, N×C×28×28 floats in [0, 1], on the model's device."""
        raise NotImplementedError

    def sampler_methods(self) -> Mapping[str, Callable[..., torch.Tensor]]:
        """The ways this model can sample, by method name: ``fn(n, generator, **params)`` with
        keyword parameters (annotated, so values from the command line are coerced; those without
        a default must be given). A spec such as ``ddim:steps=20`` picks one and its parameters."""
        return {"default": self.sample}

    @classmethod
    def preset_settings(cls, preset: str) -> ModelPreset:
        """The model's settings for ``preset``, typed (its ``presets`` entry, checked at registration)."""
        settings = cls.presets.get(preset, {})
        samplers = settings.get("samplers")
        return ModelPreset(dict(settings.get("config", {})), dict(settings.get("budget", {})),
                           specs(samplers) if samplers is not None else specs(cls.samplers))

    @classmethod
    def sampler_specs(cls, preset: str) -> tuple[SamplerSpec, ...]:
        """The samplers evaluated under ``preset`` when the user names none."""
        return cls.preset_settings(preset).samplers

    @classmethod
    def declaration_problem(cls) -> str | None:
        """What is wrong with the class's declarations (protocol, presets), checked at registration."""
        from trilemma.presets import BUDGET_KEYS

        if "samplers" in vars(cls) and callable(vars(cls)["samplers"]):
            return ("defines samplers() (trilemma model protocol 1); protocol 2 declares sampler_methods() and "
                    "lists sampler specs in `samplers` or a preset's \"samplers\"")
        if not isinstance(cls.presets, Mapping):
            return f"presets must be a dict of preset name → settings, got {type(cls.presets).__name__}"
        for preset, settings in cls.presets.items():
            where = f"presets[{preset!r}]"
            if not isinstance(settings, Mapping):
                return f"{where} must be a dict, got {type(settings).__name__}"
            unknown = sorted(set(settings) - {"config", "budget", "samplers"})
            if unknown:
                return f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid: 'config', 'budget', 'samplers'"
            budget = settings.get("budget", {})
            if not isinstance(budget, Mapping) or set(budget) - set(BUDGET_KEYS):
                return f"{where}['budget'] may only set {', '.join(BUDGET_KEYS)}, got {budget!r}"
            try:
                cls.Config.from_dict(settings.get("config", {}), where=f"{cls.name} {where}")
                specs(settings.get("samplers", ()))
            except TrilemmaError as exc:
                return str(exc)
        try:
            specs(cls.samplers)
        except TrilemmaError as exc:
            return f"samplers: {exc}"
        if not isinstance(cls.teacher, str) or not isinstance(cls.teacher_config, Mapping):
            return (f"teacher must be a model name and teacher_config a dict of config values, got "
                    f"{cls.teacher!r} and {type(cls.teacher_config).__name__}")
        return None

    def sampling_networks(self) -> list[nn.Module]:
        """The modules whose forward calls are network function evaluations when sampling.

        List top-level networks only; a listed network called inside another is part of its
        evaluation."""
        raise NotImplementedError

    # --- likelihood (optional) --------------------------------------------------------------
    def log_likelihood(self, images: torch.Tensor, generator: torch.Generator | None = None) -> LogLikelihood:
        """Optionally, the log-likelihood (or a bound) of N×C×28×28 uint8 images; models that
        have none leave this alone, and the harness reports no bits per dimension for them."""
        raise NotImplementedError

    @classmethod
    def has_likelihood(cls) -> bool:
        return cls.log_likelihood is not GenerativeModel.log_likelihood

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def resolve_config(model_class: type[GenerativeModel], preset: str, overrides: Mapping[str, Any]) -> ModelConfig:
    """The model's defaults, then its preset's ``config``, then command-line overrides."""
    preset_values = model_class.preset_settings(preset).config  # checked at registration
    base = model_class.Config.from_dict(preset_values, where=f"{model_class.name} preset {preset}")
    return base.replace(overrides, where=model_class.name)
