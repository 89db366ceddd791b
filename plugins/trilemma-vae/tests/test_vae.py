from importlib.metadata import entry_points

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


def test_elbo_is_the_negative_training_loss_per_image():
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = VAE(VAE.Config(filters=8)).eval()
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    x = images.float() / 255
    result = model.log_likelihood(images, torch.Generator().manual_seed(3))
    mean, logvar = model.encoder(x)
    z = mean + torch.randn(mean.shape, generator=torch.Generator().manual_seed(3)) * (0.5 * logvar).exp()
    recon = F.binary_cross_entropy_with_logits(model.decoder(z), x, reduction="none").sum((1, 2, 3))
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    assert result.kind == "elbo" and torch.allclose(result.nats, -(recon + kl), rtol=1e-5)
