"""A small fully connected VAE (Kingma & Welling 2014): the tutorial plugin of trilemma's docs."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import trilemma


@dataclass
class Config(trilemma.ModelConfig):  # defaults sized for MNIST; unknown keys are rejected
    latent_dim: int = 16
    hidden: int = 256
    lr: float = 1e-3


class MyModel(trilemma.GenerativeModel):
    name = "mymodel"  # the registry name
    Config = Config
    data_channels = (1,)  # add 3 if it can train on Stacked-MNIST
    presets = {"smoke": {"config": {"hidden": 32}}}

    def __init__(self, config=None, channels=1):
        super().__init__(config, channels)
        c, pixels = self.config, channels * 28 * 28
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(pixels, c.hidden), nn.ReLU(), nn.Linear(c.hidden, 2 * c.latent_dim))
        self.decoder = nn.Sequential(nn.Linear(c.latent_dim, c.hidden), nn.ReLU(), nn.Linear(c.hidden, pixels))

    def configure_optimizers(self):  # called once, after the model is on its device
        return {"adam": torch.optim.Adam(self.parameters(), lr=self.config.lr)}

    def training_step(self, batch, step):  # batch: N×C×28×28 floats in [0, 1]
        mean, logvar = self.encoder(batch).chunk(2, dim=1)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()  # reparameterisation
        logits = self.decoder(z).view_as(batch)
        reconstruction = F.binary_cross_entropy_with_logits(logits, batch, reduction="sum") / len(batch)
        kl = -0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).sum() / len(batch)
        loss = reconstruction + kl  # the negative ELBO
        self.optimizers["adam"].zero_grad()
        loss.backward()
        self.optimizers["adam"].step()
        return {"loss": loss, "kl": kl}  # a NaN/inf loss marks the model failed

    def sample(self, n, generator=None):  # n×C×28×28 floats in [0, 1], on the model's device
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=self.device)
        return torch.sigmoid(self.decoder(z)).view(n, self.channels, 28, 28)

    def sampling_networks(self):  # the harness counts NFE through these modules' forward calls
        return [self.decoder]


@trilemma.hookimpl
def register_models(register):
    register(MyModel)
