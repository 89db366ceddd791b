"""Latent score-based generative model (LSGM: Vahdat, Kreis & Kautz, NeurIPS 2021), written from the
paper and sized for MNIST.

A convolutional VAE — encoder q(z_0 | x) onto a 4×7×7 latent, Bernoulli decoder p(x | z_0) — whose prior
p(z_0) is a score-based model: a VP-SDE (Song et al. 2021; β(t) = β_min + t(β_max − β_min)) in latent
space, the score −ε_θ(z_t, t)/σ_t given by a small U-Net at 7×7. The objective is the VAE bound with
the cross-entropy to the prior written by denoising score matching (paper, Theorem 1, eq. 5–6):

    −log p(x) ≤ E_q[−log p(x | z_0)] + E_q[log q(z_0 | x)] + CE(q(z_0 | x) ‖ p(z_0)),
    CE = E_{t ~ U[ε,1]} (β(t)/(2σ_t²)) E‖ε − ε_θ(z_t, t)‖² + const,

trained end to end (§3.3): the encoder and decoder on this maximum-likelihood weighting, its variance
reduced by importance sampling t ∝ β(t)/σ_t², which the VP-SDE inverts in closed form (Appendix); the
score model on the unweighted ε-loss at t ~ U[ε, 1]. The cross-entropy and entropy terms are warmed up
from 0 to 1 over the first steps (as NVAE, on which LSGM builds, does with its KL term).

``training = "two_stage"`` is the fallback: a VAE with a N(0, I) prior for ``vae_steps`` steps, then the
latent score model alone on the frozen encoder's latents (as latent diffusion models do).

Sampling: DDIM (η = 0) or DPM-Solver++(2M) in latent space at k steps on the VP-SDE discretised at
t_i = (i + 1)/T, then one decoder pass: NFE = k + 1, both networks counted by the harness.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from trilemma_diffusion import GaussianDiffusion, UNet
from trilemma_diffusion import samplers as sampling

import trilemma
from trilemma.ema import EMA


@dataclass(frozen=True)
class VPSDE:
    """β(t) = β_min + t(β_max − β_min): ᾱ(t) = exp(−∫β), σ_t² = 1 − ᾱ(t)."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-5

    def integral(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_snr_inverse(self, t: torch.Tensor) -> torch.Tensor:
        """log(σ_t²/(1 − σ_t²)) = log(e^{∫β} − 1), increasing in t."""
        return torch.log(torch.expm1(self.integral(t)))

    def importance_sample(self, n: int, device: torch.device) -> tuple[torch.Tensor, float]:
        """t ∝ β(t)/σ_t² on [t_min, 1]: since β/σ² = d/dt log(σ²/(1 − σ²)), its CDF is linear in that
        log and inverts through a quadratic in t. Returns t and the normaliser Z = ∫β/σ² dt."""
        low, high = (float(self.log_snr_inverse(torch.tensor(v, dtype=torch.float64))) for v in (self.t_min, 1.0))
        level = low + torch.rand(n, device=device, dtype=torch.float64) * (high - low)
        integral = torch.log1p(torch.exp(level))  # ∫_0^t β = log(1 + e^level)
        a, b = 0.5 * (self.beta_max - self.beta_min), self.beta_min
        t = (-b + torch.sqrt(b * b + 4 * a * integral)) / (2 * a)
        return t.clamp(self.t_min, 1.0).float(), high - low

    def cross_entropy_constant(self, dim: int) -> float:
        """The constant of Theorem 1, (D/2) log(2πe σ²) with σ² the forward variance at t_min: the
        denoising form of the cross-entropy plus this is CE(q(z_0 | x) ‖ p(z_0)). Training drops it."""
        variance = -math.expm1(-float(self.integral(torch.tensor(self.t_min, dtype=torch.float64))))
        return 0.5 * dim * math.log(2 * math.pi * math.e * variance)

    def discretised(self, timesteps: int) -> GaussianDiffusion:
        """The SDE on the grid t_i = (i + 1)/T, for the discrete samplers."""
        t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        abar = torch.exp(-self.integral(t))
        return GaussianDiffusion((1 - abar[1:] / abar[:-1]).clamp(max=0.999))


@dataclass
class LSGMConfig(trilemma.ModelConfig):
    latent_channels: int = 4
    vae_filters: int = 64
    score_base: int = 64
    score_blocks: int = 2
    dropout: float = 0.0
    training: Literal["joint", "two_stage"] = "joint"
    vae_steps: int = 2000  # two_stage: VAE-only steps before the prior is trained
    ce_warmup_steps: int = 500  # joint: the cross-entropy and entropy weights go 0 → 1 over these steps
    lr_vae: float = 1e-3
    lr_score: float = 3e-4
    ema_decay: float = 0.999
    timesteps: int = 1000  # the sampling grid


class Encoder(nn.Module):
    def __init__(self, channels: int, filters: int, latent: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, filters, 3, stride=2, padding=1), nn.SiLU(),  # 28 → 14
            nn.Conv2d(filters, filters, 3, stride=2, padding=1), nn.SiLU(),  # 14 → 7
            nn.Conv2d(filters, filters, 3, padding=1), nn.SiLU(),
            nn.Conv2d(filters, 2 * latent, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.net(x).chunk(2, dim=1)
        return mean, logvar.clamp(-12, 8)


class Decoder(nn.Module):
    def __init__(self, channels: int, filters: int, latent: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(latent, filters, 3, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(filters, filters, 4, stride=2, padding=1), nn.SiLU(),  # 7 → 14
            nn.ConvTranspose2d(filters, filters, 4, stride=2, padding=1), nn.SiLU(),  # 14 → 28
            nn.Conv2d(filters, channels, 3, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits of each pixel."""
        return self.net(z)


class LSGM(trilemma.GenerativeModel):
    """A VAE with a latent score-based prior; NFE = sampler steps + one decoder pass."""

    name = "lsgm"
    Config = LSGMConfig
    data_channels = (1, 3)
    precisions = ("fp32", "bf16")
    samplers = (*trilemma.grid("ddim", steps=(100, 20, 10)), "dpmpp2m:steps=10")
    presets = {
        "smoke": {"config": {"vae_filters": 8, "score_base": 8, "score_blocks": 1, "ce_warmup_steps": 2, "vae_steps": 2},
                  "samplers": ("ddim:steps=4", "dpmpp2m:steps=3")},
        "quick": {"config": {"vae_filters": 32, "score_base": 32, "score_blocks": 1, "ce_warmup_steps": 500,
                             "vae_steps": 1000, "ema_decay": 0.995},
                  "budget": {"train_images": 96_000, "batch_size": 64},
                  "samplers": (*trilemma.grid("ddim", steps=(100, 20, 10)), "dpmpp2m:steps=10")},
        "standard": {"config": {"vae_steps": 10_000, "ce_warmup_steps": 5000},
                     "budget": {"train_images": 2_560_000, "batch_size": 128}},
    }

    def __init__(self, config: LSGMConfig | None = None, channels: int = 1) -> None:
        super().__init__(config, channels)
        c = self.config
        self.sde = VPSDE()
        self.encoder = Encoder(channels, c.vae_filters, c.latent_channels)
        self.decoder = Decoder(channels, c.vae_filters, c.latent_channels)
        self.score = UNet(c.latent_channels, c.score_base, (1,), c.score_blocks, c.dropout)  # at 7×7, no resampling
        self.ema = EMA(self.score, c.ema_decay)
        self.grid = self.sde.discretised(c.timesteps)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        vae = [*self.encoder.parameters(), *self.decoder.parameters()]
        return {"vae": torch.optim.Adam(vae, lr=self.config.lr_vae),
                "score": torch.optim.Adam(self.score.parameters(), lr=self.config.lr_score)}

    def _noised(self, z0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        abar = torch.exp(-self.sde.integral(t.double())).float().view(-1, 1, 1, 1)
        noise = torch.randn_like(z0)
        return abar.sqrt() * z0 + (1 - abar).sqrt() * noise, noise

    def _eps(self, network: nn.Module, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return network(z_t, 1000 * t)

    def cross_entropy(self, z0: torch.Tensor, eps: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Per sample, a one-draw estimate of CE(q(z_0 | x) ‖ p(z_0)) − ``sde.cross_entropy_constant``
        (paper, Theorem 1): with t drawn ∝ β(t)/σ_t², E_t[β/(2σ_t²)‖ε − ε_θ(z_t, t)‖²]·(1 − t_min)
        is (Z/2)‖ε − ε_θ‖² for the normaliser Z of that density."""
        t, normaliser = self.sde.importance_sample(len(z0), z0.device)
        z_t, noise = self._noised(z0, t)
        return 0.5 * normaliser * (noise - eps(z_t, t)).square().flatten(1).sum(1)

    def training_step(self, batch: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        c = self.config
        mean, logvar = self.encoder(batch)
        z0 = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        reconstruction = F.binary_cross_entropy_with_logits(self.decoder(z0), batch, reduction="none").flatten(1).sum(1)
        two_stage_prior = c.training == "two_stage" and step >= c.vae_steps
        losses: dict[str, torch.Tensor] = {"reconstruction": reconstruction.mean()}
        total = torch.zeros((), device=batch.device)
        if c.training == "joint":
            warm = min(1.0, (step + 1) / max(1, c.ce_warmup_steps))
            log_q = -0.5 * (math.log(2 * math.pi) + logvar + (z0 - mean).square() / logvar.exp()).flatten(1).sum(1)
            self.score.requires_grad_(False)  # this term trains the encoder and decoder, not the prior
            cross_entropy = self.cross_entropy(z0, partial(self._eps, self.score))
            self.score.requires_grad_(True)
            vae_loss = (reconstruction + warm * (log_q + cross_entropy)).mean()
            losses.update(cross_entropy=cross_entropy.mean(), neg_entropy=log_q.mean())
            total = total + vae_loss
        elif not two_stage_prior:  # stage one: a VAE with the N(0, I) prior
            kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).flatten(1).sum(1)
            total = total + (reconstruction + kl).mean()
            losses["kl"] = kl.mean()
        if c.training == "joint" or two_stage_prior:  # the prior: unweighted ε-loss, t ~ U[t_min, 1]
            t = self.sde.t_min + (1 - self.sde.t_min) * torch.rand(len(z0), device=z0.device)
            z_t, noise = self._noised(z0.detach(), t)
            score_loss = F.mse_loss(self._eps(self.score, z_t, t).float(), noise.float())
            total = total + score_loss
            losses["score_loss"] = score_loss
        for name in ("vae", "score"):
            self.optimizers[name].zero_grad(set_to_none=True)
        total.backward()
        if not two_stage_prior:
            self.optimizers["vae"].step()
        if "score_loss" in losses:
            self.optimizers["score"].step()
            self.ema.update(self.score)
        return losses

    # --- sampling ---------------------------------------------------------------------------
    def _predictor(self) -> sampling.Predict:
        """The latent ε-model on the sampling grid: grid index i is SDE time (i + 1)/T."""
        def predict(z_t: torch.Tensor, t: float, abar: float) -> tuple[torch.Tensor, torch.Tensor]:
            time = torch.full((len(z_t),), (t + 1) / self.config.timesteps, device=z_t.device)
            return GaussianDiffusion.predicted(z_t, self.ema(z_t, 1000 * time), abar, "eps")
        return predict

    def generate(self, n: int, generator: torch.Generator | None = None, *, steps: int,
                 solver: str = "ddim") -> torch.Tensor:
        shape = (n, self.config.latent_channels, 7, 7)
        if solver == "ddim":
            z0 = sampling.ddim(self.grid, self._predictor(), shape, generator, self.device, steps, 0.0, "trailing")
        else:
            z0 = sampling.dpm_solver_pp_2m(self.grid, self._predictor(), shape, generator, self.device, steps, "trailing")
        return torch.sigmoid(self.decoder(z0))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.generate(n, generator, steps=100)

    def sampler_methods(self) -> dict[str, Callable[..., torch.Tensor]]:
        """Latent DDIM (η = 0) and DPM-Solver++(2M), then one decoder pass."""
        return {"ddim": partial(self.generate, solver="ddim"), "dpmpp2m": partial(self.generate, solver="dpm")}

    def sampling_networks(self) -> list[nn.Module]:
        return [self.ema, self.decoder]


@trilemma.hookimpl
def register_models(register) -> None:
    register(LSGM)
