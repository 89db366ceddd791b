"""What flow models share: sampling a velocity field's ODE, and a student starting from its teacher."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from trilemma_diffusion.ode import METHODS, integrate_ode


class FlowSampling:
    """Samplers of a model whose EMA network ``self.ema`` is a velocity field v(x, 1000·t) on the
    path from noise (t = 0) to data (t = 1): ``euler:steps=k`` (k NFE) and ``midpoint:steps=k``
    (2k), and ``transport``/``velocity_at``/``flow_network``, the protocol a student reads its
    teacher through; ``regress_velocity`` trains ``self.velocity`` towards a target velocity.
    Mix in before ``trilemma.GenerativeModel``."""

    ema: nn.Module
    channels: int
    device: torch.device

    def _field(self, x: torch.Tensor, t: float) -> torch.Tensor:
        return self.ema(x, torch.full((len(x),), 1000 * t, device=x.device))

    def velocity_at(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The velocity (EMA weights) at ``x`` and per-sample times ``t`` in [0, 1]."""
        return self.ema(x, 1000 * t)

    def transport(self, noise: torch.Tensor, *, steps: int, method: str = "euler") -> torch.Tensor:
        """Carry ``noise`` (x_0 at t = 0) to t = 1 along the ODE, in the model's [−1, 1] scale, unclamped."""
        return integrate_ode(self._field, noise, steps, method)

    def flow_network(self) -> nn.Module:
        """The velocity network samples are drawn with (the EMA weights): what a student starts from."""
        return self.ema.average  # type: ignore[return-value]

    def integrate(self, n: int, generator: torch.Generator | None = None, *, steps: int,
                  method: str = "euler") -> torch.Tensor:
        """Noise at t = 0 carried to data at t = 1 in ``steps`` equal steps, as images in [0, 1]."""
        x = torch.randn(n, self.channels, 28, 28, generator=generator, device=self.device)
        return ((self.transport(x, steps=steps, method=method) + 1) / 2).clamp(0, 1)

    def sampler_methods(self) -> dict[str, Callable[..., torch.Tensor]]:
        return {method: partial(self.integrate, method=method) for method in METHODS}

    def regress_velocity(self, x_t: torch.Tensor, t: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """One training step of the regression both flow losses are (Lipman et al. 2023, eq. 23;
        Liu et al. 2023, eq. 1): MSE of ``self.velocity`` at (``x_t``, per-sample ``t``) against
        ``target``, an Adam step of ``self.optimizers["adam"]``, then the EMA."""
        velocity: nn.Module = self.velocity  # type: ignore[attr-defined]
        loss = F.mse_loss(velocity(x_t, 1000 * t).float(), target.float())
        optimizer = self.optimizers["adam"]  # type: ignore[attr-defined]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self.ema.update(velocity)  # type: ignore[operator]
        return {"loss": loss}

    def sampling_networks(self) -> list[nn.Module]:
        return [self.ema]


def start_from_teacher(teacher_network: Callable[[], nn.Module], networks: Iterable[nn.Module | None],
                       student: str, teacher: str) -> None:
    """Load the teacher's network weights into each of the student's ``networks`` (the paper's
    initialisation of a distilled or reflowed student), or say in one line why they do not fit."""
    try:
        state = teacher_network().state_dict()
        for network in networks:
            if network is not None:
                network.load_state_dict(state)
    except (AttributeError, RuntimeError) as exc:
        raise TypeError(f"{student} cannot start from {teacher!r}'s weights ({type(exc).__name__}: {str(exc)[:200]}); "
                        "give it the teacher's U-Net settings, or init_from_teacher=false") from exc
