from importlib.metadata import entry_points

import pytest
import torch
from trilemma_ddpm import DDPM, Diffusion, cosine_betas, linear_betas

from trilemma.testing import check_model_contract

SMALL = {"timesteps": 12, "base_channels": 8, "blocks_per_level": 1, "ddim_steps": (6, 4, 3, 1)}


def test_plugin_is_installed():
    assert "ddpm" in {ep.name for ep in entry_points(group="trilemma")}


def test_contract_and_harness_counted_nfe():
    model = check_model_contract(DDPM, SMALL, expected_nfe={"ddpm-12": 12, "ddim-6": 6, "ddim-4": 4, "ddim-3": 3,
                                                            "ddim-1": 1})
    assert list(model.samplers()) == ["ddpm-12", "ddim-6", "ddim-4", "ddim-3", "ddim-1"]


def test_unet_shapes_attention_and_skips():
    model = DDPM(DDPM.Config(base_channels=16, channel_mults=(1, 2, 4), blocks_per_level=2))
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0, 5, 999])
    assert model.unet(x, t).shape == x.shape
    names = {type(m).__name__ for m in model.unet.modules()}
    assert {"ResBlock", "SelfAttention", "GroupNorm"} <= names
    stacked = DDPM(DDPM.Config(base_channels=8, blocks_per_level=1), channels=3)
    assert stacked.unet(torch.randn(2, 3, 28, 28), torch.tensor([1, 2])).shape == (2, 3, 28, 28)


def test_schedules():
    for schedule in (linear_betas, cosine_betas):
        betas = schedule(1000)
        assert betas.shape == (1000,) and (betas > 0).all() and (betas < 1).all()
        abar = torch.cumprod(1 - betas, 0)
        assert abar[-1] < 1e-3 and abar[0] > 0.99  # ends in (nearly) pure noise
    assert torch.allclose(linear_betas(1000)[[0, -1]], torch.tensor([1e-4, 0.02], dtype=torch.float64))
    # Rescaled linear schedules keep ᾱ_T about equal for other T.
    assert abs(torch.cumprod(1 - linear_betas(100), 0)[-1] - torch.cumprod(1 - linear_betas(1000), 0)[-1]) < 1e-4


def test_ema_tracks_the_trained_weights():
    model = DDPM(DDPM.Config(**{k: v for k, v in SMALL.items()}, ema_decay=0.9))
    model.optimizers = model.configure_optimizers()
    before = [p.clone() for p in model.ema.parameters()]
    for step in range(5):
        model.training_step(torch.rand(4, 1, 28, 28), step)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.ema.parameters(), strict=True))
    assert all(not p.requires_grad for p in model.ema.parameters())


def test_ddim_timesteps_are_evenly_spaced():
    diffusion = Diffusion(linear_betas(1000))
    assert diffusion.ddim_timesteps(10) == list(range(900, -1, -100))
    with pytest.raises(ValueError):
        diffusion.ddim_timesteps(0)


# --- the sampler maths against diffusers' reference schedulers ------------------------------

diffusers = pytest.importorskip("diffusers")


def in_float64(scheduler, betas):
    """diffusers keeps ᾱ in float32, where 1 − ᾱ_t loses about four digits at small t; give it the
    float64 constants ours use so that the comparison is of the update rules alone."""
    scheduler.betas = betas
    scheduler.alphas = 1 - betas
    scheduler.alphas_cumprod = torch.cumprod(1 - betas, 0)
    scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("t", [999, 500, 37, 1, 0])
def test_ddpm_step_matches_diffusers(schedule, clip, t):
    betas = linear_betas(1000) if schedule == "linear" else cosine_betas(1000)
    ours = Diffusion(betas, clip_x0=clip)
    reference = diffusers.DDPMScheduler(num_train_timesteps=1000, trained_betas=betas.numpy(), clip_sample=clip,
                                        variance_type="fixed_small", prediction_type="epsilon")
    reference.set_timesteps(1000)
    in_float64(reference, betas)
    g = torch.Generator().manual_seed(t)
    x_t, eps = torch.randn(4, 1, 28, 28, generator=g), torch.randn(4, 1, 28, 28, generator=g)
    expected = reference.step(eps, t, x_t, generator=torch.Generator().manual_seed(7)).prev_sample
    noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7))
    got = ours.ddpm_step(x_t, eps, t, noise if t > 0 else None)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), (got - expected).abs().max()


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("steps", [100, 50, 20, 10])
def test_ddim_step_matches_diffusers(schedule, clip, eta, steps):
    betas = linear_betas(1000) if schedule == "linear" else cosine_betas(1000)
    ours = Diffusion(betas, clip_x0=clip)
    reference = diffusers.DDIMScheduler(num_train_timesteps=1000, trained_betas=betas.numpy(), clip_sample=clip,
                                        set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading",
                                        prediction_type="epsilon")
    reference.set_timesteps(steps)
    in_float64(reference, betas)
    assert [int(t) for t in reference.timesteps] == ours.ddim_timesteps(steps)
    g = torch.Generator().manual_seed(steps)
    for t in (int(reference.timesteps[0]), int(reference.timesteps[len(reference.timesteps) // 2]),
              int(reference.timesteps[-1])):
        x_t, eps, noise = (torch.randn(4, 1, 28, 28, generator=g) for _ in range(3))
        expected = reference.step(eps, t, x_t, eta=eta, use_clipped_model_output=True, variance_noise=noise).prev_sample
        got = ours.ddim_step(x_t, eps, t, t - 1000 // steps, eta, noise)
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), (t, (got - expected).abs().max())


# --- the variational bound, against torch.distributions -------------------------------------------

def test_variational_bound_matches_an_independent_computation():
    import math

    from torch.distributions import Normal, kl_divergence
    from trilemma_ddpm import discretized_gaussian_log_likelihood

    torch.manual_seed(0)
    model = DDPM(DDPM.Config(**SMALL))
    d, net = model.diffusion, model.ema.eval()
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    x0 = images.float() / 255 * 2 - 1
    with torch.no_grad():
        ours = d.vlb(net, x0, torch.Generator().manual_seed(7)).float()
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
    import math

    from trilemma_ddpm import discretized_gaussian_log_likelihood

    levels = torch.arange(256).float() / 255 * 2 - 1
    for mean, std in ((0.3, 0.05), (-0.99, 0.01), (0.0, 2.0), (1.0, 0.001)):
        mass = discretized_gaussian_log_likelihood(levels, torch.full_like(levels, mean), math.log(std)).exp().sum()
        assert abs(float(mass) - 1) < 1e-6
