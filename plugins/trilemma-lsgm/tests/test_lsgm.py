import math
from importlib.metadata import entry_points

import pytest
import torch
from trilemma_lsgm import LSGM, VPSDE

from trilemma.testing import check_model_contract

SMALL = {"vae_filters": 8, "score_base": 8, "score_blocks": 1, "ce_warmup_steps": 2, "vae_steps": 2}
SAMPLERS = ("ddim:steps=5", "ddim:steps=2", "dpmpp2m:steps=3")


def test_plugin_is_installed():
    assert "lsgm" in {ep.name for ep in entry_points(group="trilemma")}


@pytest.mark.parametrize("training", ["joint", "two_stage"])
def test_contract_and_nfe_counts_the_latent_steps_and_the_decoder(training):
    check_model_contract(LSGM, {**SMALL, "training": training}, steps=4,
                         expected_nfe={"ddim-5": 6, "ddim-2": 3, "dpmpp2m-3": 4}, samplers=SAMPLERS)


def test_importance_sampling_of_t_follows_beta_over_sigma_squared():
    sde = VPSDE()
    t, normaliser = sde.importance_sample(200_000, torch.device("cpu"))
    grid = torch.linspace(sde.t_min, 1, 400_001, dtype=torch.float64)
    density = sde.beta(grid) / -torch.expm1(-sde.integral(grid))  # β/σ²
    assert normaliser == pytest.approx(float(torch.trapezoid(density, grid)), rel=1e-3)
    for edge in (1e-3, 0.01, 0.1, 0.5):  # the CDF at a few points, against the sampled share
        inside = grid <= edge
        cdf = float(torch.trapezoid(density[inside], grid[inside])) / normaliser
        assert float((t <= edge).double().mean()) == pytest.approx(cdf, abs=0.005)


def test_the_importance_weighted_cross_entropy_is_unbiased():
    """E_{t~r}[Z/2 f(t)] = E_{t~U}[(1 − t_min) β(t)/(2σ_t²) f(t)] for any f: here f(t) = 1/(1 + t)."""
    sde = VPSDE(t_min=1e-3)
    t, normaliser = sde.importance_sample(400_000, torch.device("cpu"))
    importance = float((0.5 * normaliser / (1 + t.double())).mean())
    grid = torch.linspace(sde.t_min, 1, 400_001, dtype=torch.float64)
    exact = float(torch.trapezoid(sde.beta(grid) / -torch.expm1(-sde.integral(grid)) / (2 * (1 + grid)), grid))
    assert importance == pytest.approx(exact, rel=0.01)


@pytest.mark.parametrize("mean, std", [((0.5, -1.0, 0.0, 2.0), (0.3, 1.0, 0.1, 0.7)), ((0.0,) * 4, (1.0,) * 4)])
def test_the_cross_entropy_is_its_closed_form_for_a_gaussian_prior(mean, std):
    """With p(z_0) = N(0, I) the VP-SDE keeps p(z_t) = N(0, I), whose exact ε-prediction is σ_t z_t;
    the model's cross-entropy estimate plus Theorem 1's constant must then be the closed form
    CE(N(μ, s²) ‖ N(0, I)) = ½ Σ (log 2π + μ² + s²)."""
    torch.manual_seed(0)
    model = LSGM(LSGM.Config(**SMALL))
    mean, std = torch.tensor(mean), torch.tensor(std)
    z0 = (mean + std * torch.randn(400_000, 4)).view(-1, 4, 1, 1)

    def exact_prior(z_t, t):
        return (-torch.expm1(-model.sde.integral(t.double()))).sqrt().float().view(-1, 1, 1, 1) * z_t

    estimates = model.cross_entropy(z0, exact_prior)
    estimate = float(estimates.mean()) + model.sde.cross_entropy_constant(4)
    closed = 0.5 * (4 * math.log(2 * math.pi) + float((mean.square() + std.square()).sum()))
    error = 4 * float(estimates.std()) / math.sqrt(len(estimates))  # four standard errors (~0.2 nats)
    assert estimate == pytest.approx(closed, abs=error)


def test_joint_training_moves_every_network_and_two_stage_freezes_the_vae_after_its_steps():
    batch = torch.rand(8, 1, 28, 28)
    for training, vae_moves_late in (("joint", True), ("two_stage", False)):
        torch.manual_seed(0)
        model = LSGM(LSGM.Config(**SMALL, training=training))
        model.optimizers = model.configure_optimizers()
        for step in range(2):
            model.training_step(batch, step)
        encoder = [p.clone() for p in model.encoder.parameters()]
        score = [p.clone() for p in model.score.parameters()]
        losses = model.training_step(batch, 5)
        moved = any(not torch.equal(a, b) for a, b in zip(encoder, model.encoder.parameters(), strict=True))
        assert moved == vae_moves_late, training
        assert any(not torch.equal(a, b) for a, b in zip(score, model.score.parameters(), strict=True))
        assert all(math.isfinite(float(v.detach())) for v in losses.values())
