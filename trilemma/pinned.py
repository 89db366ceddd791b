"""Networks the harness judges samples with, shipped in ``trilemma/assets/`` and pinned by SHA-256.

Each pinned network has a weights file and an info file (JSON: its ``sha256`` and how it was
trained); the weights are read and checked against the recorded hash once per process, and each
``trilemma <network> train`` command reproduces them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

import torch

from trilemma.cache import CACHE
from trilemma.errors import TrilemmaError
from trilemma.files import atomic_torch_save, atomic_write_text

Network = TypeVar("Network", bound=torch.nn.Module)


def asset_path(name: str) -> Path:
    return Path(str(files("trilemma") / "assets" / name))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_info(info_name: str, command: str) -> dict[str, Any]:
    """The shipped info file ``info_name``; ``command`` reproduces it when it is missing."""
    path = asset_path(info_name)
    if not path.exists():
        raise TrilemmaError(f"{path} missing: run `{command}`")
    return json.loads(path.read_text())


def verified_state(weights_name: str, expected_sha256: str, command: str) -> dict[str, torch.Tensor]:
    """The shipped state dict ``weights_name``, checked against ``expected_sha256`` (once per process)."""
    path = asset_path(weights_name)
    if not path.exists():
        raise TrilemmaError(f"weights {path} missing: run `{command}`")

    def load() -> dict[str, torch.Tensor]:
        actual = file_sha256(path)
        if actual != expected_sha256:
            raise TrilemmaError(f"weights {path} have SHA-256 {actual[:12]}…, expected {expected_sha256[:12]}…; "
                                f"reinstall trilemma or run `{command}`")
        return torch.load(path, map_location="cpu", weights_only=True)

    return CACHE.get("pinned-weights", (str(path), expected_sha256), load)


def save_pinned(out_dir: Path, weights_name: str, info_name: str, state: dict[str, torch.Tensor],
                info: dict[str, Any]) -> str:
    """Write ``state`` and ``info`` plus the weights' SHA-256 into ``out_dir``; returns the hash."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / weights_name
    atomic_torch_save(weights, state)
    sha256 = file_sha256(weights)
    atomic_write_text(out_dir / info_name, json.dumps({"sha256": sha256, **info}, indent=2) + "\n")
    return sha256


def fit(model: Network, n: int, batch_loss: Callable[[torch.Tensor, torch.Generator], torch.Tensor], *,
        epochs: int, seed: int, batch_size: int = 128, max_lr: float = 3e-3, desc: str = "training",
        progress: bool = True) -> Network:
    """Adam with a one-cycle learning-rate schedule over ``epochs`` shuffles of ``n`` items, seeded;
    ``batch_loss(indices, generator)`` is one batch's loss. Returns the model on the CPU, frozen."""
    from trilemma.progress import progress_bar

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps_per_epoch = n // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=epochs * steps_per_epoch)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        bar = progress_bar(range(steps_per_epoch), enabled=progress, desc=f"{desc} epoch {epoch + 1}/{epochs}")
        for step in bar:
            loss = batch_loss(order[step * batch_size : (step + 1) * batch_size], generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
    return model.cpu().eval().requires_grad_(False)
