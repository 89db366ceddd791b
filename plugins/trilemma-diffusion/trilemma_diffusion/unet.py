"""The time-conditioned U-Net of the DDPM notes (Ho et al. 2020, after the seed's PyTorch
version): residual blocks with the timestep embedding added, self-attention at 7×7, skips, and
optionally adaptive group normalisation driven by a conditioning vector (Xiao et al. 2022,
Appendix B). Timesteps may be fractional (continuous-time models pass t·1000)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


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
    residual block's AdaGN. ``in_channels`` (default ``channels``) is wider when the input carries
    more than the image, a self-conditioning estimate say; the output has ``channels``."""

    def __init__(self, channels: int, base: int, mults: tuple[int, ...], blocks: int, dropout: float,
                 cond_dim: int = 0, in_channels: int | None = None) -> None:
        super().__init__()
        time_dim = 4 * base
        self.base = base
        self.time_mlp = nn.Sequential(nn.Linear(base, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.cond_mlp = (nn.Sequential(nn.Linear(cond_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim),
                                       nn.SiLU(), nn.Linear(time_dim, time_dim))
                         if cond_dim else None)
        block = partial(ResBlock, time_dim=time_dim, dropout=dropout, cond_dim=time_dim if cond_dim else 0)
        self.stem = nn.Conv2d(in_channels or channels, base, 3, padding=1)
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


@dataclass
class UNetConfig:
    """The U-Net's size, as config fields a model's ``Config`` inherits."""

    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2)
    blocks_per_level: int = 2
    dropout: float = 0.1

    def unet(self, channels: int, in_channels: int | None = None) -> UNet:
        return UNet(channels, self.base_channels, self.channel_mults, self.blocks_per_level, self.dropout,
                    in_channels=in_channels)


#: The U-Net of the quick (2-core CPU) presets: 16/32/64 channels at 28/14/7, one block a level.
QUICK_UNET = {"base_channels": 16, "channel_mults": (1, 2, 4), "blocks_per_level": 1, "dropout": 0.0}
#: The U-Net of the smoke preset (seconds, for tests).
SMOKE_UNET = {"base_channels": 8, "blocks_per_level": 1}
