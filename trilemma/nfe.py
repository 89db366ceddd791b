"""Network function evaluations (NFE), counted by the harness so that no plugin can under-count them.

Two independent counts. Forward hooks on the model's ``sampling_networks()`` count calls weighted
by batch size. Hooks can be bypassed (a network the plugin did not list, ``net.forward(x)`` called
directly, layers called one by one, a ``torch.jit.trace``/``torch.compile`` wrapper made at sample
time), so the sampler is also run once on a small untimed batch under
``torch.utils.flop_counter.FlopCounterMode``, which sees every aten op whatever Python path led to
it: its total FLOPs divided by the FLOPs of one hooked network pass give a second NFE. A row whose
two counts disagree is flagged with both figures; a sampler whose hooks count nothing never passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trilemma.flops import FlopCounter

#: Relative difference between the hook count and the FLOP-based count that still agrees.
NFE_TOLERANCE = 0.05


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def batch_items(args: tuple, kwargs: dict[str, Any]) -> int:
    """The batch size of a network call: the largest leading dimension among its tensor arguments,
    looking inside lists, tuples and dicts, so a timestep of shape (1,) or a 0-d tensor passed first,
    or a batch passed as a list of tensors, does not shrink it (1 if there is no tensor)."""
    sizes = [a.shape[0] for a in _tensors((args, kwargs)) if a.dim() > 0]
    return int(max(sizes, default=1))


class NFECounter:
    """Counts forward calls of the given networks, weighted by batch size.

    Only outermost calls count: a listed network called inside another listed network's forward
    is part of that evaluation. With ``flops`` (a callable returning the FLOPs counted so far), the
    FLOPs spent inside counted calls are summed too. ``per_sample(n)`` is the sum of the batch sizes
    of all calls divided by ``n``, so a sampler that runs its network k times on the whole batch
    (or on chunks of it) scores k.
    """

    def __init__(self, networks: Sequence[nn.Module], flops: Callable[[], int] | None = None) -> None:
        if not networks:
            raise ValueError("sampling_networks() returned no networks; NFE cannot be counted")
        self.networks = list(dict.fromkeys(networks))
        self.flops = flops
        self.items = 0
        self.calls = 0
        self.flops_in_calls = 0
        self._open: list[int] = []  # FLOPs counted when each open call began

    def _before(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not self._open:
            self.calls += 1
            self.items += batch_items(args, kwargs)
        self._open.append(self.flops() if self.flops else 0)

    def _after(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not self._open:
            return
        began = self._open.pop()
        if not self._open and self.flops:
            self.flops_in_calls += self.flops() - began

    @contextmanager
    def counting(self) -> Iterator[NFECounter]:
        handles = []
        for net in self.networks:
            handles.append(net.register_forward_pre_hook(self._before, with_kwargs=True))
            handles.append(net.register_forward_hook(self._after, with_kwargs=True, always_call=True))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self._open.clear()

    def per_sample(self, n: int) -> float:
        return self.items / n


@dataclass(frozen=True)
class NFECheck:
    """The two counts of one sampler on a probe batch, and the compute per sample."""

    hook_nfe: float  # forward calls of sampling_networks(), weighted by batch size, per sample
    flop_nfe: float  # the sampler's FLOPs / the FLOPs of one hooked network pass, per sample
    gflop_per_sample: float  # every FLOP the sampler did, per sample (matmul/conv/attention)
    probe_samples: int

    @property
    def agree(self) -> bool:
        return self.hook_nfe > 0 and math.isfinite(self.flop_nfe) and \
            abs(self.flop_nfe - self.hook_nfe) <= NFE_TOLERANCE * self.hook_nfe

    @property
    def verdict(self) -> str:
        return "agree" if self.agree else "mismatch"

    def describe(self) -> str:
        return (f"hooks count {self.hook_nfe:g} NFE, FLOPs imply {self.flop_nfe:.4g} "
                f"({self.gflop_per_sample:.4g} GFLOP/sample): {self.verdict}")


@torch.no_grad()
def check_nfe(networks: Sequence[nn.Module], sampler: Callable[[int, torch.Generator | None], Any], n: int,
              generator: torch.Generator | None = None) -> NFECheck:
    """Run ``sampler`` on ``n`` samples under a FLOP counter and forward hooks; both counts."""
    mode = FlopCounter()
    counter = NFECounter(networks, flops=mode.get_total_flops)
    with mode, counter.counting():
        sampler(n, generator)
    total = mode.get_total_flops()
    if counter.items and counter.flops_in_calls > 0:
        flop_nfe = total / (n * counter.flops_in_calls / counter.items)
    else:
        flop_nfe = math.inf if total > 0 else math.nan
    return NFECheck(counter.per_sample(n), flop_nfe, total / n / 1e9, n)


def check_model_samplers(model_class: type, preset: str = "smoke", channels: int | None = None,
                         n: int = 2) -> dict[str, NFECheck]:
    """Both NFE counts for every sampler of an untrained ``model_class`` at ``preset``'s config
    (NFE does not depend on training): what ``trilemma list`` shows."""
    from trilemma.model import resolve_config
    from trilemma.samplers import bind

    torch.manual_seed(0)
    model = model_class(resolve_config(model_class, preset, {}), channels=channels or model_class.data_channels[0])
    model.eval()
    generator = torch.Generator().manual_seed(0)
    return {name: check_nfe(model.sampling_networks(), sampler, n, generator)
            for name, (_, sampler) in bind(model, model_class.sampler_specs(preset)).items()}
