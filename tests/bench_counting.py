"""Benchmarks (``tox -e bench``): the cost of counting the scored draw (issue 22).

For every built-in model at its quick config (untrained: the draw's cost does not depend on the
weights) and the fewest-step sampler of its quick preset (the many-step ones take minutes), the
draw of ``SAMPLES`` samples in batches of ``BATCH`` (the last one alone, as the harness draws) is
timed both ways in one run, alternating: plain sampler calls ("uncounted", what the draw cost
before counting) and ``trilemma.sampling.draw`` (hooks, FLOP
counter and parameter watch over every batch). The last test prints the ratio per model.
``TRILEMMA_BENCH_BATCH`` changes the batch (default the quick preset's sample batch).
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch
from helpers import print_benchmark_table

from trilemma.model import resolve_config
from trilemma.nfe import draw_batches
from trilemma.presets import PRESETS
from trilemma.samplers import bind
from trilemma.sampling import draw, make_generator

MODELS = ("vae", "dcgan", "ddpm", "ddgan", "flow-matching", "cld", "lsgm", "glow")
BATCH = int(os.environ.get("TRILEMMA_BENCH_BATCH", PRESETS["quick"].sample_batch_size))
SAMPLES = BATCH + 1
ROUNDS = int(os.environ.get("TRILEMMA_BENCH_ROUNDS", "3"))
RESULTS: dict[str, tuple[str, float, float]] = {}  # model → (sampler, uncounted s, counted s)


def sampler_of(name: str):
    from trilemma.plugins import collect

    os.environ.pop("TRILEMMA_LOAD_PLUGINS", None)
    models = collect().models
    if name not in models:
        pytest.skip(f"{name} is not installed")
    cls = models[name]
    torch.manual_seed(0)
    model = cls(resolve_config(cls, "quick", {}))
    model.eval()
    spec = min(cls.sampler_specs("quick"), key=steps)
    (_, sampler), = bind(model, [spec]).values()
    return model, str(spec), sampler


def steps(spec) -> float:
    value = dict(spec.params).get("steps")
    return value if isinstance(value, int) else float("inf")


@torch.no_grad()
def uncounted(model, sampler) -> None:
    generator = make_generator(model.device, 0)
    for size in draw_batches(SAMPLES, BATCH):
        sampler(size, generator)


@pytest.mark.parametrize("name", MODELS)
def test_draw(benchmark, name):
    """The two paths alternate within each round, so that a drift of the machine hits both alike."""
    model, spec, sampler = sampler_of(name)
    benchmark.group = f"draw {name} {spec}"
    paths = {"uncounted": lambda: uncounted(model, sampler),
             "counted": lambda: draw(model, sampler, SAMPLES, batch_size=BATCH, seed=0)}
    times: dict[str, list[float]] = {path: [] for path in paths}

    def both():
        for path, run in paths.items():
            start = time.perf_counter()
            run()
            times[path].append(time.perf_counter() - start)

    benchmark.pedantic(both, rounds=ROUNDS, warmup_rounds=1)
    RESULTS[name] = (spec, *(statistics.median(times[path][1:]) for path in paths))  # the warm-up round left out


def test_summary_table(benchmark, capsys):
    """Counted over uncounted draw time per model."""
    assert print_benchmark_table(benchmark, capsys, summary_rows)


def summary_rows() -> list[str]:
    rows = [f"draw of {SAMPLES} samples in batches of {BATCH} (then 1): counted / uncounted"]
    for name, (spec, plain, counted) in RESULTS.items():
        rows.append(f"  {name:<14} {spec:<22} uncounted {plain:8.3f} s   counted {counted:8.3f} s   "
                    f"overhead {counted / plain - 1:+.1%}")
    return rows
