"""Benchmarks (``tox -e bench``): cells side by side and a busy machine (issue 27).

For each model at its quick preset, the median training step in five situations, each in fresh
processes: alone with all the cores' threads (the serial default) and with one thread; two
processes of one thread side by side (``--jobs 2`` on two cores); and alone, all threads and one,
while two CPU burners (pure-Python loops, as other users' jobs) run. The table gives the ratios:
the throughput of two one-thread cells against one all-thread cell, and how much the burners slow
a step beyond a fair share (every runnable thread getting the same share of the cores). ``TRILEMMA_BENCH_MODELS``
picks the models (comma-separated). Run as a script, the module times one model:
``python tests/bench_parallel.py MODEL THREADS STEPS``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

MODELS = tuple(os.environ.get("TRILEMMA_BENCH_MODELS", "vae,dcgan,ddpm,ddgan,flow-matching,cld,lsgm,glow").split(","))
STEPS = 10
RESULTS: dict[str, dict[str, float]] = {}
BURNER = "while True:\n    sum(range(10000))\n"


def time_steps(name: str, threads: int, steps: int) -> float:
    """Median seconds per training step of ``name`` at its quick preset, in this process."""
    import torch

    torch.set_num_threads(threads)
    from trilemma.data import load_mnist
    from trilemma.environment import resolve_precision
    from trilemma.model import resolve_config
    from trilemma.plugins import collect
    from trilemma.train import autocast

    cls = collect().models[name]
    batch_size = cls.presets.get("quick", {}).get("budget", {}).get("batch_size", 128)
    torch.manual_seed(0)
    model = cls(resolve_config(cls, "quick", {}))
    model.optimizers = model.configure_optimizers()
    model.train()
    images = load_mnist(log=None)["train"].images
    chosen = resolve_precision("auto", torch.device("cpu"))
    precision = chosen if chosen in cls.precisions else "fp32"
    seconds = []
    for i in range(steps + 3):  # three warm-up steps
        batch = images[(i * batch_size) % 50_000:][:batch_size].float().div_(255)
        start = time.perf_counter()
        with autocast(torch.device("cpu"), precision):
            model.training_step(batch, i)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds[3:])


def timed(name: str, threads: int, copies: int = 1, burners: int = 0) -> list[float]:
    """Seconds per step of ``copies`` processes started together, with ``burners`` running."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("TRILEMMA_LOAD_PLUGINS", None)
    burning = [subprocess.Popen([sys.executable, "-c", BURNER]) for _ in range(burners)]
    try:
        runs = [subprocess.Popen([sys.executable, str(Path(__file__)), name, str(threads), str(STEPS)],
                                 stdout=subprocess.PIPE, text=True, env=env) for _ in range(copies)]
        return [json.loads(run.communicate(timeout=1800)[0].strip().splitlines()[-1]) for run in runs]
    finally:
        for process in burning:
            process.kill()


@pytest.mark.parametrize("name", MODELS)
def test_side_by_side_and_busy(benchmark, name):
    cores = len(os.sched_getaffinity(0))

    def measure() -> dict[str, float]:
        return {"alone": timed(name, cores)[0], "alone_1": timed(name, 1)[0],
                "pair_1": statistics.mean(timed(name, 1, copies=2)),
                "busy": timed(name, cores, burners=2)[0], "busy_1": timed(name, 1, burners=2)[0]}

    benchmark.group = f"parallel {name}"
    result = benchmark.pedantic(measure, rounds=1, warmup_rounds=0)
    result["cores"] = cores
    benchmark.extra_info.update(result)
    RESULTS[name] = result


def test_summary_table(benchmark, capsys):
    from helpers import print_benchmark_table

    assert print_benchmark_table(benchmark, capsys, summary_rows)


def summary_rows() -> list[str]:
    rows = ["model          s/step: alone  1 thread  2×1 side by side  busy  busy 1 thread | 2×1 throughput "
            "vs alone | busy slowdown over a fair share: all threads, 1 thread"]
    for name, r in RESULTS.items():
        # A fair share: every runnable thread gets the same share of the cores.
        fair, fair_1 = (r["cores"] + 2) / r["cores"], max(1.0, 3 / r["cores"])
        rows.append(f"{name:13s} {r['alone']:6.3f} {r['alone_1']:9.3f} {r['pair_1']:17.3f} {r['busy']:6.3f} "
                    f"{r['busy_1']:13.3f} | {2 * r['alone'] / r['pair_1']:5.2f}× | "
                    f"{r['busy'] / r['alone'] / fair:6.1f}× fair, {r['busy_1'] / r['alone_1'] / fair_1:5.1f}× fair")
    return rows


if __name__ == "__main__":
    print(json.dumps(time_steps(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
