"""Samplers as declared specs, apart from the training config.

A model offers sampler *methods* (``GenerativeModel.sampler_methods()``: name → a function
``fn(n, generator, **params)``); which of them a run evaluates, and with which parameters, is a
list of ``SamplerSpec``s chosen at evaluation time (a preset's ``samplers``, ``--sampler``,
``trilemma eval``), as diffusers passes ``num_inference_steps`` and ``eta`` at call time rather
than keeping them in a scheduler's config. Changing or adding a sampler never changes what a
model is trained as, so it never retrains.

Each spec becomes one report row, named after its method and the parameters that differ from the
method's defaults (``steps`` always shown): ``ddim:steps=20,eta=1`` is the row ``ddim-20-eta1``.
"""

from __future__ import annotations

import inspect
import itertools
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from trilemma.errors import TrilemmaError
from trilemma.registry import check_name
from trilemma.values import coerce

Scalar = int | float | str | bool
#: A sampler bound to its parameters: ``sampler(n, generator)`` returns n images in [0, 1].
Sampler = Callable[[int, "torch.Generator | None"], torch.Tensor]
#: The parameter shown bare in a row name (``ddim-20``) and always shown, default or not.
PRIMARY = "steps"


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler method and its parameters, e.g. ``SamplerSpec.of("ddim", steps=20, eta=1.0)``,
    written ``ddim:steps=20,eta=1`` on the command line and in presets."""

    method: str
    params: tuple[tuple[str, Scalar], ...] = ()

    @classmethod
    def of(cls, method: str, **params: Scalar) -> SamplerSpec:
        return cls(method, tuple(params.items()))

    @classmethod
    def parse(cls, text: str | SamplerSpec) -> SamplerSpec:
        """``METHOD`` or ``METHOD:KEY=VALUE,KEY=VALUE``; values stay text until the method's
        annotations coerce them (``resolve``)."""
        if isinstance(text, SamplerSpec):
            return text
        if not isinstance(text, str):
            raise TrilemmaError(f"a sampler is METHOD or METHOD:KEY=VALUE,..., got {text!r}")
        method, _, rest = text.strip().partition(":")
        params: dict[str, str] = {}
        for item in (p for p in rest.split(",") if p.strip()):
            key, eq, value = item.partition("=")
            if not eq or not key.strip() or not value.strip():
                raise TrilemmaError(f"sampler {text!r}: {item!r} is not KEY=VALUE (e.g. ddim:steps=20,eta=1)")
            if key.strip() in params:
                raise TrilemmaError(f"sampler {text!r}: {key.strip()} given twice")
            params[key.strip()] = value.strip()
        if not method:
            raise TrilemmaError(f"sampler {text!r}: no method name (e.g. ddim:steps=20)")
        return cls(method, tuple(params.items()))

    @property
    def values(self) -> dict[str, Scalar]:
        return dict(self.params)

    @property
    def name(self) -> str:
        """The report row's name: the method, then each parameter (``steps`` bare, others as
        key and value), in the order the spec holds them."""
        parts = [self.method]
        for key, value in self.params:
            shown = f"{value:g}" if isinstance(value, float) else str(value).lower()
            parts.append(shown if key == PRIMARY else f"{key}{shown}")
        return "-".join(parts)

    def __str__(self) -> str:
        if not self.params:
            return self.method
        return self.method + ":" + ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in self.params)


def grid(method: str, **params: Scalar | Sequence[Scalar]) -> tuple[SamplerSpec, ...]:
    """Every combination of the given values: ``grid("ddim", steps=(50, 20), eta=(0.0, 1.0))`` is
    four specs (the last parameter varies fastest)."""
    names = list(params)
    choices = [list(v) if isinstance(v, (list, tuple)) else [v] for v in params.values()]
    return tuple(SamplerSpec(method, tuple(zip(names, combo, strict=True))) for combo in itertools.product(*choices))


def specs(items: Iterable[str | SamplerSpec | Iterable[SamplerSpec]]) -> tuple[SamplerSpec, ...]:
    """A flat tuple of specs from strings, specs and ``grid`` results."""
    found: list[SamplerSpec] = []
    for item in items:
        if isinstance(item, (str, SamplerSpec)):
            found.append(SamplerSpec.parse(item))
        else:
            found.extend(SamplerSpec.parse(i) for i in item)
    return tuple(found)


def _parameters(method: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The method's keyword parameters beyond ``(n, generator)``; those a ``functools.partial``
    fixed (``partial(self.integrate, method="euler")``) are not the spec's to set."""
    fixed = set(method.keywords) if isinstance(method, partial) else set()
    found = list(inspect.signature(method).parameters.values())
    return {p.name: p for p in found[2:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in fixed}


def _annotation(method: Callable[..., Any], name: str, parameter: inspect.Parameter) -> Any:
    target = getattr(method, "func", method)  # a functools.partial's function
    try:
        hints = typing.get_type_hints(target)
    except Exception:
        hints = {}
    annotation = hints.get(name, parameter.annotation)
    if annotation is inspect.Parameter.empty:
        default = parameter.default
        return type(default) if default is not inspect.Parameter.empty and default is not None else str
    return annotation


def resolve(spec: SamplerSpec, methods: Mapping[str, Callable[..., Any]], owner: str = "") -> SamplerSpec:
    """The canonical spec: values coerced to the method's annotated types, ordered as the method
    declares them, defaults dropped (``steps`` kept); a ``TrilemmaError`` names what is valid for
    an unknown method, an unknown or missing parameter or a bad value."""
    where = f"{owner + ': ' if owner else ''}sampler {spec}"
    if spec.method not in methods:
        raise TrilemmaError(f"{where}: unknown method {spec.method!r}; valid: {', '.join(methods) or 'none'}")
    method = methods[spec.method]
    parameters = _parameters(method)
    given = spec.values
    unknown = sorted(set(given) - set(parameters))
    if unknown:
        valid = ", ".join(f"{n}={p.default!r}" if p.default is not p.empty else n for n, p in parameters.items())
        raise TrilemmaError(f"{where}: unknown parameter(s) {', '.join(unknown)}; {spec.method} takes "
                            f"{valid or 'none'}")
    resolved: list[tuple[str, Scalar]] = []
    for name, parameter in parameters.items():
        if name not in given:
            if parameter.default is parameter.empty:
                raise TrilemmaError(f"{where}: {spec.method} needs {name}= (e.g. {spec.method}:{name}=...)")
            if name == PRIMARY:
                resolved.append((name, parameter.default))
            continue
        value = coerce(given[name], _annotation(method, name, parameter), f"{where}: {name}")
        if name == PRIMARY or parameter.default is parameter.empty or value != parameter.default:
            resolved.append((name, value))
    return SamplerSpec(spec.method, tuple(resolved))


def bind(model: Any, chosen: Iterable[SamplerSpec]) -> dict[str, tuple[SamplerSpec, Sampler]]:
    """The model's samplers for ``chosen``: row name → (canonical spec, ``sampler(n, generator)``).
    Two specs that come to the same sampler, or a row name a file cannot carry, are refused."""
    methods = model.sampler_methods()
    if not isinstance(methods, Mapping) or not methods:
        raise TypeError(f"sampler_methods() must return a non-empty dict of name → function, got "
                        f"{type(methods).__name__}")
    bound: dict[str, tuple[SamplerSpec, Sampler]] = {}
    for spec in chosen:
        canonical = resolve(spec, methods, model.name)
        name = canonical.name
        try:
            check_name(name, "sampler", model.name)
        except Exception as exc:
            raise TrilemmaError(str(exc)) from None
        if name in bound:
            raise TrilemmaError(f"{model.name}: samplers {bound[name][0]} and {spec} are the same sampler ({name})")
        if not callable(methods[canonical.method]):
            raise TypeError(f"sampler method {canonical.method!r} is not callable")
        bound[name] = (canonical, partial(methods[canonical.method], **canonical.values))
    return bound
