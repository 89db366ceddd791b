from importlib.metadata import entry_points

import pytest
import torch
from trilemma_ddgan import DDGAN, vp_betas

from trilemma.testing import check_model_contract

SMALL = {"base_channels": 8, "disc_width": 8, "latent_dim": 8}


def test_plugin_is_installed():
    assert "ddgan" in {ep.name for ep in entry_points(group="trilemma")}


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_contract_and_nfe_equals_t(steps):
    check_model_contract(DDGAN, {**SMALL, "timesteps": steps}, expected_nfe={f"ddgan-{steps}": steps})


def test_other_step_counts_are_rejected():
    from trilemma.errors import TrilemmaError

    with pytest.raises(TrilemmaError, match="not one of 1, 2, 4"):
        DDGAN.Config.from_dict({"timesteps": 3})


def test_vp_schedule_ends_in_noise():
    for steps in (1, 2, 4):
        abar = torch.cumprod(1 - vp_betas(steps), 0)
        assert abar[-1] < 1e-4 and (abar[1:] < abar[:-1]).all()


def test_real_pairs_have_the_forward_process_statistics():
    torch.manual_seed(0)
    model = DDGAN(DDGAN.Config(**SMALL))
    x0 = torch.full((20000, 1, 2, 2), 0.5)
    t = torch.full((20000,), 1)
    x_prev, x_t = model.real_pairs(x0, t)
    abar = torch.cumprod(1 - model.diffusion.betas, 0)
    # x_t | x_0 ~ N(√ᾱ_t x_0, 1 − ᾱ_t), whichever way it was reached.
    assert x_t.mean().item() == pytest.approx(abar[1].sqrt().item() * 0.5, abs=0.01)
    assert x_t.var().item() == pytest.approx(1 - abar[1].item(), abs=0.01)
    assert x_prev.mean().item() == pytest.approx(abar[0].sqrt().item() * 0.5, abs=0.01)


def test_the_last_step_is_the_generators_x0():
    torch.manual_seed(0)
    model = DDGAN(DDGAN.Config(**SMALL, timesteps=2)).eval()
    x_t = torch.randn(3, 1, 28, 28)
    t = torch.zeros(3, dtype=torch.long)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    with torch.no_grad():
        stepped = model.denoise_step(model.ema, x_t, t, g1)
        z = torch.randn(3, model.config.latent_dim, generator=g2)
        assert torch.allclose(stepped, model.ema(x_t, t, z), atol=1e-6)  # posterior at t = 1 is x̂_0


def test_minibatch_stddev_channel_measures_sample_diversity():
    from trilemma_ddgan import minibatch_stddev

    alike = torch.ones(8, 3, 7, 7)
    varied = torch.randn(8, 3, 7, 7)
    out_alike, out_varied = minibatch_stddev(alike, 4), minibatch_stddev(varied, 4)
    assert out_alike.shape == (8, 4, 7, 7)
    assert torch.equal(out_alike[:, :3], alike)
    assert out_alike[:, 3].max() < 1e-3 and out_varied[:, 3].min() > 0.5
    assert minibatch_stddev(torch.randn(3, 2, 7, 7), 4).shape == (3, 3, 7, 7)  # batch not a multiple of the group
    with pytest.raises(ValueError, match="stddev_group"):
        DDGAN(DDGAN.Config(**SMALL, disc_stddev_group=-1))


def test_the_latent_changes_the_generators_output():
    torch.manual_seed(0)
    model = DDGAN(DDGAN.Config(**SMALL))
    x_t, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 3])
    with torch.no_grad():
        for block in model.generator.modules():  # AdaGN starts near identity; make its effect visible
            if getattr(block, "adagn", None) is not None:
                torch.nn.init.normal_(block.adagn.weight)
        a = model.generator(x_t, t, torch.randn(2, 8))
        b = model.generator(x_t, t, torch.randn(2, 8))
    assert (a - b).abs().mean() > 1e-3
