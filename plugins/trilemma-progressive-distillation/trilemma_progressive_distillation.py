"""Progressive distillation (Salimans & Ho 2022, Algorithm 2) of a DDPM teacher into a few-step
DDIM sampler.

Each round halves the sampling steps: a student that starts from its teacher learns to do in one
DDIM step what the teacher does in two. On the teacher's grid of 2N timesteps t > t' > t'' (a
student step from t to t''), with α = √ᾱ, σ = √(1 − ᾱ) and z_t = α_t·x + σ_t·ε:

  z_{t'} = α_{t'}·x̂(z_t) + (σ_{t'}/σ_t)·(z_t − α_t·x̂(z_t)),  then z_{t''} likewise from z_{t'},
  x̃ = (z_{t''} − (σ_{t''}/σ_t)·z_t) / (α_{t''} − (σ_{t''}/σ_t)·α_t),

the x̂ that makes one DDIM step from z_t land on z_{t''} exactly. The student, a v-prediction
network (x̂ = α·z − σ·v: the paper's point that ε-prediction cannot work at a few steps, where α
→ 0), minimises max(SNR_t, 1)·‖x̂_θ(z_t) − x̃‖² ("truncated SNR" weighting, §4). After a round the
student becomes the teacher of the next (a frozen copy of its EMA weights, which the student also
restarts from), so N goes ``start_steps`` → ``start_steps``/2 → … for ``rounds`` rounds of
``steps_per_round`` training steps (a model does not know its budget: steps past the last round
continue it). Steps are DDIM's "trailing" timesteps (from T − 1 down; the leading spacing never
samples the noisiest step, which matters at one or two steps: Lin et al. 2024), so the student's
grid is every other point of its teacher's. One grid step per training batch (the paper samples one
per example; the teacher's calls here take one timestep a batch).

The first round's teacher is the ``ddpm`` model trained with v-prediction on the cosine schedule
(``teacher_config``, as the paper trains its teachers; reported as ``ddpm[objective=v,schedule=cosine]``),
two teacher NFE a training example, counted in the student's training FLOPs. Teacher protocol:
``diffusion`` (its ``GaussianDiffusion``), ``predictor(clip=False)`` and ``denoiser_network()``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from trilemma_diffusion import QUICK_UNET, SCHEDULES, SMOKE_UNET, GaussianDiffusion, UNetConfig, start_from_teacher
from trilemma_diffusion import samplers as sampling

import trilemma
from trilemma.ema import EMA


@dataclass
class ProgressiveConfig(UNetConfig, trilemma.ModelConfig):
    teacher: str = "ddpm"
    timesteps: int = 1000  # the teacher's schedule (checked when the teacher is attached)
    schedule: str = "cosine"
    start_steps: int = 64  # the teacher's DDIM steps the first round halves
    rounds: int = 4  # the student samples in start_steps / 2^rounds steps
    steps_per_round: int = 1000
    init_from_teacher: bool = True
    lr: float = 1e-4
    ema_decay: float = 0.995


def distillation_target(z_t: torch.Tensor, z_next: torch.Tensor, abar_t: float, abar_next: float) -> torch.Tensor:
    """x̃: the x̂ with which one DDIM step from z_t (at ᾱ_t) lands on z_next (at ᾱ_next) (Algorithm 2)."""
    ratio = math.sqrt(1 - abar_next) / math.sqrt(1 - abar_t)
    return (z_next - ratio * z_t) / (math.sqrt(abar_next) - ratio * math.sqrt(abar_t))


def ddim_to(z_t: torch.Tensor, x0: torch.Tensor, abar_t: float, abar_next: float) -> torch.Tensor:
    """One deterministic DDIM step with the estimate x0: α'·x̂ + (σ'/σ)·(z_t − α·x̂)."""
    return math.sqrt(abar_next) * x0 + math.sqrt(1 - abar_next) / math.sqrt(1 - abar_t) * (z_t - math.sqrt(abar_t) * x0)


class ProgressiveDistillation(trilemma.GenerativeModel):
    """A v-prediction student distilled round by round from a DDPM teacher."""

    name = "progressive-distillation"
    Config = ProgressiveConfig
    teacher = "ddpm"
    teacher_config = {"objective": "v", "schedule": "cosine"}
    data_channels = (1, 3)
    precisions = ("fp32", "bf16")
    samplers = ("ddim:steps=4", "ddim:steps=8")
    curve_samplers = ("ddim-4",)
    presets = {
        "smoke": {"config": {**SMOKE_UNET, "timesteps": 20, "start_steps": 8, "rounds": 2, "steps_per_round": 2},
                  "samplers": ("ddim:steps=2", "ddim:steps=4")},
        # The DDPM quick U-Net and T; 16 → 8 → 4 → 2 steps in three rounds of 200 steps × 64.
        "quick": {"config": {**QUICK_UNET, "timesteps": 100, "start_steps": 16, "rounds": 3, "steps_per_round": 200},
                  "budget": {"train_images": 38_400, "batch_size": 64},
                  "samplers": ("ddim:steps=2", "ddim:steps=4")},
        "standard": {"budget": {"train_images": 640_000, "batch_size": 128}},
    }

    def __init__(self, config: ProgressiveConfig | None = None, channels: int = 1) -> None:
        super().__init__(config, channels)
        c = self.config
        if c.start_steps % 2 ** c.rounds or c.start_steps > c.timesteps:
            raise ValueError(f"start_steps ({c.start_steps}) must be a multiple of 2^rounds ({2 ** c.rounds}) "
                             f"and at most timesteps ({c.timesteps})")
        self.diffusion = GaussianDiffusion(SCHEDULES[c.schedule](c.timesteps))
        self.network = c.unet(channels)
        self.ema = EMA(self.network, c.ema_decay)
        self.round_teacher = copy.deepcopy(self.network).requires_grad_(False)  # the teacher of rounds ≥ 1
        self.register_buffer("round", torch.zeros((), dtype=torch.long))

    def attach_teacher(self, teacher: trilemma.GenerativeModel) -> None:
        name = getattr(teacher, "name", type(teacher).__name__)
        diffusion = getattr(teacher, "diffusion", None)
        if not isinstance(diffusion, GaussianDiffusion) or not callable(getattr(teacher, "predictor", None)):
            raise TypeError(f"{self.name}'s teacher {name!r} offers no diffusion and predictor(clip=): it needs a "
                            "diffusion teacher such as ddpm")
        if not torch.allclose(diffusion.alphas_cumprod, self.diffusion.alphas_cumprod):
            raise TypeError(f"{self.name}'s schedule ({self.config.schedule}, T = {self.config.timesteps}) is not its "
                            f"teacher {name!r}'s; set timesteps and schedule to the teacher's")
        super().attach_teacher(teacher)
        if self.config.init_from_teacher:
            start_from_teacher(lambda: teacher.denoiser_network(),  # type: ignore[attr-defined]
                               (self.network, self.ema.average, self.round_teacher), self.name, name)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": torch.optim.Adam(self.network.parameters(), lr=self.config.lr)}

    def student_steps(self, round_: int) -> int:
        """N, the student's DDIM steps in round ``round_`` (its teacher takes 2N)."""
        return self.config.start_steps >> (round_ + 1)

    def _teacher_x0(self, z: torch.Tensor, t: int) -> torch.Tensor:
        abar = self.diffusion.abar(t)
        if int(self.round) == 0:
            predict = self.teacher_model.predictor(clip=False)  # type: ignore[attr-defined]
            return predict(z, float(t), abar)[0].float()
        v = self.round_teacher(z, torch.full((len(z),), t, device=z.device)).float()
        return math.sqrt(abar) * z - math.sqrt(1 - abar) * v

    def _start_round(self, round_: int) -> None:
        """The student becomes its own next teacher: both restart from its EMA weights."""
        state = self.ema.average.state_dict()
        self.round_teacher.load_state_dict(state)
        self.network.load_state_dict(state)
        self.round.fill_(round_)

    def training_step(self, batch: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        c, d = self.config, self.diffusion
        round_ = min(step // c.steps_per_round, c.rounds - 1)
        if round_ > int(self.round):
            self._start_round(round_)
        steps = self.student_steps(round_)
        grid = [*d.spaced(2 * steps, "trailing"), -1]
        j = int(torch.randint(0, steps, ()))
        t, t_mid, t_next = grid[2 * j], grid[2 * j + 1], grid[2 * j + 2]
        abar_t, abar_mid, abar_next = d.abar(t), d.abar(t_mid), d.abar(t_next)
        x = batch * 2 - 1
        z_t = math.sqrt(abar_t) * x + math.sqrt(1 - abar_t) * torch.randn_like(x)
        with torch.no_grad():
            z_mid = ddim_to(z_t, self._teacher_x0(z_t, t), abar_t, abar_mid)
            z_next = ddim_to(z_mid, self._teacher_x0(z_mid, t_mid), abar_mid, abar_next)
            target = distillation_target(z_t, z_next, abar_t, abar_next)
        v = self.network(z_t, torch.full((len(x),), t, device=x.device)).float()
        x0 = math.sqrt(abar_t) * z_t - math.sqrt(1 - abar_t) * v
        weight = max(abar_t / (1 - abar_t), 1.0)  # truncated SNR
        loss = weight * (x0 - target).square().mean()
        optimizer = self.optimizers["adam"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self.ema.update(self.network)
        return {"loss": loss, "student_steps": torch.tensor(float(steps))}

    def _predict(self, z: torch.Tensor, t: float, abar: float) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.ema(z, torch.full((len(z),), t, device=z.device))
        return GaussianDiffusion.predicted(z, v, abar, "v")

    def ddim(self, n: int, generator: torch.Generator | None = None, *, steps: int) -> torch.Tensor:
        """Deterministic DDIM at ``steps`` trailing timesteps: ``steps`` NFE."""
        x = sampling.ddim(self.diffusion, self._predict, (n, self.channels, 28, 28), generator, self.device,
                          steps=steps, spacing="trailing")
        return ((x + 1) / 2).clamp(0, 1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.ddim(n, generator, steps=self.config.start_steps >> self.config.rounds)

    def sampler_methods(self) -> dict[str, Callable[..., torch.Tensor]]:
        return {"ddim": self.ddim}

    def sampling_networks(self) -> list[nn.Module]:
        return [self.ema]


@trilemma.hookimpl
def register_models(register) -> None:
    register(ProgressiveDistillation)
