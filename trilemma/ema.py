"""An exponential moving average of a network's weights, the copy most generative models sample with."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, updates: int) -> None:
    """ema ← d·ema + (1 − d)·model with d = min(decay, (1 + n)/(10 + n)) after n updates: the
    warm-up lets early averages forget the random initialisation quickly. Buffers are copied."""
    d = min(decay, (1 + updates) / (10 + updates))
    for ema_p, p in zip(ema.parameters(), model.parameters(), strict=True):
        ema_p.lerp_(p, 1 - d)
    for ema_b, b in zip(ema.buffers(), model.buffers(), strict=True):
        ema_b.copy_(b)


class EMA(nn.Module):
    """A frozen moving average of ``network`` that is called like it: ``ema.update(network)`` after each
    optimizer step; the number of updates is a buffer, so it survives a checkpoint."""

    def __init__(self, network: nn.Module, decay: float) -> None:
        super().__init__()
        self.average = copy.deepcopy(network).requires_grad_(False)
        self.decay = decay
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    updates: torch.Tensor

    def update(self, network: nn.Module) -> None:
        self.updates += 1
        update_ema(self.average, network, self.decay, int(self.updates))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.average(*args, **kwargs)
