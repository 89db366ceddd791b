"""Drawing samples from a model, every batch counted by the harness (``trilemma.nfe``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

from trilemma.errors import BadSamples
from trilemma.model import GenerativeModel
from trilemma.nfe import DrawCounter, NFECheck, draw_batches
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


def distinct_share(images: torch.Tensor) -> float:
    """The share of ``images`` that are not bit-identical copies of another one."""
    flat = images.detach().reshape(len(images), -1).contiguous().cpu().numpy()
    return len({row.tobytes() for row in flat}) / max(1, len(flat))


@dataclass
class Samples:
    """Validated samples and what drawing them cost."""

    images: torch.Tensor  # N×C×28×28 floats in [0, 1], on the CPU
    nfe_per_sample: float  # counted by forward hooks on sampling_networks()
    seconds: float  # wall time of the counted draw (counting included)
    nfe_check: NFECheck | None = None  # everything counted over the draw
    batch_seconds: tuple[tuple[int, float], ...] = ()  # (samples, wall seconds) of each call, device synchronised

    def timed_batches(self) -> tuple[int, int, float]:
        """Batch size, samples and seconds of the draw's throughput timing: its full batches, the first
        left out as the warm-up when there are others (the lone last sample is latency, not throughput)."""
        if not self.batch_seconds:
            raise ValueError("the samples carry no per-batch timing (not drawn by the harness's draw)")
        size = max(n for n, _ in self.batch_seconds)
        full = [(n, s) for n, s in self.batch_seconds if n > 1 and n * 2 > size] or list(self.batch_seconds)
        timed = full[1:] or full
        return size, sum(n for n, _ in timed), sum(s for _, s in timed)

    @property
    def counted(self) -> NFECheck:
        """What counting found over the draw; a ``ValueError`` for samples not drawn by the harness."""
        if self.nfe_check is None:
            raise ValueError("the samples carry no counts (not drawn by the harness's draw)")
        return self.nfe_check

    def head(self, n: int) -> Samples:
        """The first ``n`` samples, with the draw's counts (a subset of one draw: same model, same sampler)."""
        return replace(self, images=self.images[:n])


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@torch.no_grad()
def draw(model: GenerativeModel, sampler: Sampler, n: int, *, batch_size: int, seed: int,
         where: str = "sampler", progress: bool = False) -> Samples:
    """Draw ``n`` validated samples in batches (the last one alone), every batch counted: NFE by
    hooks and by FLOPs, the parameters used, duplicates (``trilemma.nfe``)."""
    from trilemma.progress import progress_bar

    device = model.device
    generator = make_generator(device, seed)
    model.eval()
    counter = DrawCounter(model)
    chunks, timed = [], []
    start = time.perf_counter()
    with counter.counting():
        for size in progress_bar(draw_batches(n, batch_size), enabled=progress, desc=f"sampling {where}", leave=False):
            synchronize(device)
            called = time.perf_counter()
            images = counter.call(sampler, size, generator)
            synchronize(device)
            timed.append((size, time.perf_counter() - called))
            check_samples(images, size, model.channels, where)
            chunks.append(images.detach().float().clamp(0, 1).cpu())
    synchronize(device)
    seconds = time.perf_counter() - start
    images = torch.cat(chunks)
    check = counter.result(distinct_share(images))
    return Samples(images, check.hook_nfe, seconds, check, tuple(timed))


def check_model_samplers(model_class: type[GenerativeModel], preset: str = "smoke", channels: int | None = None,
                         n: int = 3) -> dict[str, NFECheck]:
    """What counting finds for every sampler of an untrained ``model_class`` at ``preset``'s config
    (NFE does not depend on training), drawn as a run draws: what ``trilemma list`` shows."""
    from trilemma.model import resolve_config
    from trilemma.samplers import bind

    torch.manual_seed(0)
    model = model_class(resolve_config(model_class, preset, {}), channels=channels or model_class.data_channels[0])
    return {name: draw(model, sampler, n, batch_size=n - 1, seed=0, where=f"{model_class.name}/{name}").counted
            for name, (_, sampler) in bind(model, model_class.sampler_specs(preset)).items()}
