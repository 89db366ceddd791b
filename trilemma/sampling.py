"""Drawing samples from a model, with network function evaluations counted by the harness."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from trilemma.errors import BadSamples
from trilemma.model import GenerativeModel
from trilemma.nfe import NFECheck, NFECounter
from trilemma.samplers import Sampler


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_samples(images: torch.Tensor, n: int, channels: int, where: str) -> None:
    """Raise ``BadSamples`` unless ``images`` is n×channels×28×28 finite floats in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        raise BadSamples(f"{where} returned {type(images).__name__}, not a tensor")
    if tuple(images.shape) != (n, channels, 28, 28):
        raise BadSamples(f"{where} returned shape {tuple(images.shape)}, expected {(n, channels, 28, 28)}")
    if not images.is_floating_point():
        raise BadSamples(f"{where} returned {images.dtype}, expected floats in [0, 1]")
    if not torch.isfinite(images).all():
        raise BadSamples(f"{where} returned non-finite values")
    low, high = images.min().item(), images.max().item()
    if low < -1e-4 or high > 1 + 1e-4:
        raise BadSamples(f"{where} returned values in [{low:.3g}, {high:.3g}], expected [0, 1]")


@dataclass
class Samples:
    """Validated samples and what drawing them cost."""

    images: torch.Tensor  # N×C×28×28 floats in [0, 1], on the CPU
    nfe_per_sample: float  # counted by forward hooks on sampling_networks()
    seconds: float
    nfe_check: NFECheck | None = None  # the FLOP cross-check on a probe batch, when it was made


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@torch.no_grad()
def draw(model: GenerativeModel, sampler: Sampler, n: int, *, batch_size: int, seed: int,
         where: str = "sampler", progress: bool = False) -> Samples:
    """Draw ``n`` validated samples in batches, counting NFE through forward hooks."""
    from tqdm.auto import tqdm

    device = model.device
    generator = make_generator(device, seed)
    counter = NFECounter(model.sampling_networks())
    chunks = []
    model.eval()
    start = time.perf_counter()
    with counter.counting():
        for begin in tqdm(range(0, n, batch_size), desc=f"sampling {where}", disable=not progress, leave=False):
            size = min(batch_size, n - begin)
            images = sampler(size, generator)
            check_samples(images, size, model.channels, where)
            chunks.append(images.detach().float().clamp(0, 1).cpu())
    synchronize(device)
    return Samples(torch.cat(chunks), counter.per_sample(n), time.perf_counter() - start)
