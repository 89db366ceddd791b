import math
from importlib.metadata import entry_points

import normflows as nf
import pytest
import torch
from trilemma_flow import Glow

from trilemma.testing import check_model_contract

SMALL = {"blocks_per_level": 1, "hidden_channels": 8}


def test_plugin_is_installed():
    assert "glow" in {ep.name for ep in entry_points(group="trilemma")}


def test_contract_and_one_network_evaluation_per_sample():
    check_model_contract(Glow, SMALL, expected_nfe={"default": 1})
    check_model_contract(Glow, SMALL, channels=3, expected_nfe={"default": 1})


def test_the_flow_is_invertible_and_its_likelihood_exact():
    """Change of variables checked by hand: latents → image → latents returns the latents, and log p
    from the flow equals the latent Gaussian's density plus the log-determinant of the inverse map."""
    torch.manual_seed(0)
    model = Glow(Glow.Config(**SMALL)).eval()
    x = model.dequantize(torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8))
    with torch.no_grad():
        model._log_prob(x)  # ActNorm's data-dependent initialisation
        latents, log_det = model.flow.inverse_and_log_det(x)
        back = model.generate(latents)
        log_q = sum(q.log_prob(z) for q, z in zip(model.flow.q0, latents, strict=True))
        assert torch.allclose(back, x, atol=1e-4)
        assert torch.allclose(model._log_prob(x), log_q + log_det, atol=1e-3)
        gaussian = sum(-0.5 * (z.flatten(1).square().sum(1) + z[0].numel() * math.log(2 * math.pi)) for z in latents)
        assert torch.allclose(log_q, gaussian, atol=1e-3)


def test_bits_per_dimension_of_a_trained_few_steps_flow_are_finite():
    torch.manual_seed(0)
    model = Glow(Glow.Config(**SMALL))
    model.optimizers = model.configure_optimizers()
    batch = torch.rand(8, 1, 28, 28)
    first = model.training_step(batch, 0)["bits_per_dim"].item()
    for step in range(1, 20):
        last = model.training_step(batch, step)["bits_per_dim"].item()
    assert math.isfinite(last) and last < first
    result = model.log_likelihood((batch * 255).round().to(torch.uint8), torch.Generator().manual_seed(0))
    assert result.kind == "dequantized" and torch.isfinite(result.nats).all()


def test_the_log_density_equals_the_change_of_variables_with_an_autograd_jacobian_in_float64():
    """normflows' log-determinants against the Jacobian of the whole inverse map, taken by autograd
    in float64 and its log |det| by slogdet, with every parameter perturbed so nothing is the identity."""
    torch.manual_seed(0)
    model = Glow(Glow.Config(blocks_per_level=1, hidden_channels=4)).double()
    x = model.dequantize(torch.randint(0, 256, (1, 1, 28, 28), dtype=torch.uint8)).double()
    with torch.no_grad():
        model._log_prob(x)  # ActNorm's data-dependent initialisation
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        log_p = model._log_prob(x)

    def to_latents(flat):
        latents, _ = model.flow.inverse_and_log_det(flat.view(1, 1, 28, 28))
        return torch.cat([z.flatten() for z in latents])

    jacobian = torch.autograd.functional.jacobian(to_latents, x.flatten())
    latents, _ = model.flow.inverse_and_log_det(x)
    log_q = sum(q.log_prob(z) for q, z in zip(model.flow.q0, latents, strict=True))
    assert torch.allclose(log_p, log_q + torch.linalg.slogdet(jacobian)[1], rtol=1e-9)


def test_bits_per_dimension_are_the_dequantization_bound_and_more_samples_tighten_it():
    torch.manual_seed(0)
    model = Glow(Glow.Config(**SMALL)).eval()
    images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        many = model.log_likelihood(images, torch.Generator().manual_seed(1), samples=8)
        generator = torch.Generator().manual_seed(1)  # the same eight u per image, one at a time
        ones = [model.log_likelihood(images, generator) for _ in range(8)]
    assert many.kind == ones[0].kind == "dequantized"
    singles = torch.stack([one.nats for one in ones])
    assert torch.allclose(many.nats, torch.logsumexp(singles, 0) - math.log(8))
    assert (many.nats >= singles.mean(0)).all()  # Jensen: the 8-sample estimate is never below their mean


def _couplings_say(model, magnitude, generator):
    """Every coupling's network output set to ±``magnitude`` at random, as a network that has run
    away would give: its last convolution zeroed and its bias drawn."""
    for coupling in (m for m in model.flow.modules() if isinstance(m, nf.flows.AffineCoupling)):
        last = [m for m in coupling.param_map.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        last.weight.data.zero_()
        last.bias.data = magnitude * torch.randn(last.bias.shape, generator=generator).sign()


@pytest.mark.parametrize("scale_map", ["softclamp", "sigmoid_inv", "sigmoid"])
def test_a_runaway_coupling_network_keeps_densities_and_samples_finite_only_when_soft_clamped(scale_map):
    """What diverged the quick flow at step 1838 of a 17,017-step run: couplings that can divide by a
    scale near 0 (σ(h + 2) for very negative h) turn outputs of 10^3 into inf. Soft-clamped, each
    coupling stretches by at most e^α both ways, so any network output keeps both directions finite."""
    generator = torch.Generator().manual_seed(0)
    model = Glow(Glow.Config(**SMALL, scale_map=scale_map)).eval()
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8, generator=generator)
    with torch.no_grad():
        model._log_prob(model.dequantize(images, generator))  # ActNorm's data-dependent initialisation
        _couplings_say(model, 1e3, generator)
        log_p = model._log_prob(model.dequantize(images, generator))
        latents = [torch.randn((8, *q.shape), generator=generator) for q in model.flow.q0]
        samples = model.flow.forward_and_log_det(latents)[0]
    finite = bool(torch.isfinite(log_p).all() and torch.isfinite(samples).all())
    assert finite == (scale_map == "softclamp")
