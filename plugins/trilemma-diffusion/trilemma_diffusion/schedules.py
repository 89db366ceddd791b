"""Noise schedules β_1..β_T (float64), the four of the DDPM notes.

Linear, quadratic and sigmoid span Ho et al.'s 1e-4 → 0.02 over 1000 steps, rescaled by 1000/T for
other T so that ᾱ_T stays about the same (clipped at 0.999 for very small T); cosine is Nichol &
Dhariwal (2021, eq. 17).
"""

from __future__ import annotations

import math

import torch

BETA_START, BETA_END = 1e-4, 0.02


def _range(timesteps: int) -> tuple[float, float]:
    scale = 1000 / timesteps
    return scale * BETA_START, scale * BETA_END


def linear_betas(timesteps: int) -> torch.Tensor:
    """Ho et al. (2020): evenly spaced β."""
    start, end = _range(timesteps)
    return torch.linspace(start, end, timesteps, dtype=torch.float64).clamp(max=0.999)


def quadratic_betas(timesteps: int) -> torch.Tensor:
    """Evenly spaced √β, squared: smaller β early than linear."""
    start, end = _range(timesteps)
    return (torch.linspace(start**0.5, end**0.5, timesteps, dtype=torch.float64) ** 2).clamp(max=0.999)


def sigmoid_betas(timesteps: int) -> torch.Tensor:
    """β following a sigmoid over [−6, 6] between the two ends: flat at both ends."""
    start, end = _range(timesteps)
    return (torch.sigmoid(torch.linspace(-6, 6, timesteps, dtype=torch.float64)) * (end - start) + start).clamp(max=0.999)


def cosine_betas(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """ᾱ_t = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s))·π/2); β_t clipped at 0.999."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=0.999)


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas, "quadratic": quadratic_betas, "sigmoid": sigmoid_betas}
