from importlib.metadata import entry_points

import pytest
import torch
from trilemma_ddpm import DDPM
from trilemma_diffusion import SCHEDULES, GaussianDiffusion
from trilemma_progressive_distillation import ProgressiveDistillation, ddim_to, distillation_target

from trilemma.testing import ModelContract

SMALL = {"base_channels": 8, "blocks_per_level": 1}
STUDENT = {**SMALL, "timesteps": 20, "start_steps": 8, "rounds": 2, "steps_per_round": 2}


def small_teacher() -> DDPM:
    return DDPM(DDPM.Config(**SMALL, timesteps=20, objective="v", schedule="cosine"))


def test_plugin_is_installed():
    assert "progressive-distillation" in {ep.name for ep in entry_points(group="trilemma")}


class TestProgressiveDistillationContract(ModelContract):
    """DDIM at k steps is k NFE; three training steps cross into the second round."""

    model_class = ProgressiveDistillation
    config = STUDENT
    samplers = ("ddim:steps=2", "ddim:steps=4")
    expected_nfe = {"ddim-2": 2, "ddim-4": 4}
    teacher = staticmethod(small_teacher)


def test_one_ddim_step_with_the_target_lands_where_two_teacher_steps_land():
    """The target's defining property (Algorithm 2), for any teacher: DDIM from z_t with x̂ = x̃ is z_{t''}."""
    d = GaussianDiffusion(SCHEDULES["cosine"](100))
    abar_t, abar_mid, abar_next = d.abar(80), d.abar(60), d.abar(40)
    generator = torch.Generator().manual_seed(0)
    z_t, guess_1, guess_2 = (torch.randn(3, 1, 28, 28, generator=generator, dtype=torch.float64) for _ in range(3))
    z_next = ddim_to(ddim_to(z_t, guess_1, abar_t, abar_mid), guess_2, abar_mid, abar_next)
    target = distillation_target(z_t, z_next, abar_t, abar_next)
    assert torch.allclose(ddim_to(z_t, target, abar_t, abar_next), z_next, atol=1e-10)


def test_a_teacher_with_an_exact_denoiser_is_distilled_into_the_same_denoiser():
    """All data at one point x*: the exact denoiser says x* everywhere, two of its DDIM steps stay on
    the line from x* through the noise, and the target is x* itself, so a student whose v gives x̂ =
    x* has zero loss."""
    torch.manual_seed(0)
    point = torch.rand(1, 1, 28, 28)
    teacher = small_teacher()
    teacher.predictor = lambda clip=True: (lambda z, t, abar: (point.expand_as(z) * 2 - 1, None))
    student = ProgressiveDistillation(ProgressiveDistillation.Config(**STUDENT, init_from_teacher=False))
    student.attach_teacher(teacher)
    student.optimizers = student.configure_optimizers()
    d = student.diffusion

    def exact_v(z, t):
        abar = torch.tensor([d.abar(int(s)) for s in t], dtype=z.dtype).view(-1, 1, 1, 1)
        return ((abar.sqrt() * z - (point * 2 - 1)) / (1 - abar).sqrt()).requires_grad_()

    student.network.forward = exact_v
    assert student.training_step(point.expand(6, -1, -1, -1).clone(), 0)["loss"].item() < 1e-8


def test_each_round_halves_the_steps_and_starts_from_the_students_average():
    student = ProgressiveDistillation(ProgressiveDistillation.Config(**STUDENT))
    student.attach_teacher(small_teacher())
    student.optimizers = student.configure_optimizers()
    assert [student.student_steps(r) for r in range(2)] == [4, 2]
    batch = torch.rand(4, 1, 28, 28)
    for step in range(2):
        student.training_step(batch, step)
    assert int(student.round) == 0
    average = {k: v.clone() for k, v in student.ema.average.state_dict().items()}
    student.training_step(batch, 2)
    assert int(student.round) == 1
    for key, value in student.round_teacher.state_dict().items():
        assert torch.equal(value, average[key])
    assert student.sample(2).shape == (2, 1, 28, 28)  # at start_steps / 2^rounds = 2 steps


def test_a_teacher_on_another_schedule_or_without_a_diffusion_is_refused():
    student = ProgressiveDistillation(ProgressiveDistillation.Config(**STUDENT))
    with pytest.raises(TypeError, match="is not its teacher"):
        student.attach_teacher(DDPM(DDPM.Config(**SMALL, timesteps=20, objective="v", schedule="linear")))
    with pytest.raises(TypeError, match="offers no diffusion"):
        student.attach_teacher(torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="multiple of 2"):
        ProgressiveDistillation(ProgressiveDistillation.Config(**{**STUDENT, "start_steps": 6}))
