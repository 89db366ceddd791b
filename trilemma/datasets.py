"""Datasets the harness trains on, registered through ``register_datasets`` like any plugin's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trilemma.data import Split, load_mnist, stack_mnist
from trilemma.hookspecs import hookimpl


@dataclass(frozen=True)
class Dataset:
    """A named dataset: ``load(data_dir)`` returns ``{"train": Split, "test": Split}`` with
    N×channels×28×28 uint8 images and integer labels (the modes coverage metrics count)."""

    name: str
    channels: int
    num_modes: int
    load: Callable[[Path | None], dict[str, Split]]
    description: str = ""


def _load_mnist(data_dir: Path | None) -> dict[str, Split]:
    return load_mnist(data_dir)


# Sizes follow the usual Stacked-MNIST protocol: as many training triples as MNIST has digits.
STACKED_SEEDS = {"train": 1000, "test": 1001}


def _load_stacked(data_dir: Path | None) -> dict[str, Split]:
    mnist = load_mnist(data_dir)
    return {split: stack_mnist(mnist[split], len(mnist[split].labels), STACKED_SEEDS[split]) for split in mnist}


MNIST = Dataset("mnist", channels=1, num_modes=10, load=_load_mnist,
                description="MNIST, 60,000 train / 10,000 test digits")
STACKED_MNIST = Dataset("stacked-mnist", channels=3, num_modes=1000, load=_load_stacked,
                        description="three MNIST digits as channels; 1,000 modes")


@hookimpl
def register_datasets(register: Callable[..., None]) -> None:
    register(MNIST)
    register(STACKED_MNIST)
