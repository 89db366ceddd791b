"""Consistency models (Song, Dhariwal, Chen & Sutskever 2023), with the improved techniques of Song &
Dhariwal (2023): consistency training from scratch (``consistency``) and consistency distillation
from a flow-matching teacher (``consistency-distilled``).

A consistency function maps any point of an ODE trajectory to the trajectory's end, so one network
call turns noise into a sample. Here the trajectories are those of the straight flow-matching path
x_t = (1 − t)·z + t·x (noise z at t = 0, data x at t = 1), and the function is parameterised as
f_θ(x, t) = x + (1 − t)·F_θ(x, t) (Song et al. 2023, eq. 5, with c_skip = 1 and c_out = 1 − t), so
the boundary condition f_θ(x, 1) = x holds by construction; with F_θ a velocity, f_θ is one Euler
step to t = 1, which is why a distilled model starts from its teacher's weights.

Training (eq. 7 for distillation, eq. 10 for training) on the grid t_n = n/N, n ~ U{0, …, N − 1}:
L = d(f_θ(x_{t_n}, t_n), f_θ⁻(x̂_{t_{n+1}}, t_{n+1})) with x_{t_n} = (1 − t_n)·z + t_n·x and
- distillation: x̂_{t_{n+1}} one Euler step of the teacher's ODE from x_{t_n} (one teacher NFE a
  pair, counted in the student's training FLOPs);
- training: x̂_{t_{n+1}} = (1 − t_{n+1})·z + t_{n+1}·x, the same z and x (the one-sample estimate of
  that step, since the path's conditional velocity is x − z).
d is the pseudo-Huber loss √(‖a − b‖² + c²) − c with c = 0.00054·√D (Song & Dhariwal 2023, §3.3);
the target network θ⁻ is θ itself under stop-gradient (their §3.2: no EMA target, ``target_decay``
= 0; set it for the original EMA target); N doubles every ``double_every`` steps from
``discretization_min`` to ``discretization_max`` (their exponential curriculum, eq. 7, by step since
a model does not know its budget; 0 keeps N fixed, as distillation does). Times are sampled
uniformly over the grid, not log-normally (their §3.5): on a uniform grid of a linear path no step
is more important than another.

Sampling: ``multistep:steps=k`` (Song et al. 2023, Algorithm 1): x = f(z, 0), then for τ = 1/k, …,
(k − 1)/k re-noise x to τ along the path with fresh noise and apply f again: k NFE.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from trilemma_diffusion import QUICK_UNET, SMOKE_UNET, UNetConfig, start_from_teacher

import trilemma
from trilemma.ema import EMA


@dataclass
class ConsistencyConfig(UNetConfig, trilemma.ModelConfig):
    teacher: str = ""  # a flow teacher (offering velocity_at) makes this consistency distillation
    discretization_min: int = 10
    discretization_max: int = 160
    double_every: int = 300  # steps between doublings of N (0: N = discretization_max throughout)
    target_decay: float = 0.0  # μ of the target network θ⁻; 0: θ⁻ = stopgrad(θ)
    init_from_teacher: bool = True
    lr: float = 2e-4
    ema_decay: float = 0.999


def pseudo_huber(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of √(‖a − b‖² + c²) − c, c = 0.00054·√D (Song & Dhariwal 2023, §3.3),
    computed as ‖a − b‖² / (√(‖a − b‖² + c²) + c), which does not cancel when a ≈ b."""
    c = 0.00054 * math.sqrt(a[0].numel())
    squared = (a - b).flatten(1).square().sum(1)
    return (squared / (torch.sqrt(squared + c * c) + c)).mean()


class Consistency(trilemma.GenerativeModel):
    """A consistency function on the straight flow path, trained from scratch or from a flow teacher."""

    name = "consistency"
    Config = ConsistencyConfig
    data_channels = (1, 3)
    precisions = ("fp32", "bf16")
    samplers = trilemma.grid("multistep", steps=(1, 2, 4))
    curve_samplers = ("multistep-1", "multistep-2")
    presets = {
        "smoke": {"config": {**SMOKE_UNET, "double_every": 2}, "samplers": trilemma.grid("multistep", steps=(1, 2))},
        # The flow-matching quick U-Net and budget: N goes 10, 20, 40, 80, 160 over the 1,500 steps.
        "quick": {"config": {**QUICK_UNET, "lr": 5e-4, "ema_decay": 0.995},
                  "budget": {"train_images": 96_000, "batch_size": 64},
                  "samplers": trilemma.grid("multistep", steps=(1, 2))},
        "standard": {"config": {"double_every": 4000, "discretization_max": 640},
                     "budget": {"train_images": 2_560_000, "batch_size": 128}},
    }

    def __init__(self, config: ConsistencyConfig | None = None, channels: int = 1) -> None:
        super().__init__(config, channels)
        c = self.config
        self.network = c.unet(channels)
        self.ema = EMA(self.network, c.ema_decay)
        self.target = copy.deepcopy(self.network).requires_grad_(False) if c.target_decay > 0 else None

    def attach_teacher(self, teacher: trilemma.GenerativeModel) -> None:
        name = getattr(teacher, "name", type(teacher).__name__)
        if not callable(getattr(teacher, "velocity_at", None)):
            raise TypeError(f"{self.name}'s teacher {name!r} offers no velocity_at(x, t): consistency distillation "
                            "needs a flow teacher such as flow-matching")
        super().attach_teacher(teacher)
        if self.config.init_from_teacher:
            start_from_teacher(lambda: teacher.flow_network(),  # type: ignore[attr-defined]
                               (self.network, self.ema.average, self.target), self.name, name)

    @property
    def distilled(self) -> bool:
        return bool(self.teacher_name(self.config))

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": torch.optim.Adam(self.network.parameters(), lr=self.config.lr)}

    @staticmethod
    def consistency(network: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """f(x, t) = x + (1 − t)·F(x, t): exactly x at t = 1, whatever the network."""
        return x + (1 - t).view(-1, 1, 1, 1) * network(x, 1000 * t)

    def discretization(self, step: int) -> int:
        """N at ``step``: doubling every ``double_every`` steps from the minimum to the maximum."""
        c = self.config
        if c.double_every <= 0:
            return c.discretization_max
        return min(c.discretization_min * 2 ** (step // c.double_every), c.discretization_max)

    def pair(self, x: torch.Tensor, z: torch.Tensor, n: torch.Tensor, steps: int) -> tuple[torch.Tensor, ...]:
        """(x_{t_n}, t_n, x̂_{t_{n+1}}, t_{n+1}): the point on the path and the next one, by the teacher's
        Euler step (distillation) or on the same straight line (training)."""
        t, t_next = n / steps, (n + 1) / steps
        x_t = (1 - t).view(-1, 1, 1, 1) * z + t.view(-1, 1, 1, 1) * x
        if self.distilled:
            velocity = self.teacher_model.velocity_at(x_t, t)  # type: ignore[attr-defined]
            x_next = x_t + (t_next - t).view(-1, 1, 1, 1) * velocity.float()
        else:
            x_next = (1 - t_next).view(-1, 1, 1, 1) * z + t_next.view(-1, 1, 1, 1) * x
        return x_t, t, x_next, t_next

    def training_step(self, batch: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        x = batch * 2 - 1
        z = torch.randn_like(x)
        steps = self.discretization(step)
        n = torch.randint(0, steps, (len(x),), device=x.device)
        with torch.no_grad():
            x_t, t, x_next, t_next = self.pair(x, z, n, steps)
            target = self.consistency(self.target if self.target is not None else self.network, x_next, t_next)
        loss = pseudo_huber(self.consistency(self.network, x_t, t).float(), target.float())
        optimizer = self.optimizers["adam"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self.ema.update(self.network)
        if self.target is not None:
            with torch.no_grad():
                for target_p, p in zip(self.target.parameters(), self.network.parameters(), strict=True):
                    target_p.lerp_(p, 1 - self.config.target_decay)
        return {"loss": loss, "discretization": torch.tensor(float(steps))}

    def multistep(self, n: int, generator: torch.Generator | None = None, *, steps: int) -> torch.Tensor:
        """Algorithm 1 of Song et al. (2023) on the flow path, at τ = i/steps: ``steps`` NFE."""
        shape = (n, self.channels, 28, 28)
        x = self.consistency(self.ema, torch.randn(shape, generator=generator, device=self.device),
                             torch.zeros(n, device=self.device))
        for i in range(1, steps):
            tau = torch.full((n,), i / steps, device=self.device)
            noise = torch.randn(shape, generator=generator, device=self.device)
            x = self.consistency(self.ema, (1 - i / steps) * noise + i / steps * x, tau)
        return ((x + 1) / 2).clamp(0, 1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.multistep(n, generator, steps=1)

    def sampler_methods(self) -> dict[str, Callable[..., torch.Tensor]]:
        return {"multistep": self.multistep}

    def sampling_networks(self) -> list[nn.Module]:
        return [self.ema]


@dataclass
class DistilledConfig(ConsistencyConfig):
    teacher: str = "flow-matching"
    double_every: int = 0
    discretization_max: int = 18  # Song et al. (2023) distil with N = 18 on CIFAR-10


class ConsistencyDistilled(Consistency):
    """Consistency distillation (Song et al. 2023, Algorithm 2) from the flow-matching teacher."""

    name = "consistency-distilled"
    Config = DistilledConfig
    teacher = "flow-matching"
    presets = {
        "smoke": {"config": {**SMOKE_UNET, "discretization_max": 4}, "samplers": trilemma.grid("multistep", steps=(1, 2))},
        # Started from the teacher's weights; 300 steps × 64 pairs, one teacher NFE each.
        "quick": {"config": {**QUICK_UNET, "lr": 1e-4, "ema_decay": 0.99},
                  "budget": {"train_images": 19_200, "batch_size": 64},
                  "samplers": trilemma.grid("multistep", steps=(1, 2))},
        "standard": {"budget": {"train_images": 640_000, "batch_size": 128}},
    }


@trilemma.hookimpl
def register_models(register) -> None:
    register(Consistency)
    register(ConsistencyDistilled)
