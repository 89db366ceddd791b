from importlib.metadata import entry_points

import torch
from trilemma_flow_matching import FlowMatching

from trilemma.testing import ModelContract

SMALL = {"base_channels": 8, "blocks_per_level": 1}
SAMPLERS = ("euler:steps=4", "euler:steps=1", "midpoint:steps=3")


def test_plugin_is_installed():
    assert "flow-matching" in {ep.name for ep in entry_points(group="trilemma")}


class TestFlowMatchingContract(ModelContract):
    """Euler at k steps is k NFE, the midpoint rule 2k."""

    model_class = FlowMatching
    config = SMALL
    samplers = SAMPLERS
    expected_nfe = {"euler-4": 4, "euler-1": 1, "midpoint-3": 6}


def test_the_loss_target_is_the_straight_path_velocity():
    """With a network that returns the exact conditional velocity the loss is zero: x_t and u_t are
    those of the path (1 − t) x_0 + t x_1 (σ_min = 0)."""
    torch.manual_seed(0)
    model = FlowMatching(FlowMatching.Config(**SMALL))
    model.optimizers = model.configure_optimizers()
    batch = torch.rand(5, 1, 28, 28)

    def exact(x_t, t1000):
        t = (t1000 / 1000).view(-1, 1, 1, 1)
        x1 = batch * 2 - 1
        x0 = (x_t - t * x1) / (1 - t)
        return (x1 - x0).requires_grad_()

    model.velocity.forward = exact
    assert model.training_step(batch, 0)["loss"].item() < 1e-8


def test_euler_integrates_a_known_field_exactly_and_midpoint_is_second_order():
    """dx/dt = x from t = 0 to 1: Euler gives (1 + 1/k)^k, midpoint (1 + 1/k + 1/(2k²))^k."""
    model = FlowMatching(FlowMatching.Config(**SMALL))
    model.ema.forward = lambda x, t: x
    start = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for method, growth in (("euler", (1 + 1 / 4) ** 4), ("midpoint", (1 + 1 / 4 + 1 / 32) ** 4)):
        out = model.integrate(3, torch.Generator().manual_seed(0), steps=4, method=method)
        expected = ((start * growth + 1) / 2).clamp(0, 1)
        assert torch.allclose(out, expected, atol=1e-5), method
