"""Watching a model's parameters while it samples: which ones the draw used, and whether any left torch.

``ParameterWatch`` is a ``TorchFunctionMode``: it sees every torch function and ``Tensor`` method
called in Python, whatever module or path called it. A parameter passed to one is *used* (so
``sampling_params`` counts the weights the draw really touched, not what ``sampling_networks()``
says at another time). A parameter, or a tensor holding its values (made by ``detach``, ``.data``,
``clone``, ``to``, ``view``, a slice...), handed to ``numpy``, ``tolist``, ``__array__`` or
``__dlpack__`` has *left torch*: work done on it afterwards (a network pass multiplied in numpy,
say) is invisible to the FLOP counter, so the row is flagged.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

#: Tensor methods that hand a tensor's values to code outside torch.
LEAVING_TORCH = frozenset({"numpy", "tolist", "__array__", "__dlpack__"})
#: Calls whose result holds (some of) a tensor's values unchanged: a copy, a view, a conversion,
#: a slice. What they make from a parameter is watched as the parameter is.
CARRIES_VALUES = frozenset({
    "__get__", "detach", "clone", "cpu", "cuda", "to", "type", "contiguous", "float", "double", "half", "bfloat16",
    "view", "view_as", "reshape", "reshape_as", "flatten", "ravel", "t", "transpose", "permute", "squeeze",
    "unsqueeze", "expand", "expand_as", "__getitem__", "select", "narrow", "split", "chunk", "unbind",
    "requires_grad_", "detach_", "movedim", "flip", "unflatten", "as_strided"})
#: Calls that read what a tensor is, not its values (attribute getters such as ``.device`` are
#: ``__get__``): they do not make a parameter *used*.
METADATA = frozenset({"__get__", "size", "dim", "numel", "element_size", "is_floating_point", "is_complex",
                      "get_device", "__len__", "__hash__", "__format__", "__repr__"})


def tensors_in(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in ``value``, looking inside lists, tuples and dicts."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors_in(item)


class ParameterWatch(TorchFunctionMode):
    """Records which of ``modules``' parameters torch functions receive, and which leave torch."""

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        super().__init__()
        self.parameters: dict[int, tuple[str, torch.Tensor]] = {}
        for module in modules:
            for name, parameter in module.named_parameters():
                self.parameters.setdefault(id(parameter), (name, parameter))
        self.used: set[int] = set()
        self.left: set[str] = set()
        self._derived: dict[int, tuple[int, weakref.ref]] = {}  # tensor id → (parameter key, the tensor)

    def _parameter(self, tensor: torch.Tensor) -> int | None:
        """The key of the watched parameter ``tensor`` is, or holds the values of (None if none)."""
        key = id(tensor)
        if key in self.parameters and self.parameters[key][1] is tensor:
            return key
        derived = self._derived.get(key)
        if derived is not None and derived[1]() is tensor:
            return derived[0]
        return None

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        found = [key for key in map(self._parameter, tensors_in((args, kwargs))) if key is not None]
        out = func(*args, **kwargs)
        if not found:
            return out
        if name in LEAVING_TORCH:
            self.left.update(self.parameters[key][0] for key in found)
        elif name in CARRIES_VALUES:
            if len(self._derived) > 4096:  # forget the tensors that are gone
                self._derived = {k: v for k, v in self._derived.items() if v[1]() is not None}
            for tensor in tensors_in(out):
                self._derived[id(tensor)] = (found[0], weakref.ref(tensor))
        elif name not in METADATA:
            self.used.update(found)
        return out

    @property
    def used_parameters(self) -> int:
        """Elements of the watched parameters that the watched code passed to a torch function."""
        return sum(self.parameters[key][1].numel() for key in self.used)
