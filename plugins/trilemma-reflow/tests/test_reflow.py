from importlib.metadata import entry_points

import pytest
import torch
from trilemma_flow_matching import FlowMatching
from trilemma_reflow import Reflow

from trilemma.testing import ModelContract

SMALL = {"base_channels": 8, "blocks_per_level": 1}


def small_teacher() -> FlowMatching:
    return FlowMatching(FlowMatching.Config(**SMALL))


def test_plugin_is_installed():
    assert "reflow" in {ep.name for ep in entry_points(group="trilemma")}


class TestReflowContract(ModelContract):
    """Euler at k steps is k NFE of the student; the teacher's calls in training are never sampling NFE."""

    model_class = Reflow
    config = {**SMALL, "teacher_steps": 2}
    samplers = ("euler:steps=1", "euler:steps=2", "midpoint:steps=2")
    expected_nfe = {"euler-1": 1, "euler-2": 2, "midpoint-2": 4}
    teacher = staticmethod(small_teacher)


class AffineTeacher(torch.nn.Module):
    """A teacher whose transport is a known map, Z_1 = 2·Z_0 + 1, so the coupling is known exactly."""

    name = "affine"

    def transport(self, noise, *, steps, method="euler"):
        return 2 * noise + 1


def exact_velocity(x_t, t1000):
    """The straight-line velocity of the affine coupling at (x_t, t): x_t = (1 + t)·z_0 + t, v = z_0 + 1."""
    t = (t1000 / 1000).view(-1, 1, 1, 1)
    return (x_t - t) / (1 + t) + 1


def test_the_loss_is_the_straight_line_between_noise_and_the_teachers_sample():
    """With the coupling's exact straight-line velocity the loss is zero: x_t interpolates the pair
    (Z_0, teacher(Z_0)) and the target is their difference (Liu et al. 2023, eq. 1)."""
    torch.manual_seed(0)
    model = Reflow(Reflow.Config(**SMALL, init_from_teacher=False))
    model.attach_teacher(AffineTeacher())
    model.optimizers = model.configure_optimizers()
    model.velocity.forward = lambda x_t, t1000: exact_velocity(x_t, t1000).requires_grad_()
    assert model.training_step(torch.rand(6, 1, 28, 28), 0)["loss"].item() < 1e-10


def test_one_euler_step_of_a_straight_coupling_reaches_the_teachers_sample():
    """The point of reflow: on straight paths one Euler step is exact, z_0 + v(z_0, 0) = teacher(z_0)."""
    model = Reflow(Reflow.Config(**SMALL, init_from_teacher=False))
    model.ema.forward = exact_velocity
    generator = torch.Generator().manual_seed(3)
    z0 = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    expected = ((AffineTeacher().transport(z0, steps=1) + 1) / 2).clamp(0, 1)
    assert torch.allclose(model.integrate(4, generator, steps=1), expected, atol=1e-6)


def test_the_student_starts_from_its_teachers_weights_and_never_holds_them():
    teacher = small_teacher()
    torch.nn.init.normal_(next(teacher.flow_network().parameters()))
    student = Reflow(Reflow.Config(**SMALL))
    student.attach_teacher(teacher)
    for mine, theirs in zip(student.velocity.state_dict().values(), teacher.flow_network().state_dict().values(),
                            strict=True):
        assert torch.equal(mine, theirs)
    assert not any(name.startswith("teacher") or "_teacher" in name for name in student.state_dict())
    assert sum(p.numel() for p in student.parameters()) == 2 * sum(p.numel() for p in teacher.velocity.parameters())


def test_a_teacher_without_the_flow_protocol_or_another_architecture_is_refused_clearly():
    with pytest.raises(TypeError, match="offers no transport"):
        Reflow(Reflow.Config(**SMALL)).attach_teacher(torch.nn.Linear(1, 1))
    with pytest.raises(TypeError, match="cannot start from 'flow-matching'"):
        Reflow(Reflow.Config(base_channels=16, blocks_per_level=1)).attach_teacher(small_teacher())
