"""Values from the command line or a preset, coerced to the type a dataclass field or a sampler
parameter declares."""

from __future__ import annotations

import types
import typing
from typing import Any, Union

from trilemma.errors import TrilemmaError


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
