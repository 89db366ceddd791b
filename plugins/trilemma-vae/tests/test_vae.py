import math
from importlib.metadata import entry_points

import pytest
import torch
from trilemma_vae import VAE, VAEZ2

from trilemma.testing import check_model_contract


def test_plugin_is_installed():
    assert {"vae"} <= {ep.name for ep in entry_points(group="trilemma")}


def test_contract_and_one_nfe_per_sample():
    check_model_contract(VAE, expected_nfe={"default": 1})
    check_model_contract(VAEZ2, expected_nfe={"default": 1})


def test_two_registered_names_and_latent_sizes():
    assert VAE().config.latent_dim == 16 and VAEZ2().config.latent_dim == 2
    import trilemma

    models = trilemma.get_models()
    assert models["vae"] is VAE and models["vae-z2"] is VAEZ2


def test_loss_is_the_negative_elbo():
    torch.manual_seed(0)
    model = VAE(VAE.Config(latent_dim=4))
    x = torch.rand(6, 1, 28, 28)
    losses = model.loss(x)
    assert torch.allclose(losses["loss"], losses["reconstruction"] + losses["kl"])
    assert losses["kl"] >= 0 and losses["reconstruction"] > 0


def test_training_lowers_the_loss():
    torch.manual_seed(0)
    model = VAE(VAE.Config(latent_dim=4, filters=8))
    model.optimizers = model.configure_optimizers()
    digits = torch.zeros(4, 1, 28, 28)
    for i, digit in enumerate(digits):  # four fixed bar patterns, repeated: easy to learn
        digit[:, 4 + 4 * i : 8 + 4 * i, 4:24] = 1
    x = digits.repeat(8, 1, 1, 1)
    first = model.training_step(x, 0)["loss"].item()
    for step in range(1, 60):
        last = model.training_step(x, step)["loss"].item()
    assert last < first * 0.8


def test_discretized_continuous_bernoulli_is_the_density_integrated_over_each_bin():
    from trilemma_vae import discretized_continuous_bernoulli

    logits = torch.tensor([-25.0, -3.0, -0.2, 0.0, 1e-8, 0.7, 4.0, 25.0], dtype=torch.float64).view(-1, 1)
    levels = torch.arange(256.0).view(1, -1)
    log_p = discretized_continuous_bernoulli(logits, levels)
    assert torch.allclose(log_p.exp().sum(1), torch.ones(8, dtype=torch.float64), atol=1e-9)  # a distribution
    # Against the density integrated numerically (Simpson) over each bin.
    lam = torch.sigmoid(logits)
    u = torch.linspace(0, 1, 256 * 20 + 1, dtype=torch.float64).view(1, -1)
    density = lam**u * (1 - lam) ** (1 - u)
    density = density / torch.trapezoid(density, u, dim=1).unsqueeze(1)
    bins = torch.stack([torch.trapezoid(density[:, 20 * k: 20 * k + 21], u[:, 20 * k: 20 * k + 21], dim=1)
                        for k in range(256)], 1)
    assert torch.allclose(log_p.exp(), bins, rtol=1e-4, atol=1e-12)


def test_likelihood_is_an_elbo_over_the_256_levels():
    """Decoder term from the discretized continuous Bernoulli, minus KL(q ‖ N(0, I)) from torch.distributions."""
    from trilemma_vae import discretized_continuous_bernoulli

    torch.manual_seed(0)
    model = VAE(VAE.Config(filters=8)).eval()
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    x = images.float() / 255
    with torch.no_grad():
        result = model.log_likelihood(images, torch.Generator().manual_seed(3))
        mean, logvar = model.encoder(x)
        z = mean + torch.randn(mean.shape, generator=torch.Generator().manual_seed(3)) * (0.5 * logvar).exp()
        decoder = discretized_continuous_bernoulli(model.decoder(z), images.float()).sum((1, 2, 3))
        kl = torch.distributions.kl_divergence(torch.distributions.Normal(mean, (0.5 * logvar).exp()),
                                               torch.distributions.Normal(0.0, 1.0)).sum(1)
    assert result.kind == "elbo" and torch.allclose(result.nats, (decoder - kl).float(), rtol=1e-4)


def test_the_logistic_decoder_keeps_the_contract_on_both_channel_counts():
    check_model_contract(VAE, {"decoder": "logistic", "filters": 8}, expected_nfe={"default": 1})
    check_model_contract(VAE, {"decoder": "logistic", "filters": 8}, channels=3, expected_nfe={"default": 1})


def test_discretized_logistic_is_the_logistic_integrated_over_each_bin_even_in_the_tails():
    """Against mpmath at 50 digits: the bins' masses from the logistic CDF, including levels so far in
    a tail that the direct difference σ(a) − σ(b) is 0 or 1 − 1 in float64."""
    import mpmath
    from trilemma_vae import discretized_logistic

    mpmath.mp.dps = 50
    cases = [(0.0, 0.0), (-0.3, -2.0), (0.9, -4.0), (-1.0, -7.0), (1.0, -7.0), (0.2, 1.5)]
    levels = torch.arange(256.0, dtype=torch.float64)
    for mean, log_scale in cases:
        log_p = discretized_logistic(torch.full((256,), mean, dtype=torch.float64),
                                     torch.full((256,), log_scale, dtype=torch.float64), levels)
        assert torch.isfinite(log_p).all(), (mean, log_scale)
        assert abs(torch.logsumexp(log_p, 0).item()) < 1e-9  # a distribution over the 256 levels
        s = mpmath.exp(log_scale)

        def cdf(x, mean=mean, s=s):
            return 1 / (1 + mpmath.exp(-(x - mean) / s))

        def sf(x, mean=mean, s=s):  # 1 − cdf, without cancelling in the right tail
            return 1 / (1 + mpmath.exp((x - mean) / s))

        for k in (0, 1, 64, 128, 200, 254, 255):
            x = mpmath.mpf(2 * k) / 255 - 1
            lo, hi = x - mpmath.mpf(1) / 255, x + mpmath.mpf(1) / 255
            if x > mean:
                mass = sf(lo) - (0 if k == 255 else sf(hi))
            else:
                mass = (1 if k == 255 else cdf(hi)) - (0 if k == 0 else cdf(lo))
            expected = float(mpmath.log(mass))
            assert log_p[k].item() == pytest.approx(expected, rel=1e-9, abs=1e-9), (mean, log_scale, k)


def test_with_the_logistic_decoder_the_likelihood_is_the_elbo_it_trains_on():
    torch.manual_seed(0)
    model = VAE(VAE.Config(filters=8, decoder="logistic")).eval()
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        bound = model.log_likelihood(images, torch.Generator().manual_seed(5))
        reconstruction, kl = model.elbo_terms(images.float() / 255, torch.Generator().manual_seed(5))
    assert bound.kind == "elbo" and torch.allclose(bound.nats, -(reconstruction + kl), rtol=1e-5)
    assert (bound.nats < 0).all()  # a probability of a discrete image


def test_a_logistic_decoder_can_put_its_mass_on_black():
    """What the continuous Bernoulli cannot at the logits training reaches: a pixel at level 0 with
    probability near 1 costs almost no bits."""
    from trilemma_vae import discretized_logistic

    log_p = discretized_logistic(torch.tensor([-1.0]), torch.tensor([-7.0]), torch.tensor([0.0]))
    assert -log_p.item() / math.log(2) < 0.3
