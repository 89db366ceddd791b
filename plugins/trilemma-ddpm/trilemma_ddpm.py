"""Denoising diffusion probabilistic models (Ho, Jain & Abbeel 2020) with DDIM sampling
(Song, Meng & Ermon 2021).

Forward process q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I); a U-Net ε_θ(x_t, t) is trained with
the simple loss ‖ε − ε_θ(x_t, t)‖² (Ho et al., eq. 14). Samplers, each a report row:
ancestral sampling at T steps (Ho et al., Algorithm 2, written through the predicted x_0 and
the posterior q(x_{t−1} | x_t, x_0), eq. 6–7), and DDIM with η (Song et al., eq. 12) on an
evenly spaced sub-sequence of k timesteps. Sampling uses an exponential moving average of
the weights. Schedules: linear (Ho et al.) and cosine (Nichol & Dhariwal 2021, eq. 17).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

import trilemma

# --- noise schedules -------------------------------------------------------------------------


def linear_betas(timesteps: int) -> torch.Tensor:
    """Ho et al.'s 1e-4 → 0.02 over 1000 steps, rescaled so that other T keep ᾱ_T about equal
    (clipped at 0.999 for very small T)."""
    scale = 1000 / timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64).clamp(max=0.999)


def cosine_betas(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """ᾱ_t = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s))·π/2); β_t clipped at 0.999."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=0.999)


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}


class Diffusion:
    """Schedule constants and the update rules of both samplers (float64 constants)."""

    def __init__(self, betas: torch.Tensor, clip_x0: bool = True) -> None:
        self.betas = betas.double()
        self.timesteps = len(betas)
        self.alphas = 1 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        # Posterior q(x_{t-1} | x_t, x_0) = N(c0·x_0 + ct·x_t, β̃_t) (Ho et al., eq. 7).
        self.posterior_variance = self.betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        self.posterior_c0 = self.betas * self.alphas_cumprod_prev.sqrt() / (1 - self.alphas_cumprod)
        self.posterior_ct = (1 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1 - self.alphas_cumprod)
        self.clip_x0 = clip_x0

    def _abar(self, t: int) -> float:
        """ᾱ_t as a float64 scalar; ᾱ = 1 for t < 0 (the end of a DDIM chain)."""
        return float(self.alphas_cumprod[t]) if t >= 0 else 1.0

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, for a batch of timesteps ``t``."""
        abar = self.alphas_cumprod.to(x0.device)[t].view(-1, 1, 1, 1)
        return (abar.sqrt() * x0 + (1 - abar).sqrt() * noise).to(x0.dtype)

    def predict_x0(self, x_t: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        abar = self._abar(t)
        x0 = (x_t - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
        return x0.clamp(-1, 1) if self.clip_x0 else x0

    def ddpm_step(self, x_t: torch.Tensor, eps: torch.Tensor, t: int, noise: torch.Tensor | None) -> torch.Tensor:
        """x_{t-1} ~ q(x_{t-1} | x_t, x̂_0) with variance β̃_t; no noise at t = 0."""
        x0 = self.predict_x0(x_t, eps, t)
        mean = float(self.posterior_c0[t]) * x0 + float(self.posterior_ct[t]) * x_t
        if t == 0 or noise is None:
            return mean
        return mean + math.sqrt(float(self.posterior_variance[t])) * noise

    def ddim_step(self, x_t: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, eta: float,
                  noise: torch.Tensor | None) -> torch.Tensor:
        """Song et al., eq. 12: x_{t'} = √ᾱ_{t'} x̂_0 + √(1 − ᾱ_{t'} − σ²) ε̂ + σ z, with
        σ = η √((1 − ᾱ_{t'})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t'}); ᾱ_{t'} = 1 when t' < 0."""
        abar, abar_prev = self._abar(t), self._abar(t_prev)
        x0 = self.predict_x0(x_t, eps, t)
        if self.clip_x0:  # keep ε̂ consistent with the clipped x̂_0
            eps = (x_t - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
        sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
        x_prev = math.sqrt(abar_prev) * x0 + math.sqrt(max(0.0, 1 - abar_prev - sigma**2)) * eps
        if eta > 0 and noise is not None:
            x_prev = x_prev + sigma * noise
        return x_prev

    def posterior_sample(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                         noise: torch.Tensor) -> torch.Tensor:
        """x_{t-1} ~ q(x_{t-1} | x_t, x_0) for a batch of timesteps ``t`` (no noise where t = 0)."""
        def at(values: torch.Tensor) -> torch.Tensor:
            return values.to(x0.device)[t].view(-1, 1, 1, 1).to(x0.dtype)

        mean = at(self.posterior_c0) * x0 + at(self.posterior_ct) * x_t
        return mean + at(self.posterior_variance).sqrt() * noise

    def prior_kl(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) ‖ N(0, I)) per image, in nats (Ho et al., eq. 5)."""
        abar = float(self.alphas_cumprod[-1])
        kl = 0.5 * (abar * x0.double().square() + (1 - abar) - 1 - math.log(1 - abar))
        return kl.flatten(1).sum(1)

    def vlb(self, network: nn.Module, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The variational bound −log p(x_0) ≤ L_T + Σ_{t>1} L_{t−1} + L_0 per image, in nats (Ho et al.,
        eq. 5), one x_t sample per step, ``network`` an ε-predictor. The reverse variances are β̃_t, as
        the ancestral sampler uses (β̃_2 for the decoder, whose β̃_1 is 0); L_0 is the discretized
        Gaussian decoder over 256 levels on [−1, 1] (eq. 13). x̂_0 is not clipped: the bound is of the
        network's Gaussian reverse process. T network evaluations per image."""
        total = self.prior_kl(x0)
        for t in range(self.timesteps):
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            index = torch.full((len(x0),), t, device=x0.device, dtype=torch.long)
            x_t = self.q_sample(x0, index, noise)
            abar = self._abar(t)
            x0_hat = (x_t - math.sqrt(1 - abar) * network(x_t, index)) / math.sqrt(abar)
            mean = float(self.posterior_c0[t]) * x0_hat + float(self.posterior_ct[t]) * x_t
            if t == 0:
                log_scale = 0.5 * math.log(float(self.posterior_variance[1]))
                total = total - discretized_gaussian_log_likelihood(x0, mean, log_scale).flatten(1).sum(1)
            else:
                true_mean = float(self.posterior_c0[t]) * x0 + float(self.posterior_ct[t]) * x_t
                kl = (true_mean - mean).double().square() / (2 * float(self.posterior_variance[t]))
                total = total + kl.flatten(1).sum(1)
        return total

    def ddim_timesteps(self, steps: int) -> list[int]:
        """k evenly spaced timesteps, descending ("leading" spacing: 0, T/k, 2T/k, …)."""
        if not 1 <= steps <= self.timesteps:
            raise ValueError(f"DDIM steps must be in 1..{self.timesteps}, got {steps}")
        stride = self.timesteps // steps
        return list(range(0, steps * stride, stride))[::-1]


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: float) -> torch.Tensor:
    """log P(x) per pixel for x on the 256-level grid of [−1, 1] under N(mean, e^{2·log_scale})
    integrated over the pixel's bin of width 2/255; the end bins reach to ±∞ (Ho et al., eq. 13)."""
    centered = (x - mean).double()
    inv_std = math.exp(-log_scale)
    upper = (centered + 1 / 255) * inv_std
    lower = (centered - 1 / 255) * inv_std
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_one_minus_cdf_lower = torch.special.log_ndtr(-lower)
    log_mass = torch.log((torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_one_minus_cdf_lower, log_mass))


# --- the U-Net ε-predictor ---------------------------------------------------------------------


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer position encoding of the timestep (Vaswani et al. 2017), as in Ho et al."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm–SiLU–conv twice, the time embedding added in between, residual connection.

    With ``cond_dim`` the second GroupNorm is adaptive (AdaGN): its output is scaled and shifted
    by an affine map of a conditioning embedding, GN(h)·(1 + γ(c)) + β(c), the way the latent
    code enters the generator in denoising diffusion GANs (Xiao et al. 2022, Appendix B)."""

    def __init__(self, c_in: int, c_out: int, time_dim: int, dropout: float, cond_dim: int = 0) -> None:
        super().__init__()
        self.block1 = nn.Sequential(norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.time = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, c_out))
        self.block2 = nn.Sequential(norm(c_out), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.adagn = nn.Linear(cond_dim, 2 * c_out) if cond_dim else None
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, c_emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.block1(x) + self.time(t_emb)[:, :, None, None]
        if self.adagn is None:
            return self.skip(x) + self.block2(h)
        scale, shift = self.adagn(c_emb)[:, :, None, None].chunk(2, dim=1)
        h = self.block2[0](h) * (1 + scale) + shift
        return self.skip(x) + self.block2[1:](h)


class SelfAttention(nn.Module):
    """Single-head self-attention over spatial positions, with a residual connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).transpose(2, 3).unbind(1)
        attended = F.scaled_dot_product_attention(q, k, v)  # n × hw × c
        return x + self.out(attended.transpose(1, 2).reshape(n, c, h, w))


class UNet(nn.Module):
    """28 → 14 → 7 and back, ``blocks`` residual blocks per level, attention at 7×7, skips.

    With ``cond_dim`` it also takes a conditioning vector (a latent code, say), mapped by an
    MLP (StyleGAN's mapping network, Karras et al. 2019) to the embedding that drives every
    residual block's AdaGN."""

    def __init__(self, channels: int, base: int, mults: tuple[int, ...], blocks: int, dropout: float,
                 cond_dim: int = 0) -> None:
        super().__init__()
        time_dim = 4 * base
        self.base = base
        self.time_mlp = nn.Sequential(nn.Linear(base, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.cond_mlp = (nn.Sequential(nn.Linear(cond_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim),
                                       nn.SiLU(), nn.Linear(time_dim, time_dim))
                         if cond_dim else None)
        block = partial(ResBlock, time_dim=time_dim, dropout=dropout, cond_dim=time_dim if cond_dim else 0)
        self.stem = nn.Conv2d(channels, base, 3, padding=1)
        widths = [base * m for m in mults]
        self.down = nn.ModuleList()
        skips, c = [base], base
        for level, width in enumerate(widths):
            for _ in range(blocks):
                self.down.append(block(c, width))
                c = width
                skips.append(c)
            if level < len(widths) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = nn.ModuleList([block(c, c), SelfAttention(c), block(c, c)])
        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for _ in range(blocks + 1):
                self.up.append(block(c + skips.pop(), width))
                c = width
            if level == len(widths) - 1:
                self.up.append(SelfAttention(c))
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)))
        self.head = nn.Sequential(norm(c), nn.SiLU(), nn.Conv2d(c, channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        t_emb = self.time_mlp(sinusoidal_embedding(t, self.base))
        c_emb = self.cond_mlp(cond) if self.cond_mlp is not None else None
        h = self.stem(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, t_emb, c_emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, t_emb, c_emb) if isinstance(layer, ResBlock) else layer(h)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), t_emb, c_emb)
            else:
                h = layer(h)
        return self.head(h)


# --- the model -----------------------------------------------------------------------------


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, updates: int) -> None:
    """ema ← d·ema + (1 − d)·model with d = min(decay, (1 + n)/(10 + n)) after n updates: the
    warm-up lets early averages forget the random initialisation quickly. Buffers are copied."""
    d = min(decay, (1 + updates) / (10 + updates))
    for ema_p, p in zip(ema.parameters(), model.parameters(), strict=True):
        ema_p.lerp_(p, 1 - d)
    for ema_b, b in zip(ema.buffers(), model.buffers(), strict=True):
        ema_b.copy_(b)



@dataclass
class DDPMConfig(trilemma.ModelConfig):
    timesteps: int = 1000
    schedule: Literal["linear", "cosine"] = "linear"
    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2)
    blocks_per_level: int = 2
    dropout: float = 0.1
    lr: float = 2e-4
    ema_decay: float = 0.999
    clip_x0: bool = True
    ddim_steps: tuple[int, ...] = (100, 50, 20, 10)
    ddim_eta: float = 0.0
    ancestral: bool = True  # also report the T-step ancestral sampler


class DDPM(trilemma.GenerativeModel):
    """ε-prediction DDPM with EMA weights; samplers ``ddpm-T`` and ``ddim-k`` for each k."""

    name = "ddpm"
    Config = DDPMConfig
    data_channels = (1, 3)
    precisions = ("fp32", "bf16")
    presets = {
        "smoke": {"config": {"timesteps": 20, "base_channels": 8, "blocks_per_level": 1, "ddim_steps": (10, 5)}},
        # Sized so that training and the four samplers fit in about 10 minutes on a 2-core CPU (bf16).
        "quick": {"config": {"timesteps": 100, "base_channels": 16, "channel_mults": (1, 2, 4), "blocks_per_level": 1,
                             "lr": 5e-4, "ema_decay": 0.995, "dropout": 0.0, "ddim_steps": (50, 20, 10)},
                  "budget": {"train_images": 160_000, "batch_size": 64}},  # 2,500 steps
        "standard": {"budget": {"train_images": 2_560_000, "batch_size": 128}},
    }

    def __init__(self, config: DDPMConfig | None = None, channels: int = 1) -> None:
        super().__init__(config, channels)
        c = self.config
        self.diffusion = Diffusion(SCHEDULES[c.schedule](c.timesteps), clip_x0=c.clip_x0)
        self.unet = UNet(channels, c.base_channels, c.channel_mults, c.blocks_per_level, c.dropout)
        self.ema = copy.deepcopy(self.unet).requires_grad_(False)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": torch.optim.Adam(self.unet.parameters(), lr=self.config.lr)}

    def training_step(self, batch: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        x0 = batch * 2 - 1
        t = torch.randint(0, self.diffusion.timesteps, (len(x0),), device=x0.device)
        noise = torch.randn_like(x0)
        loss = F.mse_loss(self.unet(self.diffusion.q_sample(x0, t, noise), t), noise)
        optimizer = self.optimizers["adam"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self.update_ema()
        return {"loss": loss}

    def update_ema(self) -> None:
        self.ema_updates += 1
        update_ema(self.ema, self.unet, self.config.ema_decay, int(self.ema_updates))

    def _noise(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def _eps(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return self.ema(x, torch.full((len(x),), t, device=x.device, dtype=torch.long))

    def sample_ddpm(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral sampling, T network evaluations."""
        x = torch.randn(n, self.channels, 28, 28, generator=generator, device=self.device)
        for t in reversed(range(self.diffusion.timesteps)):
            noise = self._noise(x, generator) if t > 0 else None
            x = self.diffusion.ddpm_step(x, self._eps(x, t), t, noise)
        return ((x + 1) / 2).clamp(0, 1)

    def sample_ddim(self, n: int, generator: torch.Generator | None = None, *, steps: int = 50,
                    eta: float | None = None) -> torch.Tensor:
        """DDIM, ``steps`` network evaluations."""
        eta = self.config.ddim_eta if eta is None else eta
        x = torch.randn(n, self.channels, 28, 28, generator=generator, device=self.device)
        stride = self.diffusion.timesteps // steps
        for t in self.diffusion.ddim_timesteps(steps):
            noise = self._noise(x, generator) if eta > 0 else None
            x = self.diffusion.ddim_step(x, self._eps(x, t), t, t - stride, eta, noise)
        return ((x + 1) / 2).clamp(0, 1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.sample_ddpm(n, generator)

    def log_likelihood(self, images: torch.Tensor, generator: torch.Generator | None = None) -> trilemma.LogLikelihood:
        """The variational bound of the EMA network (the one that samples), T evaluations an image."""
        x0 = images.float() / 255 * 2 - 1
        return trilemma.LogLikelihood(-self.diffusion.vlb(self.ema, x0, generator), "vlb")

    def samplers(self) -> dict[str, trilemma.model.Sampler]:
        found: dict[str, trilemma.model.Sampler] = {}
        if self.config.ancestral:
            found[f"ddpm-{self.diffusion.timesteps}"] = self.sample_ddpm
        for steps in self.config.ddim_steps:
            found[f"ddim-{steps}"] = partial(self.sample_ddim, steps=steps)
        return found

    def sampling_networks(self) -> list[nn.Module]:
        return [self.ema]


@trilemma.hookimpl
def register_models(register) -> None:
    register(DDPM)
