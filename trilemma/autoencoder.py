"""The pinned MNIST autoencoder: a second feature space, independent of the classifier's.

The classifier's features keep what separates ten digits and little else, so blobs and speckle
can land near real digits in them (Kynkäänniemi et al. 2023, "The Role of ImageNet Classes in
Fréchet Inception Distance"; Stein et al. 2023, "Exposing flaws of generative model evaluation
metrics"). An autoencoder trained only to redraw MNIST digits, with no label, must keep in its code
where the strokes are, how wide and how sharp: its 64-d code is the second space in which FID,
KID, precision/recall and density/coverage are measured. Weights ship in ``trilemma/assets/``,
pinned by SHA-256; ``trilemma autoencoder train`` reproduces them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trilemma.pinned import fit, read_info, save_pinned, verified_state

WEIGHTS_NAME = "mnist_autoencoder.pt"
INFO_NAME = "mnist_autoencoder.json"
TRAIN_COMMAND = "trilemma autoencoder train"
CODE_DIM = 64


class MnistAutoencoder(nn.Module):
    """Three strided convolutions down to a 64-d code, two transposed convolutions back up to
    Bernoulli logits; no normalisation layers, so train and eval modes compute the same function."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, 4, stride=2, padding=1), nn.SiLU(),  # 14×14
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.SiLU(),  # 7×7
            nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.SiLU(),  # 4×4
            nn.Flatten(), nn.Linear(128 * 4 * 4, CODE_DIM),
        )
        self.decoder = nn.Sequential(
            nn.Linear(CODE_DIM, 128 * 7 * 7), nn.SiLU(), nn.Unflatten(1, (128, 7, 7)),
            nn.ConvTranspose2d(128, 64, 4, stride=2, padding=1), nn.SiLU(),  # 14×14
            nn.ConvTranspose2d(64, 1, 4, stride=2, padding=1),  # 28×28 logits
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: N×1×28×28 floats in [0, 1]. Returns the N×64 code."""
        return self.encoder(x * 2 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(x))


@dataclass(frozen=True)
class AutoencoderInfo:
    """What the manifest records about the autoencoder."""

    sha256: str
    test_bce: float  # mean binary cross-entropy per pixel of test reconstructions, nats
    seed: int
    epochs: int
    train_seconds: float


def autoencoder_info() -> AutoencoderInfo:
    return AutoencoderInfo(**read_info(INFO_NAME, TRAIN_COMMAND))


def load_autoencoder(device: torch.device | str = "cpu") -> MnistAutoencoder:
    """A new instance of the pinned autoencoder on ``device``, frozen (weights checked once)."""
    model = MnistAutoencoder()
    model.load_state_dict(verified_state(WEIGHTS_NAME, autoencoder_info().sha256, TRAIN_COMMAND))
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def encode(model: MnistAutoencoder, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Codes of N×1×28×28 images (uint8, or floats in [0, 1]), batched."""
    device = next(model.parameters()).device
    codes = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device)
        codes.append(model.encode(batch.float() / 255 if batch.dtype == torch.uint8 else batch.float()))
    return torch.cat(codes)


@torch.no_grad()
def reconstruction_bce(model: MnistAutoencoder, images: torch.Tensor, batch_size: int = 1000) -> float:
    """Mean per-pixel binary cross-entropy (nats) of the reconstructions of uint8 ``images``."""
    total = 0.0
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].float() / 255
        total += F.binary_cross_entropy_with_logits(model(x), x, reduction="sum").item()
    return total / images.numel()


def train_autoencoder(train_images: torch.Tensor, *, epochs: int = 3, seed: int = 0, batch_size: int = 128,
                      device: str = "cpu", progress: bool = True) -> MnistAutoencoder:
    """Bernoulli cross-entropy on the grey levels, Adam with a one-cycle schedule; seeded."""
    torch.manual_seed(seed)
    model = MnistAutoencoder().to(device)

    def batch_loss(idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = (train_images[idx].float() / 255).to(device)
        return F.binary_cross_entropy_with_logits(model(x), x)

    return fit(model, len(train_images), batch_loss, epochs=epochs, seed=seed, batch_size=batch_size,
               desc="autoencoder", progress=progress)


def train_and_save(out_dir: Path, data_dir: Path | None = None, *, epochs: int = 3, seed: int = 0,
                   device: str = "cpu", progress: bool = True) -> AutoencoderInfo:
    """Train on MNIST train, measure test reconstructions, write weights + info to ``out_dir``."""
    from trilemma.data import load_mnist

    mnist = load_mnist(data_dir)
    start = time.perf_counter()
    model = train_autoencoder(mnist["train"].images, epochs=epochs, seed=seed, device=device, progress=progress)
    seconds = time.perf_counter() - start
    info: dict[str, Any] = {"test_bce": round(reconstruction_bce(model, mnist["test"].images), 5), "seed": seed, "epochs": epochs,
            "train_seconds": round(seconds, 1)}
    return AutoencoderInfo(sha256=save_pinned(out_dir, WEIGHTS_NAME, INFO_NAME, model.state_dict(), info), **info)
