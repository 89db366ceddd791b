"""Every random stream a cell draws from, derived from the cell's seed by a declared offset.

One table, recorded in each run's manifest (``seed_offsets``), so that a reader can reproduce any
stream. Training and the scored samples both use the cell's seed itself, each in a generator of
its own (as every run before this table did, so that its numbers stay comparable).
"""

from __future__ import annotations

#: purpose → offset added to the cell's seed.
SEED_OFFSETS: dict[str, int] = {
    "training": 0,  # weights, data order, the model's own noise (train.py)
    "samples": 0,  # the scored samples (sampling.draw)
    "speed_timing": 1,  # the timed sampler calls (metrics.speed)
    "train_flop_steps": 2,  # which training steps are counted under the FLOP counter (train.py)
    "likelihood": 4242,  # the noise of a likelihood bound's estimate (metrics.likelihood)
    "stacked_extra_samples": 7919,  # samples drawn beyond the scored ones for Stacked-MNIST coverage
}


def derived_seed(seed: int, purpose: str) -> int:
    """The seed of ``purpose``'s stream for a cell seeded ``seed``."""
    return seed + SEED_OFFSETS[purpose]
