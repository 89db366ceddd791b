"""Samplers for a trained denoiser, each one network evaluation per ``predict`` call.

``predict(x_t, t, abar)`` evaluates the network at timestep ``t`` (a float for Heun) on x_t at
noise level ᾱ and returns (x̂_0, ε̂); the model behind it decides its objective, clipping and
self-conditioning. All samplers start from x_T ~ N(0, I) and return x̂ on the data scale [−1, 1].

- ``ancestral``: Ho et al. (2020), Algorithm 2, T evaluations.
- ``ddim``: Song et al. (2021), eq. 12, k evaluations, η = 0 deterministic, η = 1 DDPM-like.
- ``dpm_solver_pp_2m``: DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in data prediction with
  the midpoint form of diffusers, first order at the first and last steps, k evaluations.
- ``heun``: Karras et al. (2022), Algorithm 1 with S_churn = 0, in EDM's σ space on the discrete
  schedule, 2k − 1 evaluations (the last step is Euler).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from trilemma_diffusion.gaussian import GaussianDiffusion, Spacing

Predict = Callable[[torch.Tensor, float, float], tuple[torch.Tensor, torch.Tensor]]


def _noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=device)


def ancestral(d: GaussianDiffusion, predict: Predict, shape: tuple[int, ...], generator: torch.Generator | None,
              device: torch.device) -> torch.Tensor:
    x = _noise(shape, generator, device)
    for t in reversed(range(d.timesteps)):
        noise = _noise(shape, generator, device) if t > 0 else None
        x0, _ = predict(x, float(t), d.abar(t))
        x = d.ddpm_step(x, x0, t, noise)
    return x


def ddim(d: GaussianDiffusion, predict: Predict, shape: tuple[int, ...], generator: torch.Generator | None,
         device: torch.device, steps: int, eta: float = 0.0, spacing: Spacing = "leading") -> torch.Tensor:
    x = _noise(shape, generator, device)
    times = d.spaced(steps, spacing)
    for i, t in enumerate(times):
        t_prev = times[i + 1] if i + 1 < len(times) else -1
        noise = _noise(shape, generator, device) if eta > 0 else None
        x0, eps = predict(x, float(t), d.abar(t))
        x = d.ddim_step(x, x0, eps, t, t_prev, eta, noise)
    return x


def dpm_solver_pp_2m(d: GaussianDiffusion, predict: Predict, shape: tuple[int, ...],
                     generator: torch.Generator | None, device: torch.device, steps: int,
                     spacing: Spacing = "linspace") -> torch.Tensor:
    """With α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), λ = log(α/σ), h = λ_t − λ_s:
    first order x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D_s; second order adds
    −½ α_t (e^{−h} − 1) (D_s − D_{s'})·h/h', where D is the data prediction x̂_0."""
    x = _noise(shape, generator, device)
    times = d.spaced(steps, spacing)
    previous: tuple[torch.Tensor, float] | None = None  # (D, λ) of the last step
    for i, t in enumerate(times):
        abar_s = d.abar(t)
        abar_t = d.abar(times[i + 1]) if i + 1 < len(times) else 1.0
        data, _ = predict(x, float(t), abar_s)
        alpha_s, sigma_s = math.sqrt(abar_s), math.sqrt(1 - abar_s)
        lambda_s = math.log(alpha_s / sigma_s)
        if abar_t >= 1.0:  # the last step lands on σ = 0: x_0 = D
            x = data
            break
        alpha_t, sigma_t = math.sqrt(abar_t), math.sqrt(1 - abar_t)
        h = math.log(alpha_t / sigma_t) - lambda_s
        update = data
        if previous is not None:
            r = (lambda_s - previous[1]) / h
            update = data + 0.5 * (data - previous[0]) / r
        x = (sigma_t / sigma_s) * x - alpha_t * math.expm1(-h) * update
        previous = (data, lambda_s)
    return x


def heun(d: GaussianDiffusion, predict: Predict, shape: tuple[int, ...], generator: torch.Generator | None,
         device: torch.device, steps: int, spacing: Spacing = "linspace") -> torch.Tensor:
    """In EDM space x̃ = x_t/√ᾱ_t = x_0 + σ_t ε: dx̃/dσ = (x̃ − D(x̃; σ))/σ. The timesteps are those
    of ``spacing`` (fractional for linspace), σ interpolated in the schedule's table."""
    if spacing == "linspace":
        times = torch.linspace(0, d.timesteps - 1, steps, dtype=torch.float64).flip(0).tolist()
    else:
        times = [float(t) for t in d.spaced(steps, spacing)]
    sigmas = [d.sigma_at(t) for t in times] + [0.0]
    x = _noise(shape, generator, device) * math.sqrt(sigmas[0] ** 2 + 1)  # x̃_T at σ_max

    def denoise(x_tilde: torch.Tensor, t: float, sigma: float) -> torch.Tensor:
        abar = 1 / (sigma**2 + 1)
        return predict(x_tilde * math.sqrt(abar), t, abar)[0]

    for i, t in enumerate(times):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        derivative = (x - denoise(x, t, sigma)) / sigma
        x_next = x + (sigma_next - sigma) * derivative
        if sigma_next > 0:
            derivative_next = (x_next - denoise(x_next, times[i + 1], sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma) * (derivative + derivative_next) / 2
        x = x_next
    return x
