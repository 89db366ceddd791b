"""What training cost: FLOPs per step, achieved GFLOP/s, and the device's measured peak.

A run's FLOPs per step come from real steps of its training (``train.counted_steps``);
``training_flops_per_step`` replays a few steps on a copy of a model, for benchmarks that time a
model's step outside a run. The peak is a matmul microbenchmark in a precision, measured once per
machine and cached.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

from trilemma.cache import CACHE
from trilemma.environment import describe_device
from trilemma.flops import FlopCounter
from trilemma.model import GenerativeModel
from trilemma.train import autocast


def training_flops_per_step(model: GenerativeModel, images: torch.Tensor, batch_size: int, precision: str,
                            steps: int = 4, seed: int = 0) -> float:
    """Mean FLOPs of one ``training_step`` over ``steps`` steps (a model may do extra work every
    few steps, a lazy regulariser say) of a deep copy of ``model``, on batches drawn from ``images``."""
    device = model.device
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        clone = copy.deepcopy(model)
        if not clone.optimizers:
            clone.optimizers = clone.configure_optimizers()
        clone.train()
        generator = torch.Generator(device=images.device).manual_seed(seed)
        with FlopCounter() as counter:
            for step in range(steps):
                index = torch.randint(0, len(images), (batch_size,), generator=generator, device=images.device)
                with autocast(device, precision):
                    clone.training_step(images[index].float().div_(255), step)
        return counter.get_total_flops() / steps
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)


def _measure_peak(device: torch.device, dtype: torch.dtype) -> float:
    """Best GFLOP/s of square matmuls over three timed trials of about a third of a second each."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start, reps = time.perf_counter(), 0
        while time.perf_counter() - start < 0.33:
            a @ b
            reps += 1
            if device.type == "cuda" and reps % 10 == 0:
                torch.cuda.synchronize(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, reps * 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def device_peak_gflops(device: torch.device, precision: str, cache_dir: Path | None = None) -> float:
    """The device's measured matmul peak in ``precision`` (fp32 uses TF32 on CUDA where enabled),
    cached per device, thread count and torch version under ``cache_dir``."""
    key = f"{describe_device(device)} | torch {torch.__version__} | {precision}"
    if (held := CACHE.peek("device-peaks", key)) is not None:
        return held
    cache = Path(cache_dir) / "device-peaks.json" if cache_dir is not None else None
    known: dict[str, float] = {}
    if cache is not None and cache.exists():
        try:
            known = json.loads(cache.read_text())
        except (OSError, ValueError):
            known = {}
    if key not in known:
        known[key] = _measure_peak(device, torch.bfloat16 if precision == "bf16" else torch.float32)
        if cache is not None:
            from trilemma.files import atomic_write_json

            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(cache, known)
    return CACHE.put("device-peaks", key, known[key])
