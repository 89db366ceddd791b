"""The model contract: ``GenerativeModel`` and its ``ModelConfig``.

The harness owns the loop, the data, the device, the budget and checkpoints; a model owns its
networks, losses and optimizers, its samplers, and says which networks a sampler evaluates.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, Union

import torch
from torch import nn

from trilemma.errors import TrilemmaError

Sampler = Callable[[int, torch.Generator | None], torch.Tensor]
LikelihoodKind = Literal["exact", "elbo", "vlb"]


@dataclasses.dataclass(frozen=True)
class LogLikelihood:
    """log p(x) of each 8-bit image (the discrete image, 256 levels a pixel), in nats, or a lower
    bound on it: ``kind`` is ``exact`` (a flow), ``elbo`` (a VAE) or ``vlb`` (a diffusion model's
    variational bound). Bits per dimension = −nats / (pixels · ln 2)."""

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
                f"{where or cls.__qualname__}: unknown field(s) {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(types_))}"
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


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert ``value`` (possibly a string) to ``annotation``: bool, int, float, str, a tuple of
    those, ``Literal[...]``, or ``X | None``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, where)
            except TrilemmaError as exc:
                errors.append(str(exc))
        raise TrilemmaError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        for allowed in args:
            if value == allowed or (isinstance(value, str) and str(allowed) == value):
                return allowed
        raise TrilemmaError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        item_type = args[0] if args else str
        return tuple(coerce(v.strip() if isinstance(v, str) else v, item_type, where) for v in items if v != "")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise TrilemmaError(f"{where}: expected true/false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise TrilemmaError(f"{where}: expected {annotation.__name__}, got {value!r}")
        if isinstance(value, (int, float)) and (annotation is float or float(value).is_integer()):
            return annotation(value)
        if isinstance(value, str):
            try:
                return annotation(value)
            except ValueError:
                pass
        raise TrilemmaError(f"{where}: expected {annotation.__name__}, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise TrilemmaError(f"{where}: expected str, got {value!r}")
    return value


class GenerativeModel(nn.Module):
    """Base class of every model plugin.

    Subclasses set ``name`` and ``Config`` and implement ``configure_optimizers``,
    ``training_step``, ``sample`` and ``sampling_networks``; they may add named samplers with
    ``samplers`` and per-preset settings with ``presets``.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[ModelConfig]] = ModelConfig
    #: Channel counts of data the model can train on (3 for Stacked-MNIST).
    data_channels: ClassVar[tuple[int, ...]] = (1,)
    #: Training precisions the model keeps its quality in: add "bf16" once measured (same budget,
    #: FID within the seed-to-seed spread); the harness then trains it under bf16 autocast where
    #: the device is fast at bf16.
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    #: Per preset: ``{"config": {field: value}, "budget": {"train_images": .. (or "train_steps"),
    #: "batch_size": ..}}``; the command line's ``--set`` overrides these.
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {}

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

    def samplers(self) -> dict[str, Sampler]:
        """Named samplers, each evaluated and reported as its own row."""
        return {"default": self.sample}

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
    preset_values = model_class.presets.get(preset, {}).get("config", {})
    base = model_class.Config.from_dict(preset_values, where=f"{model_class.name} preset {preset}")
    return base.replace(overrides, where=model_class.name)
