"""Tiny fake model plugins for the core tests (also installed as a plugin distribution)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import trilemma


@dataclass
class TinyConfig(trilemma.ModelConfig):
    hidden: int = 8
    lr: float = 1e-2
    fail_at_step: int = -1
    nan_at_step: int = -1
    calls_per_sample: int = 1
    chunks: int = 1
    step_sleep: float = 0.0


class Tiny(trilemma.GenerativeModel):
    """A one-hidden-layer generator trained to match the mean image."""

    name = "tiny"
    Config = TinyConfig
    data_channels = (1, 3)
    nfe = 1  # what the model "claims"; the harness must ignore it

    def __init__(self, config=None, channels=1):
        super().__init__(config, channels)
        self.net = nn.Sequential(nn.Linear(4, self.config.hidden), nn.ReLU(), nn.Linear(self.config.hidden, 784 * channels))

    def configure_optimizers(self):
        return {"adam": torch.optim.Adam(self.parameters(), lr=self.config.lr)}

    def training_step(self, batch, step):
        if step == self.config.fail_at_step:
            raise RuntimeError(f"{self.name} exploded on purpose at step {step}")
        if self.config.step_sleep:
            time.sleep(self.config.step_sleep)
        z = torch.randn(len(batch), 4, device=batch.device)
        loss = F.mse_loss(torch.sigmoid(self.net(z)).view_as(batch), batch)
        if step == self.config.nan_at_step:
            loss = loss * float("nan")
        opt = self.optimizers["adam"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss}

    def sample(self, n, generator=None):
        z = torch.randn(n, 4, generator=generator, device=self.device)
        out = None
        for _ in range(self.config.calls_per_sample):
            parts = [self.net(part) for part in z.chunk(self.config.chunks)]
            out = torch.cat(parts)
            z = z + 0.01 * out[:, :4]
        return torch.sigmoid(out).view(n, self.channels, 28, 28)

    def sampling_networks(self):
        return [self.net]


class TinyExploding(Tiny):
    name = "tiny-exploding"

    @dataclass
    class Config(TinyConfig):
        fail_at_step: int = 1


class TinyNaN(Tiny):
    name = "tiny-nan"

    @dataclass
    class Config(TinyConfig):
        nan_at_step: int = 1


class TinyThreeCalls(Tiny):
    """Calls its network three times per sample, in two chunks, while claiming one."""

    name = "tiny-k3"

    @dataclass
    class Config(TinyConfig):
        calls_per_sample: int = 3
        chunks: int = 2


class TinyBadSamples(Tiny):
    name = "tiny-bad-samples"

    def sample(self, n, generator=None):
        return super().sample(n, generator) * 3 - 1  # outside [0, 1]


class TinySlow(Tiny):
    name = "tiny-slow"

    @dataclass
    class Config(TinyConfig):
        step_sleep: float = 0.5


class TinySteps(Tiny):
    """Offers a sampler method with parameters: ``loop:steps=k`` calls its network k times."""

    name = "tiny-steps"
    samplers = ("loop:steps=2",)
    presets = {"smoke": {"samplers": (*trilemma.grid("loop", steps=(1, 3)),)}}

    def loop(self, n, generator=None, *, steps: int, mix: float = 0.01):
        z = torch.randn(n, 4, generator=generator, device=self.device)
        for _ in range(steps):
            out = self.net(z)
            z = z + mix * out[:, :4]
        return torch.sigmoid(out).view(n, self.channels, 28, 28)

    def sampler_methods(self):
        return {"loop": self.loop, "default": self.sample}


@trilemma.hookimpl
def register_models(register):
    for cls in (Tiny, TinyExploding, TinyNaN, TinyThreeCalls, TinyBadSamples, TinySlow, TinySteps):
        register(cls)
