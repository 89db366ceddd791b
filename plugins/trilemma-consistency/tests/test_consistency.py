from importlib.metadata import entry_points

import pytest
import torch
from trilemma_consistency import Consistency, ConsistencyDistilled, pseudo_huber
from trilemma_flow_matching import FlowMatching

from trilemma.testing import ModelContract

SMALL = {"base_channels": 8, "blocks_per_level": 1}


def small_teacher() -> FlowMatching:
    return FlowMatching(FlowMatching.Config(**SMALL))


def test_plugin_is_installed():
    assert "consistency" in {ep.name for ep in entry_points(group="trilemma")}  # registers both models


class TestConsistencyTrainingContract(ModelContract):
    """k-step consistency sampling is k NFE."""

    model_class = Consistency
    config = {**SMALL, "double_every": 1}
    samplers = ("multistep:steps=1", "multistep:steps=2", "multistep:steps=4")
    expected_nfe = {"multistep-1": 1, "multistep-2": 2, "multistep-4": 4}


class TestConsistencyDistillationContract(ModelContract):
    model_class = ConsistencyDistilled
    config = {**SMALL, "discretization_max": 4}
    samplers = ("multistep:steps=1", "multistep:steps=2")
    expected_nfe = {"multistep-1": 1, "multistep-2": 2}
    teacher = staticmethod(small_teacher)


def test_the_boundary_condition_holds_by_construction():
    """f(x, 1) = x for any network (Song et al. 2023, eq. 5: c_skip(1) = 1, c_out(1) = 0)."""
    model = Consistency(Consistency.Config(**SMALL))
    torch.nn.init.normal_(next(model.network.parameters()), std=3.0)
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(model.consistency(model.network, x, torch.ones(3)), x)


class AffineFlow(torch.nn.Module):
    """A teacher whose ODE is straight, x_t = (1 + t)·z + t (from z at t = 0 to 2z + 1 at t = 1)."""

    name = "affine"

    def velocity_at(self, x, t):
        t = t.view(-1, 1, 1, 1)
        return (x - t) / (1 + t) + 1


def exact_network(x, t1000):
    """F of the affine flow's exact consistency function f(x, t) = 2·(x − t)/(1 + t) + 1 = x + (1 − t)·F."""
    t = (t1000 / 1000).view(-1, 1, 1, 1)
    return (x + 1) / (1 + t)


def test_distillation_loss_is_zero_for_the_exact_consistency_function_of_a_straight_teacher():
    """Euler is exact on a straight ODE, so x̂_{t_{n+1}} is on x_{t_n}'s trajectory and the exact f
    maps both to its end: the loss of eq. 7 vanishes."""
    torch.manual_seed(0)
    model = ConsistencyDistilled(ConsistencyDistilled.Config(**SMALL, init_from_teacher=False))
    model.attach_teacher(AffineFlow())
    model.optimizers = model.configure_optimizers()
    model.network.forward = lambda x, t1000: exact_network(x, t1000).requires_grad_()
    assert model.training_step(torch.rand(8, 1, 28, 28), 0)["loss"].item() < 1e-6


def test_training_pairs_lie_on_one_straight_line_and_distillation_pairs_follow_the_teacher():
    x, z = torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)
    n = torch.tensor([0, 3, 5, 9])
    x_t, t, x_next, t_next = Consistency(Consistency.Config(**SMALL)).pair(x, z, n, 10)
    assert torch.allclose(t_next - t, torch.full((4,), 0.1))
    for point, time in ((x_t, t), (x_next, t_next)):
        assert torch.allclose(point, (1 - time).view(-1, 1, 1, 1) * z + time.view(-1, 1, 1, 1) * x, atol=1e-6)
    student = ConsistencyDistilled(ConsistencyDistilled.Config(**SMALL, init_from_teacher=False))
    student.attach_teacher(AffineFlow())
    x_t, t, x_next, _ = student.pair(x, z, n, 10)
    assert torch.allclose(x_next, x_t + 0.1 * AffineFlow().velocity_at(x_t, t), atol=1e-6)


def test_one_step_of_the_exact_consistency_function_lands_on_the_trajectorys_end():
    model = Consistency(Consistency.Config(**SMALL))
    model.ema.forward = exact_network
    z = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    sample = model.multistep(5, torch.Generator().manual_seed(1), steps=1)
    assert torch.allclose(sample, ((2 * z + 1 + 1) / 2).clamp(0, 1), atol=1e-6)


def test_the_curriculum_doubles_n_up_to_its_cap_and_distillation_keeps_it_fixed():
    model = Consistency(Consistency.Config(**SMALL, discretization_min=10, discretization_max=80, double_every=100))
    assert [model.discretization(s) for s in (0, 99, 100, 250, 10_000)] == [10, 10, 20, 40, 80]
    assert ConsistencyDistilled(ConsistencyDistilled.Config(**SMALL)).discretization(5_000) == 18


def test_pseudo_huber_is_half_the_squared_error_near_zero_and_linear_far_away():
    a = torch.zeros(2, 1, 28, 28)
    c = 0.00054 * 28
    small, large = torch.full_like(a, 1e-6), torch.full_like(a, 1.0)
    assert pseudo_huber(a, small).item() == pytest.approx(784e-12 / (2 * c), rel=1e-3)
    assert pseudo_huber(a, large).item() == pytest.approx(28.0 - c, rel=1e-6)


def test_distillation_starts_from_the_teachers_weights_and_refuses_a_teacher_without_velocities():
    teacher = small_teacher()
    student = ConsistencyDistilled(ConsistencyDistilled.Config(**SMALL))
    student.attach_teacher(teacher)
    for mine, theirs in zip(student.network.state_dict().values(), teacher.flow_network().state_dict().values(),
                            strict=True):
        assert torch.equal(mine, theirs)
    with pytest.raises(TypeError, match="offers no velocity_at"):
        ConsistencyDistilled(ConsistencyDistilled.Config(**SMALL)).attach_teacher(torch.nn.Linear(1, 1))
