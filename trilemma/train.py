"""The training loop: budget, progress, divergence checks, checkpoints and resumption."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trilemma.errors import TrainingDiverged
from trilemma.model import GenerativeModel


@dataclass(frozen=True)
class Budget:
    """Train until ``steps`` updates or ``seconds`` of wall time, whichever comes first."""

    steps: int | None
    seconds: float | None
    batch_size: int
    checkpoint_every: int = 1000

    def __post_init__(self) -> None:
        if self.steps is None and self.seconds is None:
            raise ValueError("a training budget needs steps, seconds or both")


@dataclass
class TrainResult:
    steps: int
    seconds: float
    images_seen: int
    losses: dict[str, float] = field(default_factory=dict)
    peak_mem_bytes: float = math.nan
    resumed_from_step: int = 0


def _as_floats(losses: Any, step: int) -> dict[str, float]:
    values = {name: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for name, v in dict(losses).items()}
    bad = {name: v for name, v in values.items() if not math.isfinite(v)}
    if bad:
        raise TrainingDiverged(f"non-finite loss at step {step}: " + ", ".join(f"{k}={v}" for k, v in bad.items()))
    return values


def save_checkpoint(path: Path, model: GenerativeModel, step: int, seconds: float, done: bool) -> None:
    """Atomically write model, optimizers and progress."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({
        "model": model.state_dict(),
        "optimizers": {name: opt.state_dict() for name, opt in model.optimizers.items()},
        "step": step,
        "seconds": seconds,
        "done": done,
        "config": model.config.to_dict(),
    }, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, model: GenerativeModel) -> dict[str, Any]:
    state = torch.load(path, map_location=model.device, weights_only=False)
    model.load_state_dict(state["model"])
    for name, opt_state in state["optimizers"].items():
        model.optimizers[name].load_state_dict(opt_state)
    return state


def train(model: GenerativeModel, images: torch.Tensor, budget: Budget, *, seed: int,
          checkpoint: Path | None = None, progress: bool = True, desc: str = "train") -> TrainResult:
    """Train ``model`` on ``images`` (N×C×28×28 uint8, already on the model's device).

    Batches are drawn by indexing a seeded permutation on the device; each epoch reshuffles. If
    ``checkpoint`` exists it is resumed (a finished one is loaded and returned as is).
    """
    from tqdm.auto import tqdm

    device = model.device
    if not model.optimizers:
        model.optimizers = model.configure_optimizers()
    start_step, spent = 0, 0.0
    if checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint, model)
        start_step, spent = state["step"], state["seconds"]
        if state["done"]:
            return TrainResult(start_step, spent, start_step * budget.batch_size, resumed_from_step=start_step)
    generator = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed + start_step)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    n = images.shape[0]
    steps_per_epoch = max(1, n // budget.batch_size)
    order = torch.randperm(n, generator=generator, device=device)
    model.train()
    step, losses = start_step, {}
    began = time.perf_counter()
    bar = tqdm(total=budget.steps, initial=start_step, desc=desc, disable=not progress,
               unit="step", dynamic_ncols=True, mininterval=1.0)
    try:
        while True:
            elapsed = spent + time.perf_counter() - began
            if (budget.steps is not None and step >= budget.steps) or (
                budget.seconds is not None and elapsed >= budget.seconds
            ):
                break
            within = step % steps_per_epoch
            if within == 0 and step > start_step:
                order = torch.randperm(n, generator=generator, device=device)
            index = order[within * budget.batch_size : (within + 1) * budget.batch_size]
            batch = images[index].float().div_(255)
            losses = _as_floats(model.training_step(batch, step), step)
            step += 1
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=False)
            if checkpoint is not None and step % budget.checkpoint_every == 0:
                save_checkpoint(checkpoint, model, step, spent + time.perf_counter() - began, done=False)
    finally:
        bar.close()
    seconds = spent + time.perf_counter() - began
    if checkpoint is not None:
        save_checkpoint(checkpoint, model, step, seconds, done=True)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else math.nan
    return TrainResult(step, seconds, step * budget.batch_size, losses, peak, resumed_from_step=start_step)
