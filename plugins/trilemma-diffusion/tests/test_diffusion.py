"""The shared diffusion maths: schedules, objectives, weightings, the bound, and every sampler's
update against diffusers' reference schedulers (each prediction type) to 1e-5."""

import math

import numpy as np
import pytest
import torch
from trilemma_diffusion import SCHEDULES, GaussianDiffusion, UNet, discretized_gaussian_log_likelihood
from trilemma_diffusion import samplers as sampling

diffusers = pytest.importorskip("diffusers")
PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def test_schedules_end_in_noise_and_keep_their_ends_when_rescaled():
    for name, schedule in SCHEDULES.items():
        betas = schedule(1000)
        assert betas.shape == (1000,) and (betas > 0).all() and (betas < 1).all(), name
        abar = torch.cumprod(1 - betas, 0)
        assert abar[-1] < 1e-3 and abar[0] > 0.99, name
        if name in ("linear", "quadratic"):  # 1e-4 → 0.02 at T = 1000
            assert float(betas[0]) == pytest.approx(1e-4, rel=1e-3) and float(betas[-1]) == pytest.approx(0.02, rel=1e-3)
        if name != "cosine":  # rescaled by 1000/T: ᾱ_T about equal for T = 100
            abar_100 = torch.cumprod(1 - schedule(100), 0)[-1]
            assert abs(math.log(abar_100) - math.log(abar[-1])) < 0.15 * abs(math.log(abar[-1])), name
    quadratic, linear, sigmoid = SCHEDULES["quadratic"](1000), SCHEDULES["linear"](1000), SCHEDULES["sigmoid"](1000)
    assert quadratic[500] < linear[500] and abs(float(sigmoid[500]) - (1e-4 + 0.02) / 2) < 1e-4


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_every_objective_converts_back_to_x0_and_eps(objective):
    d = GaussianDiffusion(SCHEDULES["cosine"](100))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 1, 28, 28, generator=g), torch.randn(6, 1, 28, 28, generator=g)
    for t in (0, 37, 80):  # at the very end x̂_0 = (x_t − √(1 − ᾱ) ε)/√ᾱ divides by √ᾱ ≈ 0 in float32
        index = torch.full((6,), t)
        x_t = d.q_sample(x0, index, noise)
        got_x0, got_eps = d.predicted(x_t, d.target(x0, noise, index, objective), d.abar(t), objective)
        assert torch.allclose(got_x0, x0, atol=1e-4) and torch.allclose(got_eps, noise, atol=1e-4)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_min_snr_weights_every_objective_to_min_snr_gamma_in_x0_space_and_p2_to_its_formula_in_eps_space(objective):
    d = GaussianDiffusion(SCHEDULES["linear"](1000))
    g = torch.Generator().manual_seed(1)
    x0, noise, x0_hat = (torch.randn(8, 1, 4, 4, generator=g) for _ in range(3))
    t = torch.tensor([0, 10, 100, 300, 500, 700, 900, 999])
    x_t = d.q_sample(x0, t, noise)
    abar = d.alphas_cumprod[t].view(-1, 1, 1, 1).float()
    eps_hat = (x_t - abar.sqrt() * x0_hat) / (1 - abar).sqrt()
    outputs = {"eps": eps_hat, "x0": x0_hat, "v": abar.sqrt() * eps_hat - (1 - abar).sqrt() * x0_hat}
    error = (outputs[objective] - d.target(x0, noise, t, objective)).square().flatten(1).mean(1)
    x0_error = (x0_hat - x0).square().flatten(1).mean(1)
    snr = d.snr(t).float()
    weighted = d.loss_weights(t, objective, "min_snr", min_snr_gamma=5.0) * error
    assert torch.allclose(weighted, snr.clamp(max=5.0) * x0_error, rtol=1e-3)
    eps_error = (eps_hat - noise).square().flatten(1).mean(1)
    weighted = d.loss_weights(t, objective, "p2", p2_k=1.0, p2_gamma=0.5) * error
    keep = t > 0  # at t = 0 the ε error is huge and the x₀ error tiny: float32 cancels; the others are tested
    assert torch.allclose(weighted[keep], ((1 + snr) ** -0.5 * eps_error)[keep], rtol=1e-3)  # Choi et al., eq. 8
    assert (d.loss_weights(t, objective, "uniform") == 1).all()


def test_the_bin_mass_of_a_pixel_far_from_the_mean_is_its_true_log_mass_not_a_floor():
    import mpmath

    mpmath.mp.dps = 60
    std = 0.01
    x = torch.tensor([0.0, 0.0, 0.0, -1.0, 1.0], dtype=torch.float64)
    mean = torch.tensor([0.0, 0.05, -0.2, 0.1, -0.1], dtype=torch.float64)  # 0σ, 5σ, 20σ away; the end bins
    got = discretized_gaussian_log_likelihood(x, mean, math.log(std))

    def exact(x, m):
        cdf = lambda z: mpmath.ncdf(mpmath.mpf(z))  # noqa: E731
        lo, hi = (x - m - 1 / 255) / std, (x - m + 1 / 255) / std
        if x < -0.999:
            return float(mpmath.log(cdf(hi)))
        if x > 0.999:
            return float(mpmath.log(cdf(-lo)))
        return float(mpmath.log(cdf(hi) - cdf(lo) if lo < 0 else cdf(-lo) - cdf(-hi)))  # 60 digits either side

    expected = torch.tensor([exact(float(a), float(b)) for a, b in zip(x, mean, strict=True)], dtype=torch.float64)
    assert torch.allclose(got, expected, rtol=1e-9), (got, expected)
    assert got[2] < -150  # 20σ out: about −201 nats, where the old clamp floored it at log 1e-12 = −27.6


def in_float64(scheduler, betas):
    """diffusers keeps ᾱ in float32, where 1 − ᾱ_t loses about four digits at small t; give it the
    float64 constants ours use so that the comparison is of the update rules alone."""
    scheduler.betas = betas
    scheduler.alphas = 1 - betas
    scheduler.alphas_cumprod = torch.cumprod(1 - betas, 0)
    scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(scheduler, "alpha_t"):  # DPM-Solver
        scheduler.alpha_t = scheduler.alphas_cumprod.sqrt()
        scheduler.sigma_t = (1 - scheduler.alphas_cumprod).sqrt()
        scheduler.lambda_t = scheduler.alpha_t.log() - scheduler.sigma_t.log()
        scheduler.sigmas = ((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod).sqrt()
    return scheduler


def fake_network(x_t: torch.Tensor, t: float) -> torch.Tensor:
    """A smooth, deterministic stand-in for a trained network (any objective)."""
    return 0.8 * torch.tanh(x_t) + 0.1 * math.sin(t / 17)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid"])
@pytest.mark.parametrize("clip", [False, True])
def test_ddpm_step_matches_diffusers(objective, schedule, clip):
    betas = SCHEDULES[schedule](1000)
    d = GaussianDiffusion(betas)
    reference = in_float64(diffusers.DDPMScheduler(
        num_train_timesteps=1000, trained_betas=betas.numpy(), clip_sample=clip, variance_type="fixed_small",
        prediction_type=PREDICTION_TYPES[objective]), betas)
    reference.set_timesteps(1000)
    in_float64(reference, betas)
    g = torch.Generator().manual_seed(3)
    for t in (999, 500, 37, 1, 0):
        x_t = torch.randn(4, 1, 28, 28, generator=g)
        output = fake_network(x_t, t)
        expected = reference.step(output, t, x_t, generator=torch.Generator().manual_seed(7)).prev_sample
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7))
        x0, _ = d.predicted(x_t, output, d.abar(t), objective, clip=clip)
        got = d.ddpm_step(x_t, x0, t, noise if t > 0 else None)
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), (t, (got - expected).abs().max())


# diffusers' DDIM steps from t to t − T//k whatever the spacing, which is the next timestep only for
# leading and trailing spacing (with T divisible by k); ours always steps to the next timestep.
@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("steps", [50, 10])
def test_ddim_sampler_matches_diffusers(objective, spacing, eta, steps):
    betas = SCHEDULES["cosine"](1000)
    d = GaussianDiffusion(betas)
    reference = diffusers.DDIMScheduler(num_train_timesteps=1000, trained_betas=betas.numpy(), clip_sample=True,
                                        set_alpha_to_one=True, steps_offset=0, timestep_spacing=spacing,
                                        prediction_type=PREDICTION_TYPES[objective])
    reference.set_timesteps(steps)
    in_float64(reference, betas)
    assert [int(t) for t in reference.timesteps] == d.spaced(steps, spacing)
    shape = (3, 1, 28, 28)

    def predict(x_t, t, abar):
        return d.predicted(x_t, fake_network(x_t, t), abar, objective, clip=True)

    ours = sampling.ddim(d, predict, shape, torch.Generator().manual_seed(5), torch.device("cpu"), steps, eta, spacing)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=g)
    for t in reference.timesteps:
        noise = torch.randn(shape, generator=g) if eta > 0 else None
        x = reference.step(fake_network(x, int(t)), int(t), x, eta=eta, use_clipped_model_output=True,
                           variance_noise=noise).prev_sample
    assert torch.allclose(ours, x, atol=1e-5, rtol=1e-5), (ours - x).abs().max()


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [20, 10, 3])
def test_dpm_solver_pp_2m_matches_diffusers(objective, spacing, steps):
    betas = SCHEDULES["linear"](1000)
    d = GaussianDiffusion(betas)
    reference = in_float64(diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, trained_betas=betas.numpy(), algorithm_type="dpmsolver++", solver_order=2,
        solver_type="midpoint", prediction_type=PREDICTION_TYPES[objective], lower_order_final=True,
        final_sigmas_type="zero", thresholding=False), betas)
    times = d.spaced(steps, spacing)
    reference.set_timesteps(timesteps=times)
    shape = (3, 1, 28, 28)

    def predict(x_t, t, abar):
        return d.predicted(x_t, fake_network(x_t, t), abar, objective)

    ours = sampling.dpm_solver_pp_2m(d, predict, shape, torch.Generator().manual_seed(6), torch.device("cpu"),
                                     steps, spacing)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(6))
    for t in reference.timesteps:
        x = reference.step(fake_network(x, int(t)), t, x).prev_sample
    assert torch.allclose(ours, x, atol=1e-5, rtol=1e-5), (ours - x).abs().max()


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
@pytest.mark.parametrize("steps", [10, 4])
def test_heun_matches_diffusers(objective, spacing, steps):
    betas = SCHEDULES["linear"](1000)
    d = GaussianDiffusion(betas)
    reference = in_float64(diffusers.HeunDiscreteScheduler(
        num_train_timesteps=1000, trained_betas=betas.numpy(), prediction_type=PREDICTION_TYPES[objective],
        timestep_spacing=spacing), betas)
    reference.set_timesteps(steps)
    # diffusers rounds its σ to float32 (and the fake network amplifies any difference): give it ours.
    sigmas = torch.tensor([d.sigma_at(float(t)) for t in reference.timesteps[::2]] + [0.0], dtype=torch.float64)
    reference.sigmas = torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])
    shape = (3, 1, 28, 28)
    calls = []

    def predict(x_t, t, abar):
        calls.append(t)
        return d.predicted(x_t, fake_network(x_t, t), abar, objective)

    ours = sampling.heun(d, predict, shape, torch.Generator().manual_seed(8), torch.device("cpu"), steps, spacing)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(8)) * math.sqrt(float(sigmas[0]) ** 2 + 1)
    for t in reference.timesteps:
        model_input = reference.scale_model_input(x, t)
        x = reference.step(fake_network(model_input, float(t)), t, x).prev_sample
    assert len(calls) == 2 * steps - 1
    # With ε-prediction this stand-in network drives EDM's x̃ = x_t/√ᾱ to hundreds, where float32 rounds
    # at 1e-5 absolute: the tolerance is 1e-5 of the largest magnitude (v and x_0 land within 1e-6 of
    # each other; a wrong coefficient moves the result by its own size).
    scale = max(1.0, float(x.abs().max()))
    assert torch.allclose(ours, x.float(), atol=1e-5 * scale, rtol=1e-5), ((ours - x).abs().max(), scale)


def test_every_sampler_runs_the_network_the_expected_number_of_times():
    d = GaussianDiffusion(SCHEDULES["linear"](20))
    for run, expected in ((lambda p: sampling.ancestral(d, p, (2, 1, 4, 4), None, torch.device("cpu")), 20),
                          (lambda p: sampling.ddim(d, p, (2, 1, 4, 4), None, torch.device("cpu"), 5), 5),
                          (lambda p: sampling.dpm_solver_pp_2m(d, p, (2, 1, 4, 4), None, torch.device("cpu"), 5), 5),
                          (lambda p: sampling.heun(d, p, (2, 1, 4, 4), None, torch.device("cpu"), 5), 9)):
        calls: list[float] = []

        def predict(x, t, abar, calls=calls):
            calls.append(t)
            return d.predicted(x, 0.1 * x, abar, "eps")

        run(predict)
        assert len(calls) == expected


# --- the variational bound ---------------------------------------------------------------------

def test_variational_bound_matches_an_independent_computation():
    from torch.distributions import Normal, kl_divergence

    torch.manual_seed(0)
    d = GaussianDiffusion(SCHEDULES["linear"](12))
    net = UNet(1, 8, (1, 2, 2), 1, 0.0).eval()
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    x0 = images.float() / 255 * 2 - 1
    with torch.no_grad():
        ours = d.vlb(net, x0, "eps", torch.Generator().manual_seed(7)).float()
        generator = torch.Generator().manual_seed(7)
        abar_T = d.alphas_cumprod[-1].item()
        total = kl_divergence(Normal(math.sqrt(abar_T) * x0, math.sqrt(1 - abar_T)), Normal(0.0, 1.0)).flatten(1).sum(1)
        for t in range(d.timesteps):
            noise = torch.randn(x0.shape, generator=generator)
            abar = d.alphas_cumprod[t].item()
            x_t = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * noise
            eps = net(x_t, torch.full((3,), t))
            x0_hat = (x_t - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
            abar_prev = d.alphas_cumprod[t - 1].item() if t > 0 else 1.0
            beta = d.betas[t].item()
            # the posterior mean, Ho et al. eq. 7, written out again
            c0 = math.sqrt(abar_prev) * beta / (1 - abar)
            ct = math.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar)

            def mean(x_start, c0=c0, ct=ct, x_t=x_t):
                return c0 * x_start + ct * x_t
            if t == 0:
                levels = torch.arange(256).float() / 255 * 2 - 1
                std = math.sqrt(d.posterior_variance[1].item())
                probs = discretized_gaussian_log_likelihood(levels[:, None], mean(x0_hat).reshape(1, -1), math.log(std))
                index = images.reshape(3, -1).long()  # pixel value = level index
                total = total - probs.exp().T.reshape(3, 784, 256).gather(2, index[..., None]).log().sum((1, 2))
            else:
                var = (1 - abar_prev) / (1 - abar) * beta
                step = kl_divergence(Normal(mean(x0), math.sqrt(var)), Normal(mean(x0_hat), math.sqrt(var)))
                total = total + step.flatten(1).sum(1)
    assert torch.allclose(ours, total.float(), rtol=1e-4)


def test_discretized_decoder_is_a_distribution_over_the_256_levels():
    levels = torch.arange(256).float() / 255 * 2 - 1
    for mean, std in ((0.3, 0.05), (-0.99, 0.01), (0.0, 2.0), (1.0, 0.001)):
        mass = discretized_gaussian_log_likelihood(levels, torch.full_like(levels, mean), math.log(std)).exp().sum()
        assert abs(float(mass) - 1) < 1e-6


def test_unet_takes_a_wider_input_and_fractional_timesteps():
    net = UNet(1, 8, (1, 2, 2), 1, 0.0, in_channels=2)
    out = net(torch.randn(2, 2, 28, 28), torch.tensor([0.5, 731.25]))
    assert out.shape == (2, 1, 28, 28) and torch.isfinite(out).all()
    assert np.isfinite(out.detach().numpy()).all()


def test_the_variational_bound_with_the_exact_denoiser_is_at_least_the_true_entropy():
    """Four 8-bit 2×2 images, equally likely: −log P(x) = log 4 for each, so any model's bound averages
    at least log 4 nats. The exact denoiser E[x₀ | x_t] of this mixture is a softmax over the four."""
    d = GaussianDiffusion(SCHEDULES["linear"](1000))
    levels = torch.tensor([[0, 255, 30, 200], [255, 0, 128, 64], [10, 20, 30, 40], [250, 5, 100, 180]],
                          dtype=torch.float64)
    data = (levels / 127.5 - 1).view(4, 1, 2, 2)

    def exact_denoiser(x_t, t):
        abar = d.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
        distance = (x_t[:, None] - abar.sqrt() * data[None]).square().flatten(2).sum(2)
        weights = (-distance / (2 * (1 - abar.view(-1, 1)))).softmax(1)
        return (weights[:, :, None, None, None] * data[None]).sum(1).to(x_t.dtype)

    nats = d.vlb(exact_denoiser, data.repeat(16, 1, 1, 1), objective="x0", generator=torch.Generator().manual_seed(0))
    stderr = nats.std() / math.sqrt(len(nats))
    assert nats.mean() - 3 * stderr >= math.log(4)
    assert nats.mean() < 8 * math.log(4)  # and not absurdly loose: the exact denoiser's bound is near the truth
