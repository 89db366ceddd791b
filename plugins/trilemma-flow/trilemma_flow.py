"""A normalizing flow with an exact density: multiscale Glow (Kingma & Dhariwal 2018) in the
RealNVP multiscale architecture (Dinh, Sohl-Dickstein & Bengio 2017, §3.6), built from the
``normflows`` library's layers (Stimper et al. 2023): each Glow block is ActNorm, an invertible
1×1 convolution and an affine coupling layer; a squeeze halves the resolution between levels, and
half of the variables leave as latents at each level. A logit transform (RealNVP, §4.1) maps the
dequantized image to the real line.

Training maximises the exact log-density of uniformly dequantized images, x = (pixel + u)/256 with
u ~ U[0, 1) (Theis, van den Oord & Bethge 2016): log p(pixel) ≥ E_u log p((pixel + u)/256) − D log 256,
the bound every flow paper reports as bits per dimension (kind ``dequantized``: exact as a density
of the dequantized image, a bound on the 8-bit image's). Sampling is one pass of the inverse flow.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import normflows as nf
import torch
from torch import nn

import trilemma


@dataclass
class GlowConfig(trilemma.ModelConfig):
    levels: int = 2  # 28 → 14 → 7
    blocks_per_level: int = 8
    hidden_channels: int = 64
    logit_alpha: float = 0.05
    lr: float = 1e-3
    temperature: float = 1.0  # of the latent Gaussian when sampling
    # How a coupling's network output h becomes its scale. "softclamp": exp of the soft-clamped
    # log-scale (2α/π)·atan(h/α) (Ardizzone et al. 2019), so each coupling stretches or shrinks by at
    # most e^α in either direction. Glow's σ(h + 2) is bounded on one side only: "sigmoid" divides by
    # it when generating (the quick flow gave 21% non-finite samples), "sigmoid_inv" divides by it when
    # computing the density, and there a batch with an atypical image, amplified ~50× by each of
    # several couplings, overflowed at step 1838 of a 17,017-step run (measured: the couplings'
    # outputs went from |h| < 10 to 10^6 in one step, every parameter still small).
    scale_map: Literal["softclamp", "sigmoid", "sigmoid_inv", "exp"] = "softclamp"
    scale_clamp: float = 2.0  # α of "softclamp"


class SoftClampCoupling(nf.flows.AffineCoupling):
    """An affine coupling whose log-scale is soft-clamped, s = (2α/π)·atan(h/α) (Ardizzone et al. 2019,
    "Guided Image Generation with Conditional Invertible Neural Networks", their soft clamping):
    near h for small h, never beyond ±α, so neither direction can stretch a coupling's input by more
    than e^α. normflows' conventions: ``forward`` generates, ``inverse`` maps data to latents."""

    def __init__(self, param_map: nn.Module, clamp: float) -> None:
        super().__init__(param_map, scale=True, scale_map="exp")
        self.clamp = clamp

    def _shift_and_log_scale(self, z1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        param = self.param_map(z1)
        return param[:, 0::2], (2 * self.clamp / math.pi) * torch.atan(param[:, 1::2] / self.clamp)

    def forward(self, z: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        z1, z2 = z
        shift, log_scale = self._shift_and_log_scale(z1)
        return [z1, z2 * torch.exp(log_scale) + shift], log_scale.flatten(1).sum(1)

    def inverse(self, z: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        z1, z2 = z
        shift, log_scale = self._shift_and_log_scale(z1)
        return [z1, (z2 - shift) * torch.exp(-log_scale)], -log_scale.flatten(1).sum(1)


def glow_block(channels: int, c: GlowConfig) -> nf.flows.GlowBlock:
    """normflows' Glow block (coupling, 1×1 convolution, ActNorm), its coupling soft-clamped when asked."""
    library_map = "exp" if c.scale_map == "softclamp" else c.scale_map
    block = nf.flows.GlowBlock(channels, c.hidden_channels, split_mode="channel", scale=True, scale_map=library_map)
    if c.scale_map == "softclamp":
        for coupling_block in block.flows:
            if isinstance(coupling_block, nf.flows.AffineCouplingBlock):
                coupling_block.flows[1] = SoftClampCoupling(coupling_block.flows[1].param_map, c.scale_clamp)
    return block


def glow(channels: int, c: GlowConfig) -> nf.MultiscaleFlow:
    """The multiscale flow of normflows' Glow example, sized for 28×28 images."""
    q0, merges, flows = [], [], []
    for i in range(c.levels):
        level = [glow_block(channels * 2 ** (c.levels + 1 - i), c) for _ in range(c.blocks_per_level)]
        flows.append([*level, nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            shape = (channels * 2 ** (c.levels - i), 28 // 2 ** (c.levels - i), 28 // 2 ** (c.levels - i))
        else:
            shape = (channels * 2 ** (c.levels + 1), 28 // 2 ** c.levels, 28 // 2 ** c.levels)
        q0.append(nf.distributions.DiagGaussian(shape, trainable=False))
    return nf.MultiscaleFlow(q0, flows, merges, transform=nf.transforms.Logit(alpha=c.logit_alpha), class_cond=False)


class Generate(nn.Module):
    """The generative direction of the flow as a module, latents → image: one network evaluation
    (the module whose forward calls the harness counts)."""

    def __init__(self, flow: nf.MultiscaleFlow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, latents: list[torch.Tensor]) -> torch.Tensor:
        return self.flow.forward_and_log_det(latents)[0]


class Glow(trilemma.GenerativeModel):
    """Multiscale Glow trained by maximum likelihood; NFE 1."""

    name = "glow"
    Config = GlowConfig
    data_channels = (1, 3)
    precisions = ("fp32",)  # log-determinants and LU-parametrised 1×1 convolutions want float32
    presets = {
        "smoke": {"config": {"blocks_per_level": 2, "hidden_channels": 8}},
        # At lr 1e-3 the quick run diverged at step 659 (seed 0, a 2-core AMD EPYC). At 5e-4 it trained
        # there but diverged at step 529 (non-finite NLL) on a 2-core Intel Xeon with AVX-512 and AMX,
        # deterministically (fp32, one thread: the kernels' summation order differs); 3e-4 and 2e-4
        # trained on both. 2e-4 leaves a margin. Those divergences were σ(h + 2) couplings (0.2.x); at 2e-4
        # they still overflowed at step 1838 of the 17,017 steps of a 0.02-PFLOP run, which the
        # soft-clamped couplings of 0.3.0 prevent by construction.
        "quick": {"config": {"blocks_per_level": 4, "hidden_channels": 32, "lr": 2e-4},
                  "budget": {"train_images": 48_000, "batch_size": 64}},
        "standard": {"budget": {"train_images": 1_280_000, "batch_size": 128}},
    }

    def __init__(self, config: GlowConfig | None = None, channels: int = 1) -> None:
        super().__init__(config, channels)
        with warnings.catch_warnings():  # normflows factorises its 1×1 convolutions with the deprecated torch.lu
            warnings.simplefilter("ignore", UserWarning)
            self.flow = glow(channels, self.config)
        self.generate = Generate(self.flow)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": torch.optim.Adam(self.flow.parameters(), lr=self.config.lr)}

    def dequantize(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(pixel + u)/256 for images given as floats in [0, 1] (k/255) or uint8."""
        pixels = images.float() if images.dtype == torch.uint8 else (images * 255).round()
        return (pixels + torch.rand(pixels.shape, generator=generator, device=pixels.device)) / 256

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():  # normflows calls the deprecated torch.lu in its 1×1 convolutions
            warnings.simplefilter("ignore", UserWarning)
            return self.flow.log_prob(x, None)

    def training_step(self, batch: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        x = self.dequantize(batch)
        nll = -self._log_prob(x).mean()
        optimizer = self.optimizers["adam"]
        optimizer.zero_grad(set_to_none=True)
        nll.backward()
        nn.utils.clip_grad_norm_(self.flow.parameters(), 100.0)
        optimizer.step()
        bits = nll / (x[0].numel() * math.log(2)) + 8
        return {"nll": nll, "bits_per_dim": bits}

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        latents = [q.loc + q.log_scale.exp() * self.config.temperature *
                   torch.randn((n, *q.shape), generator=generator, device=self.device) for q in self.flow.q0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return self.generate(latents).clamp(0, 1)

    def sampling_networks(self) -> list[nn.Module]:
        return [self.generate]

    def log_likelihood(self, images: torch.Tensor, generator: torch.Generator | None = None,
                       samples: int = 1) -> trilemma.LogLikelihood:
        """The uniform-dequantization bound on the 8-bit image's log P (Theis et al. 2016, eq. 6):
        log p((pixel + u)/256) − D·log 256 with u ~ U[0, 1)^D, the usual flow bits per dimension,
        estimated with one u per image (``samples`` = 1, what a run reports). With K ``samples`` it is
        the importance-weighted estimate log (1/K) Σ_k p(x + u_k) (the proposal is the uniform
        itself), still a bound in expectation and a tighter one as K grows (Burda et al. 2016)."""
        draws = torch.stack([self._log_prob(self.dequantize(images, generator)) for _ in range(samples)])
        log_density = torch.logsumexp(draws, dim=0) - math.log(samples)
        return trilemma.LogLikelihood(log_density - images[0].numel() * math.log(256), "dequantized")


@trilemma.hookimpl
def register_models(register) -> None:
    register(Glow)
