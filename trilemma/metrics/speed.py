"""Sampling speed: NFE per sample (counted by the harness), wall time per sample, throughput,
batch-1 latency and peak device memory, timed after a warm-up with device synchronisation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from trilemma.hookspecs import hookimpl
from trilemma.metrics import EvalContext, Metric
from trilemma.sampling import make_generator, synchronize


@torch.no_grad()
def time_sampler(ctx: EvalContext, batch_size: int, repeats: int) -> float:
    """Median seconds for one call of the sampler on ``batch_size`` samples, after a warm-up."""
    generator = make_generator(ctx.device, ctx.seed + 1)
    ctx.model.eval()
    ctx.sampler(batch_size, generator)  # warm-up: allocations, cuDNN autotuning, lazy init
    times = []
    for _ in range(max(1, repeats)):
        synchronize(ctx.device)
        start = time.perf_counter()
        ctx.sampler(batch_size, generator)
        synchronize(ctx.device)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


class SpeedMetric(Metric):
    name = "speed"

    def compute(self, ctx: EvalContext) -> dict[str, Any]:
        row: dict[str, Any] = {"nfe": ctx.samples.nfe_per_sample}
        if ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(ctx.device)
        per_sample = {}
        for batch_size in ctx.preset.speed_batch_sizes:
            seconds = time_sampler(ctx, batch_size, ctx.preset.speed_repeats)
            per_sample[batch_size] = seconds / batch_size
            row[f"ms_per_sample_b{batch_size}"] = 1000 * seconds / batch_size
            if batch_size == 1:
                row["latency_ms_batch1"] = 1000 * seconds
        largest = max(per_sample)
        row["ms_per_sample"] = 1000 * per_sample[largest]
        row["samples_per_s"] = 1 / per_sample[largest]
        row.setdefault("latency_ms_batch1", math.nan)
        row["sampling_peak_mem_bytes"] = (
            torch.cuda.max_memory_allocated(ctx.device) if ctx.device.type == "cuda" else math.nan
        )
        return row

    def protocol(self, ctx: EvalContext) -> dict[str, Any]:
        return {
            "nfe": "forward calls of sampling_networks(), weighted by batch size, per sample",
            "batch_sizes": list(ctx.preset.speed_batch_sizes),
            "repeats": ctx.preset.speed_repeats,
            "ms_per_sample": f"median over repeats after one warm-up, at batch size {max(ctx.preset.speed_batch_sizes)}",
            "device": str(ctx.device),
        }


@hookimpl
def register_metrics(register: Callable[..., None]) -> None:
    register(SpeedMetric())
