"""Critically-damped Langevin diffusion (Dockhorn, Vahdat & Kreis, ICLR 2022), written from the paper.

Each pixel x gets a velocity v, and the forward SDE runs in the joint space (paper, eq. 5):
    dx = β M⁻¹ v dt,   dv = −β x dt − β Γ M⁻¹ v dt + √(2Γβ) dW,
noise entering the velocity only; critical damping Γ² = 4M, v_0 ~ N(0, γM). With constant β the
drift matrix βA, A = [[0, M⁻¹], [−1, −ΓM⁻¹]], has the double eigenvalue −2/Γ, so
exp(BA) = e^{−2B/Γ} [[1 + 2B/Γ, 4B/Γ²], [−B, 1 − 2B/Γ]] with B = βt, and the perturbation kernel given
x_0 is Gaussian with mean exp(BA)(x_0, 0) and covariance Σ∞ + exp(BA)(Σ_0 − Σ∞)exp(BA)ᵀ, where
Σ_0 = diag(0, γM) and Σ∞ = diag(1, M) is the equilibrium (the closed form of the paper's Appendix B,
collected in matrix form).

Hybrid score matching (§3.2): the network only learns ∇_v log p_t(v | x). With the kernel's Cholesky
factor L (ℓ_vv its velocity entry) and u_t = μ_t + L ε, the target is −ε_v/ℓ_vv; the network predicts
ε_v and the loss is ‖ε_v − ε_θ(u_t, t)‖² (HSM with λ(t) = ℓ_vv², §3.2).

Samplers of the reverse SDE, k network evaluations each: Euler–Maruyama, and the symmetric
splitting CLD sampler (SSCS, §3.3): a Strang splitting into the linear Ornstein–Uhlenbeck part,
solved exactly (another critically damped system, with the same equilibrium), and the score part
dv = 2Γβ (s + M⁻¹v) dt, taken by one Euler step between two half steps of the first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from trilemma_diffusion import QUICK_UNET, SMOKE_UNET, UNetConfig

import trilemma
from trilemma.ema import EMA

Score = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]  # (x, v, t) → ∇_v log p_t(v | x)


@dataclass(frozen=True)
class CriticallyDampedLangevin:
    """The forward process and its exact transition maps, per dimension (2 × 2 blocks). Times may be
    floats or tensors (a batch); the maths runs in float64."""

    beta: float = 4.0
    friction: float = 1.0  # Γ; the mass is M = Γ²/4
    v0_factor: float = 0.04  # γ: v_0 ~ N(0, γM)

    @property
    def mass(self) -> float:
        return self.friction**2 / 4

    def _map(self, b: torch.Tensor, sign: int) -> tuple[torch.Tensor, ...]:
        """exp(b·A) (sign 1) or exp(b·Ã) of the reverse linear part (sign −1), as (xx, xv, vx, vv):
        A = [[0, M⁻¹], [−1, −ΓM⁻¹]], Ã = [[0, −M⁻¹], [1, −ΓM⁻¹]], both with the eigenvalue −2/Γ twice."""
        g = self.friction
        decay = torch.exp(-2 * b / g)
        return decay * (1 + 2 * b / g), sign * decay * 4 * b / g**2, -sign * decay * b, decay * (1 - 2 * b / g)

    def forward_map(self, big_b: torch.Tensor | float) -> tuple[torch.Tensor, ...]:
        return self._map(torch.as_tensor(big_b, dtype=torch.float64), 1)

    def reverse_linear_map(self, b: torch.Tensor | float) -> tuple[torch.Tensor, ...]:
        return self._map(torch.as_tensor(b, dtype=torch.float64), -1)

    def propagated_covariance(self, e: tuple[torch.Tensor, ...], sxx: float, sxv: float,
                              svv: float) -> tuple[torch.Tensor, ...]:
        """Σ∞ + E(Σ − Σ∞)Eᵀ: the covariance after the map E of a process whose equilibrium is Σ∞ = diag(1, M)."""
        exx, exv, evx, evv = e
        dxx, dxv, dvv = sxx - 1, sxv, svv - self.mass
        cxx = exx * exx * dxx + 2 * exx * exv * dxv + exv * exv * dvv
        cxv = exx * evx * dxx + (exx * evv + exv * evx) * dxv + exv * evv * dvv
        cvv = evx * evx * dxx + 2 * evx * evv * dxv + evv * evv * dvv
        return 1 + cxx, cxv, self.mass + cvv

    def kernel(self, t: torch.Tensor | float) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """p(u_t | x_0): mean coefficients (μ_x, μ_v per unit x_0) and covariance (Σ_xx, Σ_xv, Σ_vv)."""
        e = self.forward_map(self.beta * torch.as_tensor(t, dtype=torch.float64))
        return (e[0], e[2]), self.propagated_covariance(e, 0.0, 0.0, self.v0_factor * self.mass)

    def cholesky(self, t: torch.Tensor | float) -> tuple[torch.Tensor, ...]:
        """(ℓ_xx, ℓ_xv, ℓ_vv) of the kernel's covariance."""
        _, (sxx, sxv, svv) = self.kernel(t)
        lxx = sxx.sqrt()
        lxv = sxv / lxx
        return lxx, lxv, (svv - lxv * lxv).sqrt()


def euler_maruyama(process: CriticallyDampedLangevin, score: Score, x: torch.Tensor, v: torch.Tensor, steps: int,
                   t_end: float, generator: torch.Generator | None) -> torch.Tensor:
    """Reverse SDE from t = 1 to t_end: u ← u − h(βAu − [0, 2Γβ s]) + √(2Γβh) [0, z]."""
    beta, g, m = process.beta, process.friction, process.mass
    h = (1 - t_end) / steps
    for i in range(steps):
        t = 1 - i * h
        s = score(x, v, t)
        noise = torch.randn(v.shape, generator=generator, device=v.device)
        x, v = (x - h * beta * v / m,
                v + h * beta * (x + g * v / m) + h * 2 * g * beta * s + math.sqrt(2 * g * beta * h) * noise)
    return x


def sscs(process: CriticallyDampedLangevin, score: Score, x: torch.Tensor, v: torch.Tensor, steps: int,
         t_end: float, generator: torch.Generator | None, denoise_last: bool = True) -> torch.Tensor:
    """Symmetric splitting CLD sampler (Dockhorn et al., §3.3): half an exact step of the linear part,
    an Euler step of the score part at the midpoint, half an exact linear step. With ``denoise_last``
    the final half step takes its mean: the noise it would add to x is never corrected by a later
    score step (the last-step denoising of Jolicoeur-Martineau et al. 2021, §4)."""
    beta, g, m = process.beta, process.friction, process.mass
    h = (1 - t_end) / steps
    e = [float(c) for c in process.reverse_linear_map(beta * h / 2)]
    cxx, cxv, cvv = (float(c) for c in process.propagated_covariance(e, 0.0, 0.0, 0.0))  # an exact half step's noise
    lxx = math.sqrt(max(cxx, 0.0))
    lxv = cxv / lxx if lxx > 0 else 0.0
    lvv = math.sqrt(max(cvv - lxv * lxv, 0.0))

    def half(x: torch.Tensor, v: torch.Tensor, noise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        zx = torch.randn(x.shape, generator=generator, device=x.device)
        zv = torch.randn(v.shape, generator=generator, device=v.device)
        if not noise:
            return e[0] * x + e[1] * v, e[2] * x + e[3] * v
        return (e[0] * x + e[1] * v + lxx * zx,
                e[2] * x + e[3] * v + lxv * zx + lvv * zv)

    for i in range(steps):
        t = 1 - i * h
        x, v = half(x, v)
        v = v + h * 2 * g * beta * (score(x, v, t - h / 2) + v / m)
        x, v = half(x, v, noise=not (denoise_last and i == steps - 1))
    return x


@dataclass
class CLDConfig(UNetConfig, trilemma.ModelConfig):
    beta: float = 4.0
    friction: float = 1.0
    v0_factor: float = 0.04
    t_min: float = 1e-3  # training times t ~ U[t_min, 1]; samplers stop there
    lr: float = 2e-4
    ema_decay: float = 0.999


class CLD(trilemma.GenerativeModel):
    """A U-Net on (x, v) that predicts the velocity noise; SSCS and Euler–Maruyama samplers."""

    name = "cld"
    Config = CLDConfig
    data_channels = (1, 3)
    precisions = ("fp32", "bf16")
    samplers = (*trilemma.grid("sscs", steps=(100, 50, 20)), *trilemma.grid("em", steps=(100, 50)))
    presets = {
        "smoke": {"config": SMOKE_UNET, "samplers": ("sscs:steps=6", "em:steps=6")},
        # The DDPM quick preset's U-Net (with twice the input channels) and optimiser. On the quick
        # checkpoint SSCS gave FID 135 at 20 steps (one class), 41 at 50, 28 at 100 (10 classes).
        "quick": {"config": {**QUICK_UNET, "lr": 5e-4, "ema_decay": 0.995},
                  "budget": {"train_images": 96_000, "batch_size": 64},
                  "samplers": (*trilemma.grid("sscs", steps=(100, 50, 20)), "em:steps=50")},
        "standard": {"budget": {"train_images": 2_560_000, "batch_size": 128}},
    }

    def __init__(self, config: CLDConfig | None = None, channels: int = 1) -> None:
        super().__init__(config, channels)
        c = self.config
        self.process = CriticallyDampedLangevin(c.beta, c.friction, c.v0_factor)
        self.eps_net = c.unet(channels, in_channels=2 * channels)
        self.ema = EMA(self.eps_net, self.config.ema_decay)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": torch.optim.Adam(self.eps_net.parameters(), lr=self.config.lr)}

    def training_step(self, batch: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        x0 = batch * 2 - 1
        t = self.config.t_min + (1 - self.config.t_min) * torch.rand(len(x0), device=x0.device)
        (mean_x, mean_v), _ = self.process.kernel(t.double())
        lxx, lxv, lvv = self.process.cholesky(t.double())
        mean_x, mean_v, lxx, lxv, lvv = (c.float().view(-1, 1, 1, 1) for c in (mean_x, mean_v, lxx, lxv, lvv))
        eps_x, eps_v = torch.randn_like(x0), torch.randn_like(x0)
        x_t = mean_x * x0 + lxx * eps_x
        v_t = mean_v * x0 + lxv * eps_x + lvv * eps_v
        loss = F.mse_loss(self.eps_net(torch.cat([x_t, v_t], dim=1), 1000 * t).float(), eps_v.float())
        optimizer = self.optimizers["adam"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self.ema.update(self.eps_net)
        return {"loss": loss}

    def score(self, x: torch.Tensor, v: torch.Tensor, t: float) -> torch.Tensor:
        """∇_v log p_t(v | x) ≈ −ε_θ(u, t)/ℓ_vv(t), through the EMA network."""
        lvv = float(self.process.cholesky(t)[2])
        return -self.ema(torch.cat([x, v], dim=1), torch.full((len(x),), 1000 * t, device=x.device)) / lvv

    def generate(self, n: int, generator: torch.Generator | None = None, *, steps: int,
                 method: str = "sscs") -> torch.Tensor:
        """From the equilibrium N(0, diag(1, M)) at t = 1 down to t_min; the image is x."""
        shape = (n, self.channels, 28, 28)
        x = torch.randn(shape, generator=generator, device=self.device)
        v = math.sqrt(self.process.mass) * torch.randn(shape, generator=generator, device=self.device)
        integrate = sscs if method == "sscs" else euler_maruyama
        x = integrate(self.process, self.score, x, v, steps, self.config.t_min, generator)
        return ((x + 1) / 2).clamp(0, 1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.generate(n, generator, steps=100)

    def sampler_methods(self) -> dict[str, Callable[..., torch.Tensor]]:
        return {method: partial(self.generate, method=method) for method in ("sscs", "em")}

    def sampling_networks(self) -> list[nn.Module]:
        return [self.ema]


@trilemma.hookimpl
def register_models(register) -> None:
    register(CLD)
