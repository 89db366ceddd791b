"""Fixed-step integration of a probability-flow or flow-matching ODE dx/dt = v(x, t)."""

from __future__ import annotations

from collections.abc import Callable

import torch

Field = Callable[[torch.Tensor, float], torch.Tensor]
METHODS = ("euler", "midpoint")


def integrate_ode(field: Field, x: torch.Tensor, steps: int, method: str = "euler", start: float = 0.0,
                  end: float = 1.0) -> torch.Tensor:
    """``x`` carried from ``start`` to ``end`` in ``steps`` equal steps of Euler's rule (one evaluation
    of ``field`` a step) or the explicit midpoint rule x + h·v(x + h/2·v(x, t), t + h/2) (two)."""
    if method not in METHODS:
        raise ValueError(f"unknown ODE method {method!r}; valid: {', '.join(METHODS)}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    h = (end - start) / steps
    for i in range(steps):
        t = start + i * h
        if method == "euler":
            x = x + h * field(x, t)
        else:
            x = x + h * field(x + h / 2 * field(x, t), t + h / 2)
    return x
