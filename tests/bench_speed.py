"""Benchmarks (``tox -e bench``): the speed metric's own cost per row, before and after issue 27.

For every built-in model at its quick config (untrained: the cost does not depend on the weights)
and the fewest-step sampler of its quick preset, one counted draw of the quick preset's batch (plus
the lone last sample) is made, and then the speed metric's timing is run both ways on it, in one
run, alternating: "before" times calls at batch sizes 1 and 64 (a warm-up and two repeats each, the
old quick protocol) and took ms/sample from batch 64; "after" is ``SpeedMetric`` as it is (batch 1,
plus hooked calls at the draw's batch, after a warm-up, only when a draw batch took under ``RETIME_SECONDS``). The
last test prints, per model, both costs and the ms/sample each path reports.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from bench_counting import MODELS, sampler_of
from helpers import print_benchmark_table

from trilemma.metrics import EvalContext
from trilemma.metrics.speed import SpeedMetric, time_sampler
from trilemma.presets import PRESETS
from trilemma.sampling import draw

BATCH = PRESETS["quick"].sample_batch_size
ROUNDS = int(os.environ.get("TRILEMMA_BENCH_ROUNDS", "3"))
RESULTS: dict[str, tuple[str, float, float, float, float, str]] = {}


def context(model, name, sampler, samples) -> EvalContext:
    return EvalContext(model=model, model_name=name, sampler_name="bench", sampler=sampler, samples=samples,
                       dataset=None, data={}, device=model.device, preset=PRESETS["quick"], seed=0,
                       cache_dir=Path(tempfile.gettempdir()) / "trilemma-bench-cache", log=lambda _: None)


def before(ctx: EvalContext) -> float:
    """The old quick timing: batch 1 and batch 64, ms/sample from batch 64."""
    timings = {size: time_sampler(ctx, size, 2) for size in (1, 64)}
    return 1000 * timings[64].seconds / 64


def after(ctx: EvalContext) -> tuple[float, str]:
    row = SpeedMetric().compute(replace(ctx, settings={}))
    return row["ms_per_sample"], row["speed_timed_on"]


@pytest.mark.parametrize("name", MODELS)
def test_speed_metric(benchmark, name):
    model, spec, sampler = sampler_of(name)
    benchmark.group = f"speed metric {name} {spec}"
    with torch.no_grad():
        samples = draw(model, sampler, BATCH * 2 + 1, batch_size=BATCH, seed=0)
    ctx = context(model, name, sampler, samples)
    times: dict[str, list[float]] = {"before": [], "after": []}
    reported: dict[str, float] = {}
    source = ""

    def both():
        nonlocal source
        start = time.perf_counter()
        reported["before"] = before(ctx)
        times["before"].append(time.perf_counter() - start)
        start = time.perf_counter()
        reported["after"], source = after(ctx)
        times["after"].append(time.perf_counter() - start)

    benchmark.pedantic(both, rounds=ROUNDS, warmup_rounds=0)
    RESULTS[name] = (spec, statistics.median(times["before"]), statistics.median(times["after"]),
                     reported["before"], reported["after"], source)


def test_summary_table(benchmark, capsys):
    """The speed metric's cost per row, before / after, and what each reports."""
    assert print_benchmark_table(benchmark, capsys, summary_rows)


def summary_rows() -> list[str]:
    rows = [f"speed metric per row after a draw of {2 * BATCH + 1}: before (batches 1 and 64) / after "
            f"(batch 1; batch {BATCH} again only for a fast draw)"]
    for name, (spec, old, new, ms_old, ms_new, source) in RESULTS.items():
        rows.append(f"  {name:<14} {spec:<14} before {old:8.2f} s  after {new:8.2f} s  ratio {new / old:5.2f}   "
                    f"ms/sample before (b64) {ms_old:8.3f}  after (b{BATCH}, {source}) {ms_new:8.3f}")
    return rows
