from importlib.metadata import entry_points

import pytest
import torch
from trilemma_ddpm import DDPM

import trilemma
from trilemma.samplers import bind, specs
from trilemma.testing import ModelContract, check_model_contract

SMALL = {"timesteps": 12, "base_channels": 8, "blocks_per_level": 1}
SAMPLERS = ["ddpm", *trilemma.grid("ddim", eta=(0.0, 1.0), steps=(6, 3)), "dpmpp2m:steps=4", "heun:steps=3"]
SMALL_NFE = {"ddpm-12": 12, "ddim-6": 6, "ddim-3": 3, "ddim-6-eta1": 6, "ddim-3-eta1": 3, "dpmpp2m-4": 4, "heun-3": 5}


def test_plugin_is_installed():
    assert "ddpm" in {ep.name for ep in entry_points(group="trilemma")}


class TestDDPMContract(ModelContract):
    """The contract, one test per property and sampler, with the harness-counted NFE of each."""

    model_class = DDPM
    config = SMALL
    samplers = SAMPLERS
    expected_nfe = SMALL_NFE

    def test_rows_are_named_after_their_specs(self, trained):
        assert list(bind(trained, specs(SAMPLERS))) == list(SMALL_NFE)


def test_sampler_specs_are_checked_and_named_canonically():
    model = DDPM(DDPM.Config(**SMALL))
    bound = bind(model, specs(["ddim:steps=3,eta=0", "ddim:steps=3,spacing=trailing", "heun:steps=2,clip=false"]))
    assert list(bound) == ["ddim-3", "ddim-3-spacingtrailing", "heun-2-clipfalse"]  # defaults dropped
    with pytest.raises(trilemma.TrilemmaError, match="unknown parameter.*valid|takes"):
        bind(model, specs(["ddim:steps=3,etta=1"]))
    with pytest.raises(trilemma.TrilemmaError, match="needs steps"):
        bind(model, specs(["ddim"]))
    with pytest.raises(trilemma.TrilemmaError, match="spacing.*not one of"):
        bind(model, specs(["ddim:steps=3,spacing=sideways"]))
    with pytest.raises(ValueError, match="all T = 12 steps"):
        bind(model, specs(["ddpm:steps=5"]))["ddpm-5"][1](1, None)


@pytest.mark.parametrize("variant", [
    {"objective": "x0", "schedule": "quadratic"},
    {"objective": "v", "schedule": "sigmoid", "self_condition": True},
    {"objective": "eps", "schedule": "cosine", "loss_weighting": "p2"},
    {"objective": "v", "loss_weighting": "min_snr"},
    {"objective": "x0", "self_condition": True, "loss_weighting": "min_snr"},
])
def test_every_variant_keeps_the_contract_with_every_sampler(variant):
    check_model_contract(DDPM, {**SMALL, **variant}, expected_nfe=SMALL_NFE, samplers=SAMPLERS)


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_every_spacing_keeps_the_contract(spacing):
    chosen = [f"ddim:steps=3,spacing={spacing}", f"dpmpp2m:steps=4,spacing={spacing}", f"heun:steps=3,spacing={spacing}"]
    check_model_contract(DDPM, {**SMALL, "objective": "v"}, samplers=chosen,
                         expected_nfe={f"ddim-3-spacing{spacing}": 3, f"dpmpp2m-4-spacing{spacing}": 4,
                                       f"heun-3-spacing{spacing}": 5})


def test_self_conditioning_feeds_the_previous_estimate_at_no_extra_evaluation():
    torch.manual_seed(0)
    model = DDPM(DDPM.Config(**SMALL, self_condition=True)).eval()
    assert model.unet.stem.in_channels == 2
    seen = []
    model.ema.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, 1:].abs().sum().item()))
    with torch.no_grad():
        model.sampler_methods()["ddim"](2, torch.Generator().manual_seed(0), steps=3)
    assert len(seen) == 3 and seen[0] == 0 and seen[1] > 0 and seen[2] > 0  # zeros first, then x̂_0


def test_unet_shapes_attention_and_skips():
    model = DDPM(DDPM.Config(base_channels=16, channel_mults=(1, 2, 4), blocks_per_level=2))
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0, 5, 999])
    assert model.unet(x, t).shape == x.shape
    names = {type(m).__name__ for m in model.unet.modules()}
    assert {"ResBlock", "SelfAttention", "GroupNorm"} <= names
    stacked = DDPM(DDPM.Config(base_channels=8, blocks_per_level=1), channels=3)
    assert stacked.unet(torch.randn(2, 3, 28, 28), torch.tensor([1, 2])).shape == (2, 3, 28, 28)


def test_ema_tracks_the_trained_weights():
    model = DDPM(DDPM.Config(**SMALL, ema_decay=0.9))
    model.optimizers = model.configure_optimizers()
    before = [p.clone() for p in model.ema.parameters()]
    for step in range(5):
        model.training_step(torch.rand(4, 1, 28, 28), step)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.ema.parameters(), strict=True))
    assert all(not p.requires_grad for p in model.ema.parameters())


def test_variational_bound_in_bits_per_dimension():
    torch.manual_seed(0)
    model = DDPM(DDPM.Config(**SMALL, objective="v")).eval()
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        result = model.log_likelihood(images, torch.Generator().manual_seed(0))
    assert result.kind == "vlb" and result.nats.shape == (3,) and torch.isfinite(result.nats).all()
    assert (result.nats < 0).all()  # a bound on a probability of discrete images
