"""Drawing samples from a model, with network function evaluations counted by the harness."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from trilemma.errors import BadSamples
from trilemma.model import GenerativeModel, Sampler


class NFECounter:
    """Counts forward calls of the given networks, weighted by batch size.

    ``per_sample(n)`` is the sum of the batch sizes of all calls divided by ``n``, so a sampler
    that runs its network k times on the whole batch (or on chunks of it) scores k.
    """

    def __init__(self, networks: Sequence[nn.Module]) -> None:
        if not networks:
            raise ValueError("sampling_networks() returned no networks; NFE cannot be counted")
        self.networks = list(networks)
        self.items = 0
        self.calls = 0

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        self.calls += 1
        self.items += int(first.shape[0]) if first is not None and first.dim() > 0 else 1

    @contextmanager
    def counting(self) -> Iterator[NFECounter]:
        handles = [net.register_forward_pre_hook(self._hook, with_kwargs=True) for net in self.networks]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def per_sample(self, n: int) -> float:
        return self.items / n


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
    images: torch.Tensor  # N×C×28×28 floats in [0, 1], on the CPU
    nfe_per_sample: float
    seconds: float


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
