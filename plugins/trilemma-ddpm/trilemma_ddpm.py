"""Denoising diffusion probabilistic models (Ho, Jain & Abbeel 2020) and the design space of the
DDPM notes, with the samplers a practitioner would pick.

Training: x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε and a U-Net regresses the chosen ``objective`` (ε, x_0,
or v; Salimans & Ho 2022) under the chosen ``loss_weighting`` (uniform, P2 of Choi et al. 2022,
or min-SNR-γ of Hang et al. 2023), on one of four ``schedule``s (linear, cosine, quadratic,
sigmoid). With ``self_condition`` (Chen, Zhang & Hinton 2022, "Analog Bits", §3.2) the network
also sees its own previous estimate of x_0: during training, half the time, from a first pass
without gradient; during sampling, from the previous step (no extra evaluation).

Sampler methods, all through the EMA weights (``trilemma_diffusion.samplers``), chosen at
evaluation time: ``ddpm`` (ancestral, all T steps; row ``ddpm-T``), ``ddim:steps=k,eta=η``
(``ddim-k``; ``ddim-k-eta1`` for the stochastic η = 1), ``dpmpp2m:steps=k`` (DPM-Solver++(2M)) and
``heun:steps=k`` (EDM's Heun, 2k − 1 evaluations); each takes ``spacing`` (of the timesteps) and
``clip`` (x̂_0 to [−1, 1]).
The model has a likelihood: the variational bound (bits per dimension, kind ``vlb``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from trilemma_diffusion import QUICK_UNET, SCHEDULES, SMOKE_UNET, GaussianDiffusion, UNetConfig
from trilemma_diffusion import samplers as sampling

import trilemma
from trilemma.ema import EMA


@dataclass
class DDPMConfig(UNetConfig, trilemma.ModelConfig):
    timesteps: int = 1000
    schedule: Literal["linear", "cosine", "quadratic", "sigmoid"] = "linear"
    objective: Literal["eps", "x0", "v"] = "eps"
    self_condition: bool = False
    loss_weighting: Literal["uniform", "p2", "min_snr"] = "uniform"
    p2_k: float = 1.0
    p2_gamma: float = 1.0
    min_snr_gamma: float = 5.0
    lr: float = 2e-4
    ema_decay: float = 0.999


Spacing = Literal["leading", "trailing", "linspace"]


class DDPM(trilemma.GenerativeModel):
    """A diffusion model with EMA weights and several samplers."""

    name = "ddpm"
    Config = DDPMConfig
    data_channels = (1, 3)
    precisions = ("fp32", "bf16")
    samplers = ("ddpm", *trilemma.grid("ddim", eta=(0.0, 1.0), steps=(100, 50, 20, 10)),
                *trilemma.grid("dpmpp2m", steps=(20, 10)), "heun:steps=10")
    presets = {
        "smoke": {"config": {**SMOKE_UNET, "timesteps": 20},
                  "samplers": ("ddpm", *trilemma.grid("ddim", eta=(0.0, 1.0), steps=(10, 5)), "dpmpp2m:steps=5",
                               "heun:steps=3")},
        # Sized so that training and the samplers fit in about 7 minutes on a 2-core CPU (bf16).
        "quick": {"config": {**QUICK_UNET, "timesteps": 100, "lr": 5e-4, "ema_decay": 0.995},
                  "budget": {"train_images": 96_000, "batch_size": 64},  # 1,500 steps
                  "samplers": ("ddpm", *trilemma.grid("ddim", eta=(0.0, 1.0), steps=20), "dpmpp2m:steps=10",
                               "heun:steps=5")},
        "standard": {"budget": {"train_images": 2_560_000, "batch_size": 128}},
    }

    def __init__(self, config: DDPMConfig | None = None, channels: int = 1) -> None:
        super().__init__(config, channels)
        c = self.config
        self.diffusion = GaussianDiffusion(SCHEDULES[c.schedule](c.timesteps))
        in_channels = 2 * channels if c.self_condition else channels
        self.unet = c.unet(channels, in_channels)
        self.ema = EMA(self.unet, c.ema_decay)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": torch.optim.Adam(self.unet.parameters(), lr=self.config.lr)}

    def _input(self, x_t: torch.Tensor, self_cond: torch.Tensor | None) -> torch.Tensor:
        if not self.config.self_condition:
            return x_t
        return torch.cat([x_t, self_cond if self_cond is not None else torch.zeros_like(x_t)], dim=1)

    def training_step(self, batch: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        c, d = self.config, self.diffusion
        x0 = batch * 2 - 1
        t = torch.randint(0, d.timesteps, (len(x0),), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = d.q_sample(x0, t, noise)
        self_cond = None
        if c.self_condition and torch.rand(()) < 0.5:
            with torch.no_grad():  # the network's own estimate, no gradient through it (Chen et al., §3.2)
                output = self.unet(self._input(x_t, None), t)
                abar = d.alphas_cumprod.to(x0.device)[t].view(-1, 1, 1, 1).float()
                self_cond = _x0_from(x_t, output, abar, c.objective).detach()
        output = self.unet(self._input(x_t, self_cond), t)
        errors = F.mse_loss(output.float(), d.target(x0, noise, t, c.objective).float(), reduction="none").flatten(1).mean(1)
        weights = d.loss_weights(t, c.objective, c.loss_weighting, c.p2_k, c.p2_gamma, c.min_snr_gamma)
        loss = (weights * errors).mean()
        optimizer = self.optimizers["adam"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self.ema.update(self.unet)
        return {"loss": loss}

    # --- sampling ---------------------------------------------------------------------------
    def predictor(self, clip: bool = True) -> sampling.Predict:
        """One EMA network evaluation per call: (x̂_0, ε̂) at timestep t and noise level ᾱ; with
        self-conditioning the network sees the previous call's x̂_0 (zeros at the first)."""
        c = self.config
        previous: list[torch.Tensor] = []

        def predict(x_t: torch.Tensor, t: float, abar: float) -> tuple[torch.Tensor, torch.Tensor]:
            timestep = torch.full((len(x_t),), t, device=x_t.device)
            output = self.ema(self._input(x_t, previous[-1] if previous else None), timestep)
            x0, eps = GaussianDiffusion.predicted(x_t, output, abar, c.objective, clip=clip)
            previous[:] = [x0]
            return x0, eps

        return predict

    def denoiser_network(self) -> nn.Module:
        """The network samples are drawn with (the EMA weights): what a distilled student starts from."""
        return self.ema.average

    def _run(self, sampler, n: int, generator: torch.Generator | None, clip: bool, **kwargs) -> torch.Tensor:
        x = sampler(self.diffusion, self.predictor(clip), (n, self.channels, 28, 28), generator, self.device, **kwargs)
        return ((x + 1) / 2).clamp(0, 1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._run(sampling.ancestral, n, generator, clip=True)

    def sampler_methods(self) -> dict[str, Callable[..., torch.Tensor]]:
        T = self.config.timesteps

        def ddpm(n: int, generator: torch.Generator | None, *, steps: int = T, clip: bool = True) -> torch.Tensor:
            if steps != T:
                raise ValueError(f"ancestral sampling takes all T = {T} steps, not {steps}; "
                                 "for fewer, use ddim:steps=k,eta=1")
            return self._run(sampling.ancestral, n, generator, clip=clip)

        def ddim(n: int, generator: torch.Generator | None, *, steps: int, eta: float = 0.0,
                 spacing: Spacing = "leading", clip: bool = True) -> torch.Tensor:
            return self._run(sampling.ddim, n, generator, clip, steps=steps, eta=eta, spacing=spacing)

        def dpmpp2m(n: int, generator: torch.Generator | None, *, steps: int, spacing: Spacing = "leading",
                    clip: bool = True) -> torch.Tensor:
            return self._run(sampling.dpm_solver_pp_2m, n, generator, clip, steps=steps, spacing=spacing)

        def heun(n: int, generator: torch.Generator | None, *, steps: int, spacing: Spacing = "leading",
                 clip: bool = True) -> torch.Tensor:
            return self._run(sampling.heun, n, generator, clip, steps=steps, spacing=spacing)

        return {"ddpm": ddpm, "ddim": ddim, "dpmpp2m": dpmpp2m, "heun": heun}

    def sampling_networks(self) -> list[nn.Module]:
        return [self.ema]

    def log_likelihood(self, images: torch.Tensor, generator: torch.Generator | None = None) -> trilemma.LogLikelihood:
        """The variational bound of the EMA network (the one that samples), T evaluations an image;
        a self-conditioned network gets no estimate (zeros), as at a chain's first step."""
        x0 = images.float() / 255 * 2 - 1
        network = (lambda x_t, t: self.ema(self._input(x_t, None), t))  # noqa: E731
        return trilemma.LogLikelihood(-self.diffusion.vlb(network, x0, self.config.objective, generator), "vlb")


def _x0_from(x_t: torch.Tensor, output: torch.Tensor, abar: torch.Tensor, objective: str) -> torch.Tensor:
    """x̂_0 for a batch of noise levels (training's self-conditioning estimate)."""
    if objective == "eps":
        return (x_t - (1 - abar).sqrt() * output) / abar.sqrt()
    if objective == "x0":
        return output
    return abar.sqrt() * x_t - (1 - abar).sqrt() * output


@trilemma.hookimpl
def register_models(register) -> None:
    register(DDPM)
