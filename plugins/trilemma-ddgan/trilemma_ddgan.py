"""Denoising diffusion GAN (Xiao, Kreis & Vahdat, ICLR 2022, "Tackling the Generative Learning
Trilemma with Denoising Diffusion GANs"), written from the paper.

A diffusion with only T ∈ {1, 2, 4} steps has denoising distributions q(x_{t−1} | x_t) far from
Gaussian, so each is modelled by a conditional GAN: the generator G(x_t, z, t) predicts x_0 and
the step is taken with the posterior q(x_{t−1} | x_t, x̂_0) (paper, eq. 6–7); a time-conditioned
discriminator D(x_{t−1}, x_t, t) tells real pairs, drawn from q(x_{t−1}) q(x_t | x_{t−1}), from
generated ones. The generator is trilemma-diffusion's U-Net with the latent z entering every residual
block through adaptive group normalisation after a mapping MLP (paper, Appendix B); the
discriminator ends with a minibatch standard deviation channel (Karras et al. 2018). Losses:
non-saturating GAN loss with R1 regularisation on real pairs (paper, eq. 5 and §4), applied lazily
every few steps with its weight scaled to match (Karras et al. 2020, StyleGAN2, §3.1); the
generator used for sampling is an exponential moving average. The noise schedule discretises the
VP-SDE (β_min = 0.1, β_max = 20) at t = k/T (paper, Appendix C).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from trilemma_diffusion import GaussianDiffusion, UNet, norm, sinusoidal_embedding

import trilemma
from trilemma.ema import EMA


def vp_betas(timesteps: int, beta_min: float = 0.1, beta_max: float = 20.0) -> torch.Tensor:
    """ᾱ_k = exp(−β_min·t_k − ½(β_max − β_min)·t_k²) at t_k = k/T; β_k = 1 − ᾱ_k / ᾱ_{k−1}."""
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    alphas_cumprod = torch.exp(-beta_min * t - 0.5 * (beta_max - beta_min) * t**2)
    return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=0.9999)


def minibatch_stddev(h: torch.Tensor, group: int) -> torch.Tensor:
    """Append the feature standard deviation across groups of ``group`` samples, averaged to
    one channel (Karras et al. 2018, "Progressive Growing of GANs", §3): a discriminator that
    sees batch statistics can penalise a generator whose samples look alike."""
    n, c, height, width = h.shape
    g = math.gcd(group, n)
    # In fp32 whatever the autocast dtype, and as mean of squared deviations: Tensor.var over the
    # leading dimension took 4 ms of a 100 ms training step on the CPU, this 0.5 ms.
    grouped = h.float().reshape(g, n // g, c * height * width)
    std = (grouped - grouped.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()
    std = std.mean(dim=1).view(-1, 1, 1, 1).repeat(g, 1, height, width).to(h.dtype)
    return torch.cat([h, std], dim=1)


class Discriminator(nn.Module):
    """D(x_{t−1}, x_t, t): the pair as 2C channels, strided convolutions, time embedding added,
    optionally a minibatch standard deviation channel before the head."""

    def __init__(self, channels: int, width: int, stddev_group: int = 0) -> None:
        super().__init__()
        if stddev_group < 0:
            raise ValueError(f"stddev_group must be 0 (off) or a group size, got {stddev_group}")
        self.width = width
        self.stddev_group = stddev_group
        self.time_mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.LeakyReLU(0.2))
        self.stem = nn.Conv2d(2 * channels, width, 3, padding=1)
        self.down1 = nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)  # 28 → 14
        self.down2 = nn.Conv2d(2 * width, 2 * width, 4, stride=2, padding=1)  # 14 → 7
        self.norm = norm(2 * width)
        self.head = nn.Linear((2 * width + (stddev_group > 0)) * 7 * 7, 1)

    def forward(self, x_prev: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_emb = self.time_mlp(sinusoidal_embedding(t, self.width))[:, :, None, None]
        h = F.leaky_relu(self.stem(torch.cat([x_prev, x_t], dim=1)), 0.2)
        h = F.leaky_relu(self.down1(h) + t_emb, 0.2)
        h = F.leaky_relu(self.norm(self.down2(h)), 0.2)
        if self.stddev_group:
            h = minibatch_stddev(h, self.stddev_group)
        return self.head(h.flatten(1)).squeeze(1)


@dataclass
class DDGANConfig(trilemma.ModelConfig):
    timesteps: Literal[1, 2, 4] = 4
    latent_dim: int = 100
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    blocks_per_level: int = 1
    disc_width: int = 32
    disc_stddev_group: int = 4  # minibatch standard deviation over groups of this size; 0: off
    lr_g: float = 1.6e-4
    lr_d: float = 1.25e-4
    beta1: float = 0.5
    beta2: float = 0.9
    r1_gamma: float = 0.02
    r1_every: int = 4  # lazy R1: every k-th step, weighted by k
    ema_decay: float = 0.999


class DDGAN(trilemma.GenerativeModel):
    """T-step denoising diffusion GAN; one generator evaluation per step (NFE = T)."""

    name = "ddgan"
    Config = DDGANConfig
    data_channels = (1, 3)
    precisions = ("fp32", "bf16")
    samplers = ("ddgan",)
    presets = {
        "smoke": {"config": {"base_channels": 8, "disc_width": 8, "latent_dim": 8}},
        # A light generator (8/16/32 channels at 28/14/7 pixels). Batch 64: with bf16 autocast a 2-core
        # CPU trains 400 images/s at batch 64 against 265 at batch 32 (fp32 at 32: 275).
        # At lr 5e-4/4e-4 seed 1 dropped the digit 1 (0.1% of samples); at half that it kept 10/10.
        "quick": {"config": {"base_channels": 8, "channel_mults": (1, 2, 4), "disc_width": 32, "lr_g": 2.5e-4,
                             "lr_d": 2e-4, "ema_decay": 0.995},
                  "budget": {"train_images": 96_000, "batch_size": 64}},  # 1,500 steps
        "standard": {"budget": {"train_images": 1_280_000, "batch_size": 128}},
    }

    def __init__(self, config: DDGANConfig | None = None, channels: int = 1) -> None:
        super().__init__(config, channels)
        c = self.config
        self.diffusion = GaussianDiffusion(vp_betas(c.timesteps))
        self.generator = UNet(channels, c.base_channels, c.channel_mults, c.blocks_per_level, dropout=0.0,
                              cond_dim=c.latent_dim)
        self.discriminator = Discriminator(channels, c.disc_width, c.disc_stddev_group)
        self.ema = EMA(self.generator, c.ema_decay)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        return {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=c.lr_g, betas=(c.beta1, c.beta2)),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=c.lr_d, betas=(c.beta1, c.beta2)),
        }

    def real_pairs(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_{t−1}, x_t) with x_{t−1} ~ q(x_{t−1} | x_0) and x_t ~ q(x_t | x_{t−1}); t is 0-based,
        so step t maps x_t (index t) to x_{t−1} (index t − 1, x_0 itself when t = 0)."""
        d = self.diffusion
        prev_abar = d.alphas_cumprod_prev.to(x0.device)[t].view(-1, 1, 1, 1).float()
        x_prev = prev_abar.sqrt() * x0 + (1 - prev_abar).sqrt() * torch.randn_like(x0)
        beta = d.betas.to(x0.device)[t].view(-1, 1, 1, 1).float()
        x_t = (1 - beta).sqrt() * x_prev + beta.sqrt() * torch.randn_like(x0)
        return x_prev, x_t

    def denoise_step(self, network: nn.Module, x_t: torch.Tensor, t: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """x_{t−1} ~ q(x_{t−1} | x_t, x̂_0 = G(x_t, z, t)), z ~ N(0, I)."""
        z = torch.randn(len(x_t), self.config.latent_dim, generator=generator, device=x_t.device)
        x0 = network(x_t, t, z)
        noise = torch.randn(x_t.shape, generator=generator, device=x_t.device)
        return self.diffusion.posterior_sample(x0, x_t, t, noise)

    def training_step(self, batch: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        x0 = batch * 2 - 1
        t = torch.randint(0, self.config.timesteps, (len(x0),), device=x0.device)
        x_prev, x_t = self.real_pairs(x0, t)

        # Discriminator: non-saturating loss, R1 penalty on real pairs (γ/2 · ‖∇_{x_{t−1}} D‖²).
        with_r1 = step % self.config.r1_every == 0
        x_prev.requires_grad_(with_r1)
        real_logits = self.discriminator(x_prev, x_t, t)
        r1 = torch.zeros((), device=x0.device)
        if with_r1:
            (grad,) = torch.autograd.grad(real_logits.sum(), x_prev, create_graph=True)
            r1 = grad.pow(2).flatten(1).sum(1).mean()
        fake_prev = self.denoise_step(self.generator, x_t, t)
        fake_logits = self.discriminator(fake_prev.detach(), x_t, t)
        r1_weight = self.config.r1_gamma / 2 * self.config.r1_every
        d_loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean() + r1_weight * r1
        self.optimizers["discriminator"].zero_grad(set_to_none=True)
        d_loss.backward()
        self.optimizers["discriminator"].step()

        self.discriminator.requires_grad_(False)  # the generator step needs no D weight gradients
        g_loss = F.softplus(-self.discriminator(fake_prev, x_t, t)).mean()
        self.optimizers["generator"].zero_grad(set_to_none=True)
        g_loss.backward()
        self.discriminator.requires_grad_(True)
        self.optimizers["generator"].step()
        self.ema.update(self.generator)
        return {"d_loss": d_loss, "g_loss": g_loss, "r1": r1}

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        x = torch.randn(n, self.channels, 28, 28, generator=generator, device=self.device)
        for step in reversed(range(self.config.timesteps)):
            t = torch.full((n,), step, device=self.device, dtype=torch.long)
            x = self.denoise_step(self.ema, x, t, generator)
        return ((x + 1) / 2).clamp(0, 1)

    def sampler_methods(self) -> dict[str, Callable[..., torch.Tensor]]:
        T = self.config.timesteps

        def ddgan(n: int, generator: torch.Generator | None, *, steps: int = T) -> torch.Tensor:
            """The generator's T denoising steps (row ``ddgan-T``): it was trained for exactly these."""
            if steps != T:
                raise ValueError(f"this DDGAN was trained for T = {T} denoising steps and samples with those only; "
                                 "train another with --set ddgan.timesteps=...")
            return self.sample(n, generator)

        return {"ddgan": ddgan}

    def sampling_networks(self) -> list[nn.Module]:
        return [self.ema]


@trilemma.hookimpl
def register_models(register) -> None:
    register(DDGAN)



