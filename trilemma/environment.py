"""Where a run executes: the device, a description of the machine, library versions."""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from trilemma.errors import TrilemmaError

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
