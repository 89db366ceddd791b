"""Benchmarks (``tox -e bench``): training images/s and achieved GFLOP/s of every built-in model at
its quick preset, the fp32 path and the fast path (the precision the harness picks) side by side.
``TRILEMMA_BENCH_PRESET`` and ``TRILEMMA_BENCH_DEVICE`` (``cuda``) measure another preset or device.

With ``TRILEMMA_BENCH_BASELINE=<checkout>`` (a checkout of an older trilemma), its plugin modules
are loaded too and timed as a third path, "baseline", so the speed-up over that code is measured in
the same run. The last test prints the table with the ratios.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import print_benchmark_table

from trilemma.cost import device_peak_gflops, training_flops_per_step
from trilemma.environment import resolve_precision
from trilemma.model import resolve_config
from trilemma.train import autocast

MODELS = ("vae", "dcgan", "ddpm", "ddgan", "flow-matching", "cld", "lsgm", "glow")
STEPS = 8
PRESET = os.environ.get("TRILEMMA_BENCH_PRESET", "quick")
DEVICE = torch.device(os.environ.get("TRILEMMA_BENCH_DEVICE", "cpu"))
RESULTS: dict[tuple[str, str], dict[str, float]] = {}


def installed_models():
    from trilemma.plugins import collect

    os.environ.pop("TRILEMMA_LOAD_PLUGINS", None)
    return collect().models


def baseline_class(cls):
    """The same model class from the checkout at TRILEMMA_BENCH_BASELINE (None where it has none)."""
    root = os.environ.get("TRILEMMA_BENCH_BASELINE")
    if not root:
        return None
    here = Path(inspect.getfile(cls)).resolve()
    path = Path(root) / here.relative_to(Path(__file__).resolve().parents[1])
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"baseline_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return next((v for v in vars(module).values() if isinstance(v, type) and getattr(v, "name", None) == cls.name),
                None)


def measure(cls, precision: str, images: torch.Tensor, benchmark=None) -> dict[str, float]:
    preset = cls.presets.get(PRESET, {}).get("budget", {})
    batch_size = preset.get("batch_size", 128)
    torch.manual_seed(0)
    device = DEVICE
    model = cls(resolve_config(cls, PRESET, {})).to(device)
    model.optimizers = model.configure_optimizers()
    model.train()
    images = images.to(device)
    step = iter(range(10**9))

    def one_step():
        i = next(step)
        batch = images[(i * batch_size) % 50_000:][:batch_size].float().div_(255)
        with autocast(device, precision):
            model.training_step(batch, i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):  # warm-up: allocations, oneDNN primitive caches
        one_step()
    if benchmark is not None:
        seconds = benchmark.pedantic(lambda: [one_step() for _ in range(STEPS)], rounds=3, warmup_rounds=0) or 0.0
        seconds = benchmark.stats.stats.median / STEPS
    else:
        start = time.perf_counter()
        for _ in range(STEPS * 3):
            one_step()
        seconds = (time.perf_counter() - start) / (STEPS * 3)
    flops = training_flops_per_step(model, images, batch_size, precision)
    peak = device_peak_gflops(device, precision)
    return {"batch": batch_size, "images_per_s": batch_size / seconds, "gflops": flops / seconds / 1e9,
            "utilisation": flops / seconds / 1e9 / peak, "ms_per_step": 1000 * seconds}


@pytest.fixture(scope="module")
def train_images(mnist):
    return mnist["train"].images


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("path", ["baseline", "fp32", "fast"])
def test_training_step(benchmark, train_images, name, path):
    models = installed_models()
    if name not in models:
        pytest.skip(f"{name} is not installed")
    cls = models[name]
    if path == "baseline":
        cls = baseline_class(cls)
        if cls is None:
            pytest.skip("no baseline: set TRILEMMA_BENCH_BASELINE to a checkout that has this model")
        precision = "fp32"
    elif path == "fp32":
        precision = "fp32"
    else:
        chosen = resolve_precision("auto", DEVICE)
        precision = chosen if chosen in cls.precisions else "fp32"
    benchmark.group = f"train {name}"
    result = measure(cls, precision, train_images, benchmark)
    result["precision"] = precision
    benchmark.extra_info.update(result)
    RESULTS[(name, path)] = result


def test_summary_table(benchmark, capsys):
    """The table of ratios."""
    assert print_benchmark_table(benchmark, capsys, summary_rows)


def summary_rows() -> list[str]:
    rows = []
    for name in MODELS:
        fast = RESULTS.get((name, "fast"))
        if fast is None:
            continue
        for path in ("baseline", "fp32", "fast"):
            r = RESULTS.get((name, path))
            if r is None:
                continue
            reference = RESULTS.get((name, "baseline")) or RESULTS[(name, "fp32")]
            rows.append(f"{name:13s} {path:9s} {r['precision']:5s} batch {r['batch']:4d} {r['ms_per_step']:8.1f} ms/step "
                        f"{r['images_per_s']:7.0f} img/s {r['gflops']:6.1f} GFLOP/s {r['utilisation']:5.0%} of peak  "
                        f"×{r['images_per_s'] / reference['images_per_s']:.2f} img/s")
    return rows
