"""Named run sizes: how long each model trains and how many samples each metric sees."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from trilemma.errors import TrilemmaError


@dataclass(frozen=True)
class Preset:
    """A run size. A model may override ``train_steps``, ``train_seconds`` and ``batch_size``
    for a preset through its ``presets[name]["budget"]``."""

    name: str
    train_steps: int | None  # stop after this many updates (None: no step limit)
    train_seconds: float | None  # or after this much wall time (None: no time limit)
    batch_size: int
    eval_samples: int  # generated samples per (model, sampler) for quality and coverage
    stacked_samples: int  # generated samples for Stacked-MNIST coverage (PacGAN: 26,000)
    speed_batch_sizes: tuple[int, ...]  # batch sizes for wall time per sample
    speed_repeats: int  # timed repeats per batch size, after one warm-up
    sample_batch_size: int  # batch size when generating the evaluation samples
    checkpoint_every: int  # steps between checkpoints
    description: str = ""

    def __post_init__(self) -> None:
        def whole(name: str, low: int, value: Any) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise TrilemmaError(f"preset {self.name}: {name} must be a whole number ≥ {low}, got {value!r}")

        if self.train_steps is None and self.train_seconds is None:
            raise TrilemmaError(f"preset {self.name}: a budget needs train_steps, train_seconds or both")
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

    def with_budget(self, overrides: Mapping[str, Any], where: str = "") -> Preset:
        """This preset with some of ``train_steps``, ``train_seconds`` and ``batch_size`` replaced;
        anything else, or a value out of range, is a ``TrilemmaError`` naming ``where``."""
        allowed = {"train_steps", "train_seconds", "batch_size"}
        unknown = set(overrides) - allowed
        if unknown:
            raise TrilemmaError(f"{where}preset budget: unknown key(s) {sorted(unknown)}; valid: {sorted(allowed)}")
        try:
            return replace(self, **overrides)
        except TrilemmaError as exc:
            raise TrilemmaError(f"{where}{exc}") from None


PRESETS: dict[str, Preset] = {
    "smoke": Preset("smoke", train_steps=3, train_seconds=None, batch_size=16, eval_samples=200,
                    stacked_samples=200, speed_batch_sizes=(8,), speed_repeats=1, sample_batch_size=32,
                    checkpoint_every=1000, description="seconds; for tests"),
    "quick": Preset("quick", train_steps=None, train_seconds=150, batch_size=128, eval_samples=1000,
                    stacked_samples=26000, speed_batch_sizes=(1, 64), speed_repeats=2, sample_batch_size=500,
                    checkpoint_every=500, description="every built-in model within about 30 minutes on a 2-core CPU"),
    "standard": Preset("standard", train_steps=None, train_seconds=240, batch_size=128, eval_samples=10000,
                       stacked_samples=26000, speed_batch_sizes=(1, 64, 256), speed_repeats=3,
                       sample_batch_size=1000, checkpoint_every=2000,
                       description="GPU: every model within about 30 minutes on one H100-class GPU"),
    "paper": Preset("paper", train_steps=None, train_seconds=3600, batch_size=128, eval_samples=50000,
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
