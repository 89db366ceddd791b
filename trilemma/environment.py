"""Where a run executes: the device, a description of the machine, library versions."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from trilemma.errors import TrilemmaError
from trilemma.presets import PRECISIONS

LIBRARIES = ("torch", "torchvision", "torch-fidelity", "pandas", "numpy", "pluggy", "matplotlib", "trilemma")


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; anything else must be cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise TrilemmaError(f"unknown device {name!r}; valid: auto, cpu, cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrilemmaError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return torch.device(name)




def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 faster than fp32: a CUDA GPU with bf16 support, or a CPU
    with AVX512-BF16 or AMX-BF16 (oneDNN uses them for bf16 matmuls and convolutions)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def resolve_precision(name: str, device: torch.device) -> str:
    """The training precision: ``fp32``, or ``bf16`` (autocast) where the device has fast bf16;
    ``auto`` picks by the device."""
    if name not in PRECISIONS:
        raise TrilemmaError(f"unknown precision {name!r}; valid: {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrilemmaError("--precision bf16: this GPU has no bf16 support; use --precision fp32 or auto")
    return name


def resolve_threads(threads: int | None, device: torch.device) -> int | None:
    """The torch CPU threads each cell uses. On a CPU, one unless asked: the thread count changes how
    float sums are split, and so the trained weights, so a fixed count gives the same numbers on any
    core count; the cores are used by running cells side by side (``--jobs``), which trained DCGAN and
    DDPM faster than one cell with every thread on a 2-core CPU (tests/bench_parallel.py; the other
    models not yet measured). On a GPU, torch's default."""
    if threads is not None and threads < 1:
        raise TrilemmaError(f"--threads must be a whole number ≥ 1, got {threads}")
    if device.type == "cpu":
        return threads or 1
    return threads


def configure_device(device: torch.device) -> dict[str, object]:
    """Numerics settings for a run on ``device``, returned for the manifest. On CUDA: TF32 for fp32
    matmuls and convolutions (what a practitioner would use), cuDNN's autotuner off (it times
    kernels, so its choice could depend on load) and PyTorch's deterministic kernels where they
    exist, so a seed gives the same numbers on a busy GPU too."""
    if device.type != "cuda":
        return {"threads": torch.get_num_threads()}
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS; read at its first use
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    return {"tf32": True, "cudnn_benchmark": False, "deterministic_algorithms": "where available (warn otherwise)"}


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def library_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for name in (*LIBRARIES, *extra):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def merged_versions(before: dict[str, str], now: dict[str, str]) -> dict[str, str]:
    """The versions of every command that wrote into the run directory: each distribution once, with
    every version it ran at in order ("2.14.0, then 2.14.1"), so a plugin that only an earlier command
    used stays listed and a library that changed between commands says so."""
    merged = dict(before)
    for name, current in now.items():
        seen = merged.get(name, "").split(", then ") if merged.get(name) else []
        merged[name] = current if not seen else ", then ".join(seen if current == seen[-1] else [*seen, current])
    return merged
