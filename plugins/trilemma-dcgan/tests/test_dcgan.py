from importlib.metadata import entry_points

import torch
from trilemma_dcgan import DCGAN

from trilemma.testing import ModelContract


def test_plugin_is_installed():
    assert "dcgan" in {ep.name for ep in entry_points(group="trilemma")}


class TestDCGANContract(ModelContract):
    """One generator pass a sample: NFE 1."""

    model_class = DCGAN
    config = {"width": 8, "latent_dim": 8}
    expected_nfe = {"default": 1}


def test_stacked_mnist_channels_and_two_optimizers():
    model = DCGAN(DCGAN.Config(width=8), channels=3)
    assert model.sample(2).shape == (2, 3, 28, 28)
    assert set(model.configure_optimizers()) == {"generator", "discriminator"}


def test_architecture_follows_the_dcgan_guidelines():
    model = DCGAN()
    modules = list(model.modules())
    assert not any(isinstance(m, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)) for m in modules)
    assert isinstance(model.generator.net[-1], torch.nn.Tanh)
    assert any(isinstance(m, torch.nn.LeakyReLU) for m in model.discriminator.modules())
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.generator.modules())
