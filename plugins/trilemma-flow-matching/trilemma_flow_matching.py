"""Flow matching with the optimal-transport path (Lipman, Chen, Ben-Hamu, Nickel & Le 2023) — with
σ_min = 0 the rectified flow of Liu, Gong & Liu (2023).

Noise x_0 ~ N(0, I) at t = 0, data x_1 at t = 1, the straight path x_t = (1 − (1 − σ_min) t) x_0 +
t x_1 (Lipman et al., eq. 22) and its velocity u_t = x_1 − (1 − σ_min) x_0 (eq. 23). A U-Net
v_θ(x_t, t) (the timestep embedded as 1000·t) regresses u_t with t ~ U[0, 1] (eq. 21, the
conditional flow matching loss). Sampling integrates dx/dt = v_θ(x, t) from t = 0 to 1 through the
EMA weights: ``euler:steps=k`` (k evaluations) and the explicit midpoint rule ``midpoint:steps=k``
(2k evaluations). The trained vector field is the generator; there is no discriminator and no noise
schedule to tune.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from trilemma_diffusion import QUICK_UNET, SMOKE_UNET, FlowSampling, UNetConfig

import trilemma
from trilemma.ema import EMA


@dataclass
class FlowMatchingConfig(UNetConfig, trilemma.ModelConfig):
    sigma_min: float = 0.0
    lr: float = 2e-4
    ema_decay: float = 0.999


class FlowMatching(FlowSampling, trilemma.GenerativeModel):
    """A velocity field trained by flow matching, sampled by integrating its ODE (``FlowSampling``)."""

    name = "flow-matching"
    Config = FlowMatchingConfig
    data_channels = (1, 3)
    precisions = ("fp32", "bf16")
    samplers = (*trilemma.grid("euler", steps=(100, 20, 10, 4, 1)), *trilemma.grid("midpoint", steps=(10, 5)))
    # The learning curve of the cheapest good sampler, not of one-step Euler (a blur at any budget).
    curve_samplers = ("midpoint-5", "euler-4")
    presets = {
        "smoke": {"config": SMOKE_UNET, "samplers": (*trilemma.grid("euler", steps=(4, 1)), "midpoint:steps=2")},
        # The DDPM quick preset's U-Net and optimiser, so the two objectives compare on equal terms.
        "quick": {"config": {**QUICK_UNET, "lr": 5e-4, "ema_decay": 0.995},
                  "budget": {"train_images": 96_000, "batch_size": 64},
                  "samplers": (*trilemma.grid("euler", steps=(20, 4, 1)), "midpoint:steps=5")},
        "standard": {"budget": {"train_images": 2_560_000, "batch_size": 128}},
    }

    def __init__(self, config: FlowMatchingConfig | None = None, channels: int = 1) -> None:
        super().__init__(config, channels)
        c = self.config
        self.velocity = c.unet(channels)
        self.ema = EMA(self.velocity, c.ema_decay)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": torch.optim.Adam(self.velocity.parameters(), lr=self.config.lr)}

    def training_step(self, batch: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        x1 = batch * 2 - 1
        x0 = torch.randn_like(x1)
        t = torch.rand(len(x1), device=x1.device)
        tt = t.view(-1, 1, 1, 1)
        shrink = 1 - self.config.sigma_min
        x_t = (1 - shrink * tt) * x0 + tt * x1
        return self.regress_velocity(x_t, t, x1 - shrink * x0)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.integrate(n, generator, steps=100)


@trilemma.hookimpl
def register_models(register) -> None:
    register(FlowMatching)
