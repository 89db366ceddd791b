"""Named run sizes: a training budget (how much each model trains) and an evaluation protocol (how
many samples each metric sees, how speed is timed), two typed, validated objects.

Budgets are work, never wall time: training images (or, where a model says so, optimizer steps),
so a preset and a seed give the same numbers on a fast, slow or busy machine. A wall-time cap is
an explicit user option (``--train-seconds``), recorded in the protocol; rows it cut short say so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from trilemma.errors import TrilemmaError, did_you_mean

#: Training precisions the command line takes.
PRECISIONS = ("auto", "fp32", "bf16")
#: The keys a model's ``presets[name]["budget"]`` may set.
BUDGET_KEYS = ("train_images", "train_steps", "train_pflop", "batch_size")
#: The three ways to say how much a model trains; a budget gives exactly one.
BUDGET_AMOUNTS = ("train_images", "train_steps", "train_pflop")


def _whole(where: str, name: str, low: int, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise TrilemmaError(f"{where}: {name} must be a whole number ≥ {low}, got {value!r}")


@dataclass(frozen=True)
class TrainingBudget:
    """How much a model trains: ``train_images`` (steps = ⌈images / batch size⌉), ``train_steps``,
    or ``train_pflop`` (training compute: steps = ⌈PFLOP / the model's counted FLOPs per step⌉, so
    that models of different cost per image get the same compute), exactly one of the three;
    checkpoints every ``checkpoint_every`` steps. Work, never wall time: ``train_seconds`` is only
    ever the user's explicit cap (``--train-seconds``)."""

    train_images: int | None
    train_steps: int | None
    batch_size: int
    checkpoint_every: int
    train_seconds: float | None = None
    train_pflop: float | None = None
    where: str = field(default="budget", compare=False, repr=False)

    def __post_init__(self) -> None:
        if sum(getattr(self, name) is not None for name in BUDGET_AMOUNTS) != 1:
            raise TrilemmaError(f"{self.where}: a budget needs one of train_images, train_steps or train_pflop")
        for name in ("train_images", "train_steps"):
            if getattr(self, name) is not None:
                _whole(self.where, name, 1, getattr(self, name))
        _whole(self.where, "batch_size", 1, self.batch_size)
        _whole(self.where, "checkpoint_every", 1, self.checkpoint_every)
        for name in ("train_seconds", "train_pflop"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value <= 0):
                raise TrilemmaError(f"{self.where}: {name} must be a number > 0, got {value!r}")

    @property
    def kind(self) -> str:
        """``images``, ``steps`` or ``pflop``."""
        return next(name for name in BUDGET_AMOUNTS if getattr(self, name) is not None).removeprefix("train_")

    @property
    def steps(self) -> int:
        """Optimizer steps the budget allows (a compute budget's once ``for_flops_per_step`` resolved it)."""
        if self.train_pflop is not None:
            raise TrilemmaError(f"{self.where}: a budget of {self.train_pflop:g} PFLOP has no steps until its model's "
                                "FLOPs per step are counted (for_flops_per_step)")
        if self.train_steps is not None:
            return self.train_steps
        assert self.train_images is not None  # a budget has exactly one kind (checked when it is made)
        return math.ceil(self.train_images / self.batch_size)

    def for_flops_per_step(self, flops: float) -> TrainingBudget:
        """A compute budget as the steps it buys at ``flops`` per step (at least one); others as they are."""
        if self.train_pflop is None:
            return self
        if not math.isfinite(flops) or flops <= 0:
            raise TrilemmaError(f"{self.where}: cannot turn {self.train_pflop:g} PFLOP into steps: the model's "
                                f"counted FLOPs per step are {flops!r}")
        return replace(self, train_pflop=None, train_steps=max(1, math.ceil(self.train_pflop * 1e15 / flops)))

    @property
    def work(self) -> str:
        """The budget in words, for logs."""
        if self.train_pflop is not None:
            return f"{self.train_pflop:g} PFLOP of training, batch {self.batch_size}"
        if self.train_steps is not None:
            return f"{self.train_steps:,} steps of {self.batch_size}"
        return f"{self.train_images:,} images ({self.steps:,} steps of {self.batch_size})"

    def with_changes(self, overrides: Mapping[str, Any], where: str = "") -> TrainingBudget:
        """This budget with some of ``train_images``, ``train_steps``, ``train_pflop`` and
        ``batch_size`` replaced (a model's budget, the command line's); setting one of the amounts
        clears the others."""
        unknown = set(overrides) - set(BUDGET_KEYS)
        if unknown:
            hint = "; budgets are work, not time (--train-seconds is the user's cap)" if "train_seconds" in unknown else ""
            raise TrilemmaError(f"{where}preset budget: unknown key(s) {sorted(unknown)}; valid: {list(BUDGET_KEYS)}{hint}")
        changes = dict(overrides)
        given = [name for name in BUDGET_AMOUNTS if name in changes]
        if given:
            changes.update({name: None for name in BUDGET_AMOUNTS if name not in given})
        return replace(self, **changes, where=f"{where}{self.where}")

    def to_dict(self) -> dict[str, Any]:
        steps = self.train_steps if self.train_pflop is not None else self.steps
        return {"train_images": self.train_images, "train_steps": steps, "train_pflop": self.train_pflop,
                "batch_size": self.batch_size, "checkpoint_every": self.checkpoint_every,
                "train_seconds_cap": self.train_seconds}


#: Bumped whenever what an evaluation number means changes (a sample count's role, a timing rule);
#: runs of different versions are not pooled or compared without --force. 2: the scored draw is
#: the counted draw (its last sample drawn alone), NFE per distinct sample, hooked timed calls,
#: training FLOPs from real steps (issue 22). 3: ms/sample is the scored draw's own time per sample
#: at the draw's batch size, not a second timed draw at the largest speed batch size, and quick draws
#: in batches of 128, not 500 (measured faster per sample on one CPU thread for the costly samplers;
#: issue 27).
EVAL_PROTOCOL_VERSION = 3


@dataclass(frozen=True)
class EvalProtocol:
    """How a trained model is evaluated: generated samples per row for quality and coverage
    (``eval_samples``; ``stacked_samples`` for Stacked-MNIST coverage, PacGAN's 26,000), the batch
    they are drawn in, and the batch sizes and repeats of the speed timing."""

    eval_samples: int
    stacked_samples: int
    speed_batch_sizes: tuple[int, ...]
    speed_repeats: int
    sample_batch_size: int
    version: int = EVAL_PROTOCOL_VERSION
    # Learning curves: the shares of the budget at which each cell is also evaluated, on
    # ``curve_samples`` samples of its curve samplers (and once more at the end). Not in the
    # protocol of the rows (curves change no row); recorded with the curves.
    curve_fractions: tuple[float, ...] = ()
    curve_samples: int = 0
    where: str = field(default="evaluation", compare=False, repr=False)

    def __post_init__(self) -> None:
        for name, low in (("eval_samples", 2), ("stacked_samples", 2), ("sample_batch_size", 1), ("speed_repeats", 1)):
            _whole(self.where, name, low, getattr(self, name))
        if not self.speed_batch_sizes:
            raise TrilemmaError(f"{self.where}: speed_batch_sizes is empty")
        for size in self.speed_batch_sizes:
            _whole(self.where, "speed_batch_sizes", 1, size)
        if any(not 0 < f < 1 for f in self.curve_fractions) or list(self.curve_fractions) != sorted(
                set(self.curve_fractions)):
            raise TrilemmaError(f"{self.where}: curve fractions must be increasing shares of the budget in (0, 1), "
                                f"got {self.curve_fractions}")
        if self.curve_fractions:
            _whole(self.where, "curve_samples", 2, self.curve_samples)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("version", "eval_samples", "stacked_samples", "sample_batch_size",
                                              "speed_batch_sizes", "speed_repeats")}


@dataclass(frozen=True)
class Preset:
    """A named run size: a training budget (which a model's ``presets[name]["budget"]`` and the
    command line may change) and an evaluation protocol (which they may not). The budget's and the
    protocol's fields read through (``preset.steps``, ``preset.eval_samples``)."""

    name: str
    budget: TrainingBudget
    evaluation: EvalProtocol
    description: str = ""

    def __getattr__(self, attribute: str) -> Any:
        for part in ("budget", "evaluation"):
            if attribute in _READ_THROUGH[part]:
                return getattr(object.__getattribute__(self, part), attribute)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {attribute!r}")

    def with_budget(self, overrides: Mapping[str, Any], where: str = "") -> Preset:
        """This preset with some of the budget's ``train_images``, ``train_steps`` and ``batch_size``
        replaced; anything else, or a value out of range, is a ``TrilemmaError`` naming ``where``."""
        return replace(self, budget=self.budget.with_changes(overrides, where))

    def for_flops_per_step(self, flops: float) -> Preset:
        """This preset with a compute budget turned into steps at ``flops`` per step."""
        return replace(self, budget=self.budget.for_flops_per_step(flops))

    def with_curves(self, fractions: tuple[float, ...], samples: int | None = None) -> Preset:
        """This preset with other learning-curve points (``()``: none) and, optionally, sample count."""
        evaluation = replace(self.evaluation, curve_fractions=tuple(fractions),
                             curve_samples=samples if samples is not None else self.evaluation.curve_samples
                             or min(self.evaluation.eval_samples, 500))
        return replace(self, evaluation=evaluation)

    def capped(self, seconds: float) -> Preset:
        """This preset under a wall-time cap (the user's ``--train-seconds``)."""
        return replace(self, budget=replace(self.budget, train_seconds=seconds))


_READ_THROUGH = {
    "budget": ("train_images", "train_steps", "train_pflop", "batch_size", "checkpoint_every", "train_seconds", "steps",
               "work"),
    "evaluation": ("eval_samples", "stacked_samples", "speed_batch_sizes", "speed_repeats", "sample_batch_size",
                   "curve_fractions", "curve_samples"),
}


def _preset(name: str, description: str, *, eval_samples: int, stacked_samples: int,
            speed_batch_sizes: tuple[int, ...], speed_repeats: int, sample_batch_size: int,
            curve_fractions: tuple[float, ...] = (), curve_samples: int = 0, **budget: Any) -> Preset:
    return Preset(name, TrainingBudget(**budget, where=f"preset {name}"),
                  EvalProtocol(eval_samples, stacked_samples, speed_batch_sizes, speed_repeats, sample_batch_size,
                               curve_fractions=curve_fractions, curve_samples=curve_samples, where=f"preset {name}"),
                  description)


#: Log-spaced points of a learning curve: an eighth, a quarter and half of the budget (and all of it).
CURVE_FRACTIONS = (0.125, 0.25, 0.5)


PRESETS: dict[str, Preset] = {
    "smoke": _preset("smoke", "seconds; for tests", train_images=None, train_steps=3, batch_size=16,
                     checkpoint_every=1000, eval_samples=200, stacked_samples=200, speed_batch_sizes=(8,),
                     speed_repeats=1, sample_batch_size=32),
    "quick": _preset("quick", "CPU: every built-in model; aimed at 30 minutes on 2 cores, an hour or more today",
                     train_images=32_000,
                     train_steps=None, batch_size=128, checkpoint_every=500, eval_samples=1000, stacked_samples=26000,
                     speed_batch_sizes=(1,), speed_repeats=2, sample_batch_size=128,
                     curve_fractions=CURVE_FRACTIONS, curve_samples=500),
    "standard": _preset("standard", "GPU: every built-in model within about 10 minutes on one H100",
                        train_images=1_000_000, train_steps=None, batch_size=128, checkpoint_every=2000,
                        eval_samples=10000, stacked_samples=26000, speed_batch_sizes=(1, 64, 256), speed_repeats=3,
                        sample_batch_size=1000, curve_fractions=CURVE_FRACTIONS, curve_samples=2000),
    "paper": _preset("paper", "long runs", train_images=20_000_000, train_steps=None, batch_size=128,
                     checkpoint_every=5000, eval_samples=50000, stacked_samples=26000, speed_batch_sizes=(1, 64, 256),
                     speed_repeats=5, sample_batch_size=1000, curve_fractions=(0.0625, *CURVE_FRACTIONS),
                     curve_samples=5000),
}
PRESET_CHOICES = (*PRESETS, "auto")


def get_preset(name: str, device_type: str) -> Preset:
    """``auto`` is ``standard`` on CUDA and ``quick`` otherwise."""
    if name == "auto":
        name = "standard" if device_type == "cuda" else "quick"
    if name not in PRESETS:
        raise TrilemmaError(f"unknown preset {name!r}{did_you_mean([name], PRESET_CHOICES)}; "
                            f"valid: {', '.join(PRESET_CHOICES)}")
    return PRESETS[name]
