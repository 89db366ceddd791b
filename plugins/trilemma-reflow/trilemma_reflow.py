"""Reflow: the 2-rectified flow of Liu, Gong & Liu (2023, "Flow straight and fast", §2.2, Algorithm 1).

A 1-rectified flow (the ``flow-matching`` teacher: σ_min = 0, the straight path) transports noise
Z_0 to samples Z_1 along curved paths, so a few Euler steps land off the data. Reflow couples each
noise with the teacher's own sample of it, Z_1 = ODE_teacher(Z_0), and fits a new velocity field to
the straight line between the pair: min_v E‖(Z_1 − Z_0) − v(X_t, t)‖², X_t = t·Z_1 + (1 − t)·Z_0
(eq. 1 on the coupling (Z_0, Z_1)). Its paths are straighter than the teacher's (Theorem 3.7), so
Euler with 1, 2 or 4 steps gets closer to what the teacher reaches with many.

Pairs are drawn afresh at every step (the teacher's ``transport`` with ``teacher_steps`` midpoint
steps, 2·``teacher_steps`` NFE a pair, under no_grad): the paper samples a fixed set of pairs once
(4M on CIFAR-10); drawing them online costs the same teacher evaluations per pair, never reuses a
pair, and makes every training step the same work, so the harness's counted FLOPs per step (and the
row's training PFLOP) include the pair generation. The data batch only sets the batch size and
device: the student never sees a training image, only the teacher's samples. As the paper does,
the student starts from the teacher's (EMA) weights (``init_from_teacher``).

Teacher protocol (any model named by ``teacher`` that offers it): ``transport(noise, steps=,
method=)`` carrying x_0 at t = 0 to t = 1 in the [−1, 1] scale, and, to start from its weights,
``flow_network()`` with the same architecture as the student's U-Net.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from trilemma_diffusion import QUICK_UNET, SMOKE_UNET, FlowSampling, UNetConfig, start_from_teacher

import trilemma
from trilemma.ema import EMA


@dataclass
class ReflowConfig(UNetConfig, trilemma.ModelConfig):
    teacher: str = "flow-matching"
    teacher_steps: int = 5  # midpoint steps of the teacher's ODE per pair (2× the NFE)
    teacher_method: str = "midpoint"
    init_from_teacher: bool = True
    lr: float = 1e-4
    ema_decay: float = 0.999


class Reflow(FlowSampling, trilemma.GenerativeModel):
    """A velocity field fitted to the straight lines between a flow teacher's noise and samples."""

    name = "reflow"
    Config = ReflowConfig
    teacher = "flow-matching"
    data_channels = (1, 3)
    precisions = ("fp32", "bf16")
    samplers = (*trilemma.grid("euler", steps=(1, 2, 4)), "midpoint:steps=2")
    curve_samplers = ("euler-1", "euler-4")
    presets = {
        "smoke": {"config": {**SMOKE_UNET, "teacher_steps": 2}, "samplers": trilemma.grid("euler", steps=(1, 2))},
        # The flow-matching quick U-Net (so the student starts from the teacher's weights), fine-tuned on
        # 300 steps × 64 = 19,200 fresh pairs at 10 teacher NFE each.
        "quick": {"config": {**QUICK_UNET, "lr": 2e-4, "ema_decay": 0.99},
                  "budget": {"train_images": 19_200, "batch_size": 64}},
        "standard": {"budget": {"train_images": 640_000, "batch_size": 128}},
    }

    def __init__(self, config: ReflowConfig | None = None, channels: int = 1) -> None:
        super().__init__(config, channels)
        c = self.config
        self.velocity = c.unet(channels)
        self.ema = EMA(self.velocity, c.ema_decay)

    def attach_teacher(self, teacher: trilemma.GenerativeModel) -> None:
        name = getattr(teacher, "name", type(teacher).__name__)
        if not callable(getattr(teacher, "transport", None)):
            raise TypeError(f"reflow's teacher {name!r} offers no transport(noise, steps=, method=): "
                            "reflow needs a flow teacher such as flow-matching")
        super().attach_teacher(teacher)
        if self.config.init_from_teacher:
            start_from_teacher(lambda: teacher.flow_network(), (self.velocity, self.ema.average),  # type: ignore[attr-defined]
                               self.name, name)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": torch.optim.Adam(self.velocity.parameters(), lr=self.config.lr)}

    @torch.no_grad()
    def pairs(self, n: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` fresh (noise, teacher sample) pairs, the coupling reflow straightens."""
        z0 = torch.randn(n, *like.shape[1:], device=like.device)
        z1 = self.teacher_model.transport(z0, steps=self.config.teacher_steps,  # type: ignore[attr-defined]
                                          method=self.config.teacher_method)
        return z0, z1.float()

    def training_step(self, batch: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        z0, z1 = self.pairs(len(batch), batch)
        t = torch.rand(len(batch), device=batch.device)
        tt = t.view(-1, 1, 1, 1)
        x_t = tt * z1 + (1 - tt) * z0
        return self.regress_velocity(x_t, t, z1 - z0)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.integrate(n, generator, steps=2)


@trilemma.hookimpl
def register_models(register) -> None:
    register(Reflow)
