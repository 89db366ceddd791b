"""Network function evaluations (NFE), counted by the harness over the draw that is scored.

Every batch of the scored samples is drawn under three watchers at once, so nothing distinguishes
counted from uncounted work:

* forward hooks on the model's ``sampling_networks()`` count evaluations: every call of a listed
  network that contains no call of another listed network (so a listed wrapper that evaluates a
  listed network eight times counts eight), weighted by its batch (the largest leading dimension
  of its tensor arguments);
* ``torch.utils.flop_counter`` (``trilemma.flops.FlopCounter``) sees every matmul, convolution and
  attention op, whatever Python path led there; the FLOPs inside each counted call give each
  network's cost of one item (the least over its calls), and the draw's FLOPs over the cost of the
  counted items give a second NFE. A batch hidden behind a leading dimension of 1, a ``vmap``, or
  passes through unlisted networks, direct ``forward`` calls or traced wrappers raise it;
* ``ParameterWatch`` records the parameters the draw used (``sampling_params``) and any that left
  torch (``numpy``, ``tolist``...), whose work the FLOP counter cannot see.

The last sample is drawn alone: NFE per sample is a property of a sampler, not of a batch size, so a
count that differs between one sample and a full batch (a sampler that packs its batch into one
"item" and pads small batches, say) is flagged and the larger reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from trilemma.flops import FlopCounter
from trilemma.watch import ParameterWatch, tensors_in

if TYPE_CHECKING:
    from trilemma.model import GenerativeModel

#: Relative difference between two NFE counts of one sampler that still agrees.
NFE_TOLERANCE = 0.05
#: Below this share of distinct (not bit-identical) samples a draw is flagged: a model with
#: continuous outputs practically never repeats an image exactly; one that returns copies makes
#: each distinct sample cost more than its per-sample count says.
DISTINCT_SHARE = 0.99


def batch_items(args: tuple, kwargs: dict[str, Any]) -> int:
    """The batch size of a network call: the largest leading dimension among its tensor arguments,
    looking inside lists, tuples and dicts, so a timestep of shape (1,) or a 0-d tensor passed first,
    or a batch passed as a list of tensors, does not shrink it (1 if there is no tensor)."""
    sizes = [a.shape[0] for a in tensors_in((args, kwargs)) if a.dim() > 0]
    return int(max(sizes, default=1))


@dataclass
class NetworkTally:
    """One listed network's counted calls: items (batch-weighted), the FLOPs inside them, and the
    least FLOPs per item of any call (its cost of one evaluation of one sample)."""

    items: int = 0
    flops: int = 0
    flops_per_item: float = math.inf


class NFECounter:
    """Counts evaluations of ``networks`` through forward hooks, weighted by batch size.

    A call counts unless another listed network is called inside it (then the inner calls are the
    evaluations). With ``flops`` (a callable returning the FLOPs counted so far) each counted call's
    FLOPs are tallied per network. ``per_sample(n)`` is the counted items over ``n``: a sampler that
    runs its network k times on the whole batch (or on chunks of it) scores k.
    """

    def __init__(self, networks: Sequence[nn.Module], flops: Callable[[], int] | None = None) -> None:
        if not networks:
            raise ValueError("sampling_networks() returned no networks; NFE cannot be counted")
        self.networks = list(dict.fromkeys(networks))
        self.flops = flops
        self.tallies = {id(net): NetworkTally() for net in self.networks}
        self.calls = 0
        self._open: list[list[Any]] = []  # [network id, items, FLOPs when it began, has a listed call inside]

    @property
    def items(self) -> int:
        return sum(tally.items for tally in self.tallies.values())

    def _before(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._open:
            self._open[-1][3] = True
        self._open.append([id(module), batch_items(args, kwargs), self.flops() if self.flops else 0, False])

    def _after(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not self._open:
            return
        key, items, began, nested = self._open.pop()
        if nested:
            return
        tally = self.tallies[key]
        self.calls += 1
        tally.items += items
        if self.flops:
            spent = self.flops() - began
            tally.flops += spent
            if spent > 0:
                tally.flops_per_item = min(tally.flops_per_item, spent / items)

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

    def pass_flops(self) -> float:
        """The FLOPs the counted items would cost at each network's cost of one item."""
        return sum(t.items * t.flops_per_item for t in self.tallies.values() if t.items and math.isfinite(t.flops_per_item))

    def called(self) -> list[nn.Module]:
        return [net for net in self.networks if self.tallies[id(net)].items]


def _differ(a: float, b: float) -> bool:
    return abs(a - b) > NFE_TOLERANCE * max(abs(a), abs(b))


@dataclass(frozen=True)
class NFECheck:
    """What counting a draw found: both NFE counts, the count when one sample is drawn alone, the
    compute per sample, the share of distinct samples, and the parameters used or leaked."""

    hook_nfe: float  # counted calls of sampling_networks(), weighted by batch size, per sample
    flop_nfe: float  # the draw's FLOPs / the FLOPs of the counted items at one item's cost, per sample
    gflop_per_sample: float  # every matmul/conv/attention FLOP of the draw, per sample
    samples: int
    batch1_nfe: float = math.nan  # hook count of the one sample drawn alone
    batch_nfe: float = math.nan  # hook count per sample of the other batches
    distinct_share: float = 1.0
    sampling_params: int = 0  # elements of the parameters the draw used
    weights_left: tuple[str, ...] = ()  # parameters whose values were handed out of torch

    @property
    def agree(self) -> bool:
        return self.hook_nfe > 0 and math.isfinite(self.flop_nfe) and not _differ(self.flop_nfe, self.hook_nfe)

    @property
    def verdict(self) -> str:
        return "agree" if self.agree else "mismatch"

    @property
    def batch_dependent(self) -> bool:
        return math.isfinite(self.batch1_nfe) and math.isfinite(self.batch_nfe) and _differ(self.batch1_nfe, self.batch_nfe)

    @property
    def flags(self) -> tuple[str, ...]:
        """What makes this count doubtful beyond a hooks/FLOPs mismatch, in words a row can hold."""
        found = []
        if self.batch_dependent:
            found.append("batch-dependent")
        if self.weights_left:
            found.append("weights-left-torch")
        if self.distinct_share < DISTINCT_SHARE:
            found.append("duplicates")
        return tuple(found)

    @property
    def nfe(self) -> float:
        """The NFE a row reports: the hook count where the FLOPs agree with it, else the larger (never
        an under-count); per distinct sample; the count of one sample alone where that is larger."""
        drawn = self.hook_nfe if self.agree or not math.isfinite(self.flop_nfe) else max(self.hook_nfe, self.flop_nfe)
        if self.distinct_share < DISTINCT_SHARE:
            drawn /= self.distinct_share
        return max(drawn, self.batch1_nfe) if self.batch_dependent else drawn

    def describe(self) -> str:
        flags = f"; flagged: {', '.join(self.flags)}" if self.flags else ""
        return (f"hooks count {self.hook_nfe:g} NFE, FLOPs imply {self.flop_nfe:.4g} "
                f"({self.gflop_per_sample:.4g} GFLOP/sample): {self.verdict}{flags}")


def draw_batches(n: int, batch_size: int) -> list[int]:
    """The batch sizes of a counted draw of ``n`` samples: ``n - 1`` in batches of ``batch_size``,
    then the last sample alone."""
    if n <= 1:
        return [n]
    rest = n - 1
    return [min(batch_size, rest - begin) for begin in range(0, rest, batch_size)] + [1]


@dataclass
class DrawCounter:
    """Counts a draw of ``model``'s samples: enter ``counting()`` and make each sampler call through
    ``call``; ``result`` says what was counted."""

    model: GenerativeModel
    networks: list[nn.Module] = field(init=False)
    batches: list[tuple[int, int]] = field(default_factory=list)  # (samples, counted items) per call

    def __post_init__(self) -> None:
        self.networks = list(self.model.sampling_networks())
        self.flop_mode = FlopCounter()
        self.counter = NFECounter(self.networks, flops=self.flop_mode.get_total_flops)
        self.watch = ParameterWatch([self.model, *self.networks])

    @contextmanager
    def counting(self) -> Iterator[DrawCounter]:
        with self.flop_mode, self.watch, self.counter.counting():
            yield self

    def call(self, sampler: Callable[[int, Any], Any], size: int, generator: Any) -> Any:
        before = self.counter.items
        out = sampler(size, generator)
        self.batches.append((size, self.counter.items - before))
        return out

    def result(self, distinct_share: float = 1.0) -> NFECheck:
        n = sum(size for size, _ in self.batches)
        total = self.flop_mode.get_total_flops()
        expected = self.counter.pass_flops()
        items = self.counter.items
        if expected > 0:
            flop_nfe = total * items / (n * expected)
        else:
            flop_nfe = math.inf if total > 0 else math.nan
        alone = [counted for size, counted in self.batches if size == 1]
        others = [(size, counted) for size, counted in self.batches if size > 1]
        batch1 = sum(alone) / len(alone) if alone and others else math.nan
        batch = sum(c for _, c in others) / sum(s for s, _ in others) if alone and others else math.nan
        used = {key: self.watch.parameters[key][1] for key in self.watch.used}
        for net in self.counter.called():
            used.update((id(p), p) for p in net.parameters())
        return NFECheck(self.counter.per_sample(n), flop_nfe, total / n / 1e9, n, batch1, batch, distinct_share,
                        sum(p.numel() for p in used.values()), tuple(sorted(self.watch.left)))

