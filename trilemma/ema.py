"""An exponential moving average of a network's weights, the copy most generative models sample with."""

from __future__ import annotations

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
