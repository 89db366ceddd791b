"""The Gaussian diffusion maths (Ho, Jain & Abbeel 2020), in float64 constants.

Forward process q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I), timesteps 0-based (index t is Ho's t + 1).
A network predicts one of three things (``Objective``): the noise ε (Ho et al.), the clean image
x_0, or the velocity v = √ᾱ ε − √(1 − ᾱ) x_0 (Salimans & Ho 2022, §4); ``predicted`` turns any of
them into the pair (x̂_0, ε̂). ``Weighting`` weights the objective's squared error per timestep:
uniform, P2 (Choi et al. 2022, eq. 8: (k + SNR)^−γ on the ε-loss, converted to the objective's) or
min-SNR-γ (Hang et al. 2023, §3.3: the weight that makes the x_0-space weight min(SNR, γ)).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

Objective = Literal["eps", "x0", "v"]
Weighting = Literal["uniform", "p2", "min_snr"]
Spacing = Literal["leading", "trailing", "linspace"]


def log_bin_mass(upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """log(Φ(upper) − Φ(lower)) for upper > lower, in log space: where the bin lies above the mean
    it is reflected (Φ(u) − Φ(l) = Φ(−l) − Φ(−u)), so both CDFs are of non-positive arguments, and
    log(Φ(a) − Φ(b)) = log Φ(a) + log(1 − e^{log Φ(b) − log Φ(a)}) (log1mexp, Mächler 2012)."""
    reflect = lower > 0
    a = torch.where(reflect, -lower, upper)
    b = torch.where(reflect, -upper, lower)
    log_a, log_b = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    gap = (log_b - log_a).clamp(max=0)  # ≤ 0; 0 only for an empty bin
    log1mexp = torch.where(gap > -math.log(2), torch.log(-torch.expm1(gap)), torch.log1p(-torch.exp(gap)))
    return log_a + log1mexp


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: float) -> torch.Tensor:
    """log P(x) per pixel for x on the 256-level grid of [−1, 1] under N(mean, e^{2·log_scale})
    integrated over the pixel's bin of width 2/255; the end bins reach to ±∞ (Ho et al., eq. 13).
    Computed in log space throughout, so a pixel many standard deviations from the mean gets its
    true (very negative) log-mass, not a floor."""
    centered = (x - mean).double()
    inv_std = math.exp(-log_scale)
    upper = (centered + 1 / 255) * inv_std
    lower = (centered - 1 / 255) * inv_std
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_one_minus_cdf_lower = torch.special.log_ndtr(-lower)
    log_mass = log_bin_mass(upper, lower)
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_one_minus_cdf_lower, log_mass))


class GaussianDiffusion:
    """Schedule constants, the objectives, the posterior and the variational bound."""

    def __init__(self, betas: torch.Tensor) -> None:
        self.betas = betas.double()
        self.timesteps = len(betas)
        self.alphas = 1 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        # Posterior q(x_{t-1} | x_t, x_0) = N(c0·x_0 + ct·x_t, β̃_t) (Ho et al., eq. 7).
        self.posterior_variance = self.betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        self.posterior_c0 = self.betas * self.alphas_cumprod_prev.sqrt() / (1 - self.alphas_cumprod)
        self.posterior_ct = (1 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1 - self.alphas_cumprod)
        # EDM's noise level σ_t = √((1 − ᾱ_t)/ᾱ_t) (Karras et al. 2022, Table 1, VP).
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()

    # --- constants ----------------------------------------------------------------------------
    def abar(self, t: int) -> float:
        """ᾱ_t as a float; ᾱ = 1 for t < 0 (the end of a chain)."""
        return float(self.alphas_cumprod[t]) if t >= 0 else 1.0

    def sigma_at(self, t: float) -> float:
        """σ at a fractional timestep, interpolated linearly in the table (as diffusers does)."""
        low = min(int(math.floor(t)), self.timesteps - 1)
        high = min(low + 1, self.timesteps - 1)
        frac = t - low
        return float((1 - frac) * self.sigmas[low] + frac * self.sigmas[high])

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ_t / (1 − ᾱ_t) for a batch of timesteps (float64)."""
        abar = self.alphas_cumprod.to(t.device)[t]
        return abar / (1 - abar)

    def spaced(self, steps: int, spacing: Spacing) -> list[int]:
        """``steps`` timesteps, descending, as diffusers' DDIM spaces them (Lin et al. 2024, Table 2):
        ``leading`` 0, T/k, 2T/k, …; ``trailing`` T−1, T−1−T/k, …; ``linspace`` evenly over [0, T−1]."""
        T = self.timesteps
        if not 1 <= steps <= T:
            raise ValueError(f"steps must be in 1..{T}, got {steps}")
        if spacing == "leading":
            stride = T // steps
            return list(range(0, steps * stride, stride))[::-1]
        if spacing == "trailing":
            ratio = T / steps
            return [int(round(T - i * ratio)) - 1 for i in range(steps)]
        if spacing == "linspace":
            return [int(round(v)) for v in torch.linspace(0, T - 1, steps, dtype=torch.float64).tolist()][::-1]
        raise ValueError(f"unknown spacing {spacing!r}; valid: leading, trailing, linspace")

    # --- the forward process and the objectives ----------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, for a batch of timesteps ``t``."""
        abar = self.alphas_cumprod.to(x0.device)[t].view(-1, 1, 1, 1)
        return (abar.sqrt() * x0 + (1 - abar).sqrt() * noise).to(x0.dtype)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, objective: Objective) -> torch.Tensor:
        """What the network regresses for ``objective``."""
        if objective == "eps":
            return noise
        if objective == "x0":
            return x0
        abar = self.alphas_cumprod.to(x0.device)[t].view(-1, 1, 1, 1)
        return (abar.sqrt() * noise - (1 - abar).sqrt() * x0).to(x0.dtype)

    def loss_weights(self, t: torch.Tensor, objective: Objective, weighting: Weighting, p2_k: float = 1.0,
                     p2_gamma: float = 1.0, min_snr_gamma: float = 5.0) -> torch.Tensor:
        """Per-sample weights of the objective's squared error. Each weighting is defined in one space
        and converted to the objective's with ‖ε − ε̂‖² = SNR·‖x₀ − x̂₀‖² = ᾱ·‖v − v̂‖²: P2 on the
        ε-loss (Choi et al. 2022, eq. 8), min-SNR-γ on the x₀-loss (Hang et al. 2023)."""
        if weighting == "uniform":
            return torch.ones(len(t), device=t.device)
        snr = self.snr(t)
        if weighting == "p2":
            eps_weight = (p2_k + snr) ** -p2_gamma
            return {"eps": eps_weight, "x0": snr * eps_weight, "v": snr / (snr + 1) * eps_weight}[objective].float()
        if weighting == "min_snr":
            clipped = snr.clamp(max=min_snr_gamma)
            return {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}[objective].float()
        raise ValueError(f"unknown weighting {weighting!r}; valid: uniform, p2, min_snr")

    @staticmethod
    def predicted(x_t: torch.Tensor, output: torch.Tensor, abar: float, objective: Objective,
                  clip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂_0, ε̂) from the network's ``output`` at a noise level ᾱ. With ``clip``, x̂_0 is clipped to
        [−1, 1] and ε̂ recomputed to agree with it (diffusers' ``use_clipped_model_output``)."""
        a, s = math.sqrt(abar), math.sqrt(1 - abar)
        if objective == "eps":
            x0, eps = (x_t - s * output) / a, output
        elif objective == "x0":
            x0, eps = output, (x_t - a * output) / s
        elif objective == "v":
            x0, eps = a * x_t - s * output, s * x_t + a * output
        else:
            raise ValueError(f"unknown objective {objective!r}; valid: eps, x0, v")
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = (x_t - a * x0) / s
        return x0, eps

    # --- the reverse process -----------------------------------------------------------------------
    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t: int) -> torch.Tensor:
        return float(self.posterior_c0[t]) * x0 + float(self.posterior_ct[t]) * x_t

    def ddpm_step(self, x_t: torch.Tensor, x0: torch.Tensor, t: int, noise: torch.Tensor | None) -> torch.Tensor:
        """x_{t−1} ~ q(x_{t−1} | x_t, x̂_0), variance β̃_t (Ho et al., Algorithm 2 through eq. 7); no noise at t = 0."""
        mean = self.posterior_mean(x0, x_t, t)
        if t == 0 or noise is None:
            return mean
        return mean + math.sqrt(float(self.posterior_variance[t])) * noise

    def ddim_step(self, x_t: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, eta: float,
                  noise: torch.Tensor | None) -> torch.Tensor:
        """Song, Meng & Ermon (2021), eq. 12: x_{t'} = √ᾱ_{t'} x̂_0 + √(1 − ᾱ_{t'} − σ²) ε̂ + σ z with
        σ = η √((1 − ᾱ_{t'})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t'}); ᾱ_{t'} = 1 when t' < 0."""
        abar, abar_prev = self.abar(t), self.abar(t_prev)
        sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
        x_prev = math.sqrt(abar_prev) * x0 + math.sqrt(max(0.0, 1 - abar_prev - sigma**2)) * eps
        if eta > 0 and noise is not None:
            x_prev = x_prev + sigma * noise
        return x_prev

    def posterior_sample(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                         noise: torch.Tensor) -> torch.Tensor:
        """x_{t-1} ~ q(x_{t-1} | x_t, x_0) for a batch of timesteps ``t``."""
        def at(values: torch.Tensor) -> torch.Tensor:
            return values.to(x0.device)[t].view(-1, 1, 1, 1).to(x0.dtype)

        mean = at(self.posterior_c0) * x0 + at(self.posterior_ct) * x_t
        return mean + at(self.posterior_variance).sqrt() * noise

    # --- the variational bound ------------------------------------------------------------------
    def prior_kl(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) ‖ N(0, I)) per image, in nats (Ho et al., eq. 5)."""
        abar = float(self.alphas_cumprod[-1])
        kl = 0.5 * (abar * x0.double().square() + (1 - abar) - 1 - math.log(1 - abar))
        return kl.flatten(1).sum(1)

    def vlb(self, network: nn.Module, x0: torch.Tensor, objective: Objective = "eps",
            generator: torch.Generator | None = None) -> torch.Tensor:
        """The variational bound −log p(x_0) ≤ L_T + Σ_{t>1} L_{t−1} + L_0 per image, in nats (Ho et al.,
        eq. 5), one x_t sample per step. The reverse variances are β̃_t, as the ancestral sampler uses
        (β̃_2 for the decoder, whose β̃_1 is 0); L_0 is the discretized Gaussian decoder over 256 levels
        on [−1, 1] (eq. 13). x̂_0 is not clipped: the bound is of the network's Gaussian reverse
        process. T network evaluations per image."""
        total = self.prior_kl(x0)
        for t in range(self.timesteps):
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            index = torch.full((len(x0),), t, device=x0.device, dtype=torch.long)
            x_t = self.q_sample(x0, index, noise)
            x0_hat, _ = self.predicted(x_t, network(x_t, index), self.abar(t), objective)
            mean = self.posterior_mean(x0_hat, x_t, t)
            if t == 0:
                log_scale = 0.5 * math.log(float(self.posterior_variance[1]))
                total = total - discretized_gaussian_log_likelihood(x0, mean, log_scale).flatten(1).sum(1)
            else:
                true_mean = self.posterior_mean(x0, x_t, t)
                kl = (true_mean - mean).double().square() / (2 * float(self.posterior_variance[t]))
                total = total + kl.flatten(1).sum(1)
        return total
