"""The training loop: budget, progress, divergence checks, checkpoints and resumption."""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trilemma.errors import TrainingDiverged
from trilemma.files import atomic_torch_save
from trilemma.flops import FlopCounter
from trilemma.model import GenerativeModel
from trilemma.seeds import derived_seed

#: Training steps counted under the FLOP counter: one chosen at random in each of this many equal
#: stretches of the run (every step of a shorter run).
FLOP_COUNTED_STEPS = 16


@dataclass(frozen=True)
class Budget:
    """Train for ``steps`` updates of ``batch_size`` images, under ``precision`` ("fp32", or "bf16"
    autocast); ``seconds``, when given, is a wall-time cap that may stop training earlier."""

    steps: int
    seconds: float | None
    batch_size: int
    checkpoint_every: int = 1000
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"a training budget needs a whole number of steps ≥ 1, got {self.steps!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast on ``device`` for ``precision`` "bf16"; a disabled one for "fp32"."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


#: Training losses kept for trackers (``--log``): about this many points over a run.
LOSS_POINTS = 200


@dataclass
class TrainResult:
    steps: int
    seconds: float
    images_seen: int
    losses: dict[str, float] = field(default_factory=dict)
    peak_mem_bytes: float = math.nan
    resumed_from_step: int = 0
    capped: bool = False  # the wall-time cap stopped training before the budget's steps
    flops: float = 0.0  # FLOPs of the counted steps (``counted_steps``)
    loss_history: list[dict[str, float]] = field(default_factory=list)  # {"step": s, loss: value, ...}, this process's
    flop_steps: int = 0

    @property
    def flops_per_step(self) -> float:
        """Mean FLOPs of the real steps counted during the run (NaN when none was)."""
        return self.flops / self.flop_steps if self.flop_steps else math.nan


def counted_steps(steps: int, seed: int) -> frozenset[int]:
    """The steps of a ``steps``-step run whose FLOPs are counted: one at random (from the cell's
    seed) in each of ``FLOP_COUNTED_STEPS`` equal stretches, so that a model whose cost changes during
    training (a lazy regulariser, a schedule) is measured over the whole run, not its first steps."""
    if steps <= FLOP_COUNTED_STEPS:
        return frozenset(range(steps))
    rng = random.Random(derived_seed(seed, "train_flop_steps"))
    edges = [steps * i // FLOP_COUNTED_STEPS for i in range(FLOP_COUNTED_STEPS + 1)]
    return frozenset(rng.randrange(low, high) for low, high in zip(edges, edges[1:], strict=False))


class CheckpointError(Exception):
    """A checkpoint that cannot be used: unreadable, or made under another config or budget."""


def _as_floats(losses: Any, step: int) -> dict[str, float]:
    values = {name: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for name, v in dict(losses).items()}
    bad = {name: v for name, v in values.items() if not math.isfinite(v)}
    if bad:
        raise TrainingDiverged(f"non-finite loss at step {step}: " + ", ".join(f"{k}={v}" for k, v in bad.items()))
    return values


def checkpoint_identity(model: GenerativeModel, budget: Budget, cell: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a checkpoint must have been trained under to be continued or evaluated: the config, the
    budget (the wall-time cap aside, which only says when to stop) and the cell's identity
    (dataset, plugin version, ...) when the harness gives one."""
    identity = {"config": model.config.to_dict(), "steps": budget.steps, "batch_size": budget.batch_size,
                "precision": budget.precision}
    if cell is not None:
        identity["cell"] = {k: v for k, v in cell.items() if k != "train_seconds_cap"}
    return identity


def rng_state(data_generator: torch.Generator, order: torch.Tensor) -> dict[str, Any]:
    """Everything random a resumed run needs to continue exactly as an uninterrupted one would."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "data": data_generator.get_state(), "order": order.cpu()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(path: Path, model: GenerativeModel, step: int, seconds: float, done: bool,
                    identity: dict[str, Any] | None = None, rng: dict[str, Any] | None = None,
                    flops: tuple[float, int] = (0.0, 0)) -> None:
    """Atomically write model, optimizers, random state and progress (flushed to disk, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(path, {
        "model": model.state_dict(),
        "optimizers": {name: opt.state_dict() for name, opt in model.optimizers.items()},
        "step": step,
        "seconds": seconds,
        "done": done,
        "identity": identity if identity is not None else {"config": model.config.to_dict()},
        "rng": rng or {},
        "train_flops": {"flops": float(flops[0]), "steps": int(flops[1])},
    })


def load_checkpoint(path: Path, model: GenerativeModel, identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load ``path`` into ``model`` and its optimizers; ``CheckpointError`` if it is unreadable or
    was made under another identity (config and budget)."""
    try:
        state = torch.load(path, map_location=model.device, weights_only=True)
        recorded = state["identity"]
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {str(exc)[:120]})") from exc
    if identity is not None and _jsonish(recorded) != _jsonish(identity):
        raise CheckpointError(f"checkpoint {path} was made under another identity (config, budget, dataset or "
                              "plugin version)")
    try:
        model.load_state_dict(state["model"])
        for name, opt_state in state["optimizers"].items():
            model.optimizers[name].load_state_dict(opt_state)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this model ({type(exc).__name__}: {str(exc)[:120]})") \
            from exc
    return state


def _jsonish(value: Any) -> Any:
    """Tuples and lists compare equal (a checkpoint stores what the config held)."""
    if isinstance(value, dict):
        return {k: _jsonish(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonish(v) for v in value]
    return value


def load_trained(model: GenerativeModel, checkpoint: Path, budget: Budget,
                 cell: dict[str, Any] | None = None) -> TrainResult:
    """Load a finished checkpoint of exactly this identity for evaluation; never trains. Raises
    ``CheckpointError`` for a missing, unfinished, damaged or foreign one, saying which."""
    if not checkpoint.exists():
        raise CheckpointError(f"no checkpoint {checkpoint.name}: the cell was never trained here (or its checkpoint "
                              "was removed); run it with `trilemma run ... --resume`")
    if not model.optimizers:
        model.optimizers = model.configure_optimizers()
    state = load_checkpoint(checkpoint, model, checkpoint_identity(model, budget, cell))
    if not state["done"]:
        raise CheckpointError(f"checkpoint {checkpoint.name} is unfinished (step {state['step']} of {budget.steps}); "
                              "finish training with `trilemma run ... --resume` first")
    counted = state.get("train_flops", {})
    return TrainResult(state["step"], state["seconds"], state["step"] * budget.batch_size,
                       resumed_from_step=state["step"], capped=state["step"] < budget.steps,
                       flops=counted.get("flops", 0.0), flop_steps=counted.get("steps", 0))


def _paused(model: GenerativeModel, action: Callable[[int], None], step: int) -> None:
    """``action(step)`` in eval mode with the global random states put back afterwards."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    model.eval()
    try:
        action(step)
    finally:
        model.train()
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def train(model: GenerativeModel, images: torch.Tensor, budget: Budget, *, seed: int,
          checkpoint: Path | None = None, progress: bool = True, desc: str = "train",
          log: Callable[[str], None] = print, identity: dict[str, Any] | None = None,
          pauses: Mapping[int, Callable[[int], None]] | None = None) -> TrainResult:
    """Train ``model`` on ``images`` (N×C×28×28 uint8, already on the model's device).

    Batches are drawn by indexing a seeded permutation on the device; each epoch reshuffles. If
    ``checkpoint`` exists and was made under the same config, budget and cell ``identity`` it is
    resumed (a finished one is loaded and returned as is); a damaged or foreign one is moved aside,
    said so, and training starts over.

    ``pauses`` maps a step to what to do once that many steps are done (a learning-curve point):
    it runs with the model in eval mode, its time is not training time, and every random state
    training uses is put back afterwards, so the weights are those of a run without pauses.
    """
    from trilemma.progress import progress_bar

    device = model.device
    if not model.optimizers:
        model.optimizers = model.configure_optimizers()
    identity = checkpoint_identity(model, budget, identity)
    generator = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)
    n = images.shape[0]
    steps_per_epoch = max(1, n // budget.batch_size)
    order = torch.randperm(n, generator=generator, device=device)
    start_step, spent = 0, 0.0
    flops, flop_steps = 0.0, 0
    chosen = counted_steps(budget.steps, seed)
    if checkpoint is not None and checkpoint.exists():
        fresh = {k: v.clone() for k, v in model.state_dict().items()}
        try:
            state = load_checkpoint(checkpoint, model, identity)
            start_step, spent = state["step"], state["seconds"]
            counted = state.get("train_flops", {})
            flops, flop_steps = counted.get("flops", 0.0), counted.get("steps", 0)
            if state["done"]:
                return TrainResult(start_step, spent, start_step * budget.batch_size, resumed_from_step=start_step,
                                   capped=start_step < budget.steps, flops=flops, flop_steps=flop_steps)
            rng = state["rng"]
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            generator.set_state(rng["data"])
            order = rng["order"].to(device)
            log(f"{desc}: resuming from step {start_step} ({checkpoint.name})")
        except Exception as exc:  # unreadable, foreign or incomplete: start over, and say so
            aside = checkpoint.with_name(checkpoint.name + ".unusable")
            os.replace(checkpoint, aside)
            model.load_state_dict(fresh)
            model.optimizers = model.configure_optimizers()
            start_step, spent = 0, 0.0
            flops, flop_steps = 0.0, 0
            log(f"{desc}: {exc}; moved to {aside.name}, training from scratch")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    step, losses, history = start_step, {}, []
    every = max(1, budget.steps // LOSS_POINTS)
    began = time.perf_counter()
    bar = progress_bar(total=budget.steps, initial=start_step, desc=desc, enabled=progress,
               unit="step", dynamic_ncols=True, mininterval=1.0)
    try:
        while True:
            if step >= budget.steps or (budget.seconds is not None
                                        and spent + time.perf_counter() - began >= budget.seconds):
                break
            within = step % steps_per_epoch
            if within == 0 and step > 0:  # a new epoch (a resumed run restored the order it had)
                order = torch.randperm(n, generator=generator, device=device)
            index = order[within * budget.batch_size : (within + 1) * budget.batch_size]
            batch = images[index].float().div_(255)
            counter = FlopCounter() if step in chosen else None
            with counter if counter is not None else nullcontext(), autocast(device, budget.precision):
                losses = _as_floats(model.training_step(batch, step), step)
            if counter is not None:
                flops, flop_steps = flops + counter.get_total_flops(), flop_steps + 1
            step += 1
            if step % every == 0 or step == budget.steps:
                history.append({"step": step, **losses})
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=False)
            if pauses and step in pauses and step < budget.steps:
                paused = time.perf_counter()
                _paused(model, pauses[step], step)
                began += time.perf_counter() - paused
            if checkpoint is not None and step % budget.checkpoint_every == 0:
                save_checkpoint(checkpoint, model, step, spent + time.perf_counter() - began, False, identity,
                                rng_state(generator, order), (flops, flop_steps))
    finally:
        bar.close()
    seconds = spent + time.perf_counter() - began
    if checkpoint is not None:
        save_checkpoint(checkpoint, model, step, seconds, True, identity, flops=(flops, flop_steps))
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else math.nan
    return TrainResult(step, seconds, step * budget.batch_size, losses, peak, resumed_from_step=start_step,
                       capped=step < budget.steps, flops=flops, flop_steps=flop_steps, loss_history=history)

