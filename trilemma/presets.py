"""Named run sizes: how much each model trains and how many samples each metric sees.

Budgets are work, never wall time: training images (or, where a model says so, optimizer steps),
so a preset and a seed give the same numbers on a fast, slow or busy machine. A wall-time cap is
an explicit user option (``--train-seconds``), recorded in the protocol; rows it cut short say so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from trilemma.errors import TrilemmaError

#: Training precisions the command line takes.
PRECISIONS = ("auto", "fp32", "bf16")
#: The keys a model's ``presets[name]["budget"]`` may set.
BUDGET_KEYS = ("train_images", "train_steps", "batch_size")


@dataclass(frozen=True)
class Preset:
    """A run size. A model may set ``train_images`` (or ``train_steps``) and ``batch_size`` for a
    preset through its ``presets[name]["budget"]``; setting one of the two budgets clears the other."""

    name: str
    train_images: int | None  # train on this many images (steps = ⌈images / batch size⌉)
    train_steps: int | None  # or for this many optimizer steps, where a model counts in steps
    batch_size: int
    eval_samples: int  # generated samples per (model, sampler) for quality and coverage
    stacked_samples: int  # generated samples for Stacked-MNIST coverage (PacGAN: 26,000)
    speed_batch_sizes: tuple[int, ...]  # batch sizes for wall time per sample
    speed_repeats: int  # timed repeats per batch size, after one warm-up
    sample_batch_size: int  # batch size when generating the evaluation samples
    checkpoint_every: int  # steps between checkpoints
    train_seconds: float | None = None  # a wall-time cap: only ever set by the user (--train-seconds)
    description: str = ""

    def __post_init__(self) -> None:
        def whole(name: str, low: int, value: Any) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise TrilemmaError(f"preset {self.name}: {name} must be a whole number ≥ {low}, got {value!r}")

        if (self.train_images is None) == (self.train_steps is None):
            raise TrilemmaError(f"preset {self.name}: a budget needs train_images or train_steps (one of them)")
        if self.train_images is not None:
            whole("train_images", 1, self.train_images)
        if self.train_steps is not None:
            whole("train_steps", 1, self.train_steps)
        if self.train_seconds is not None and (
                isinstance(self.train_seconds, bool) or not isinstance(self.train_seconds, (int, float))
                or not math.isfinite(self.train_seconds) or self.train_seconds <= 0):
            raise TrilemmaError(f"preset {self.name}: train_seconds must be a number > 0, got {self.train_seconds!r}")
        for name, low in (("batch_size", 1), ("eval_samples", 2), ("stacked_samples", 2), ("sample_batch_size", 1),
                          ("speed_repeats", 1), ("checkpoint_every", 1)):
            whole(name, low, getattr(self, name))
        if not self.speed_batch_sizes:
            raise TrilemmaError(f"preset {self.name}: speed_batch_sizes is empty")
        for size in self.speed_batch_sizes:
            whole("speed_batch_sizes", 1, size)

    @property
    def steps(self) -> int:
        """Optimizer steps the budget allows."""
        if self.train_steps is not None:
            return self.train_steps
        return math.ceil(self.train_images / self.batch_size)

    @property
    def work(self) -> str:
        """The budget in words, for logs."""
        if self.train_steps is not None:
            return f"{self.train_steps:,} steps of {self.batch_size}"
        return f"{self.train_images:,} images ({self.steps:,} steps of {self.batch_size})"

    def with_budget(self, overrides: Mapping[str, Any], where: str = "") -> Preset:
        """This preset with some of ``train_images``, ``train_steps`` and ``batch_size`` replaced
        (a model's budget); anything else, or a value out of range, is a ``TrilemmaError`` naming
        ``where``."""
        unknown = set(overrides) - set(BUDGET_KEYS)
        if unknown:
            hint = "; budgets are work, not time (--train-seconds is the user's cap)" if "train_seconds" in unknown else ""
            raise TrilemmaError(f"{where}preset budget: unknown key(s) {sorted(unknown)}; valid: {list(BUDGET_KEYS)}{hint}")
        changes = dict(overrides)
        if "train_images" in changes and "train_steps" not in changes:
            changes["train_steps"] = None
        elif "train_steps" in changes and "train_images" not in changes:
            changes["train_images"] = None
        try:
            return replace(self, **changes)
        except TrilemmaError as exc:
            raise TrilemmaError(f"{where}{exc}") from None

    def capped(self, seconds: float) -> Preset:
        """This preset under a wall-time cap (the user's ``--train-seconds``)."""
        return replace(self, train_seconds=seconds)


PRESETS: dict[str, Preset] = {
    "smoke": Preset("smoke", train_images=None, train_steps=3, batch_size=16, eval_samples=200,
                    stacked_samples=200, speed_batch_sizes=(8,), speed_repeats=1, sample_batch_size=32,
                    checkpoint_every=1000, description="seconds; for tests"),
    "quick": Preset("quick", train_images=32_000, train_steps=None, batch_size=128, eval_samples=1000,
                    stacked_samples=26000, speed_batch_sizes=(1, 64), speed_repeats=2, sample_batch_size=500,
                    checkpoint_every=500, description="every built-in model within about 30 minutes on a 2-core CPU"),
    "standard": Preset("standard", train_images=1_000_000, train_steps=None, batch_size=128, eval_samples=10000,
                       stacked_samples=26000, speed_batch_sizes=(1, 64, 256), speed_repeats=3,
                       sample_batch_size=1000, checkpoint_every=2000,
                       description="GPU: every built-in model within about 10 minutes on one H100"),
    "paper": Preset("paper", train_images=20_000_000, train_steps=None, batch_size=128, eval_samples=50000,
                    stacked_samples=26000, speed_batch_sizes=(1, 64, 256), speed_repeats=5,
                    sample_batch_size=1000, checkpoint_every=5000, description="long runs"),
}
PRESET_CHOICES = (*PRESETS, "auto")


def get_preset(name: str, device_type: str) -> Preset:
    """``auto`` is ``standard`` on CUDA and ``quick`` otherwise."""
    if name == "auto":
        name = "standard" if device_type == "cuda" else "quick"
    if name not in PRESETS:
        raise TrilemmaError(f"unknown preset {name!r}; valid: {', '.join(PRESET_CHOICES)}")
    return PRESETS[name]
