"""The pinned MNIST classifier: architecture, loading, and its reproducible training.

It judges every generated digit (class histograms, confidence) and provides the features for
FID/KID/precision-recall and the logits for IS, the way an Inception network does for ImageNet.
Weights ship in ``trilemma/assets/`` and are pinned by SHA-256; ``trilemma classifier train``
reproduces them.
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

WEIGHTS_NAME = "mnist_classifier.pt"
INFO_NAME = "mnist_classifier.json"
TRAIN_COMMAND = "trilemma classifier train"
FEATURE_DIM = 128
# Inputs are normalised with the MNIST train mean and standard deviation.
_MEAN, _STD = 0.1307, 0.3081


class MnistClassifier(nn.Module):
    """Four 3×3 convolutions with batch norm, two max-pools, a 128-d feature layer, 10 logits."""

    def __init__(self) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.body = nn.Sequential(
            *block(1, 32), *block(32, 32), nn.MaxPool2d(2),
            *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.3),
            nn.Linear(64 * 7 * 7, FEATURE_DIM, bias=False), nn.BatchNorm1d(FEATURE_DIM), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(FEATURE_DIM, 10))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: N×1×28×28 floats in [0, 1]. Returns (N×128 penultimate features, N×10 logits)."""
        features = self.body((x - _MEAN) / _STD)
        return features, self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[1]


@dataclass(frozen=True)
class ClassifierInfo:
    """What the manifest records about the classifier."""

    sha256: str
    test_accuracy: float
    seed: int
    epochs: int
    train_seconds: float


def classifier_info() -> ClassifierInfo:
    return ClassifierInfo(**read_info(INFO_NAME, TRAIN_COMMAND))


def load_classifier(device: torch.device | str = "cpu") -> MnistClassifier:
    """A new instance of the pinned classifier on ``device``, in eval mode; the weights are read and
    checked against the recorded SHA-256 once, and no caller shares (or moves) another's module."""
    model = MnistClassifier()
    model.load_state_dict(verified_state(WEIGHTS_NAME, classifier_info().sha256, TRAIN_COMMAND))
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def classify(model: MnistClassifier, images: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and logits for N×1×28×28 images (uint8, or floats in [0, 1]), batched."""
    device = next(model.parameters()).device
    feats, logits = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device)
        batch = batch.float() / 255 if batch.dtype == torch.uint8 else batch.float()
        f, lg = model.features_and_logits(batch)
        feats.append(f)
        logits.append(lg)
    return torch.cat(feats), torch.cat(logits)


def accuracy(model: MnistClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    _, logits = classify(model, images)
    return (logits.argmax(1).cpu() == labels.cpu()).float().mean().item()


def _shift(batch: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (zero padding), a standard MNIST augmentation."""
    n = batch.shape[0]
    padded = F.pad(batch, (max_shift,) * 4)
    dx, dy = (torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator)).tolist()
    return torch.stack([padded[i, :, y : y + 28, x : x + 28] for i, (x, y) in enumerate(zip(dx, dy, strict=True))])


def train_classifier(train_images: torch.Tensor, train_labels: torch.Tensor, *, epochs: int = 4,
                     seed: int = 0, batch_size: int = 128, device: str = "cpu",
                     progress: bool = True) -> MnistClassifier:
    """Adam with a one-cycle learning-rate schedule and random shifts; seeded."""
    torch.manual_seed(seed)
    model = MnistClassifier().to(device)

    def batch_loss(idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = _shift(train_images[idx].float() / 255, generator).to(device)
        return F.cross_entropy(model(x), train_labels[idx].to(device))

    return fit(model, len(train_images), batch_loss, epochs=epochs, seed=seed, batch_size=batch_size,
               desc="classifier", progress=progress)


def train_and_save(out_dir: Path, data_dir: Path | None = None, *, epochs: int = 4, seed: int = 0,
                   device: str = "cpu", progress: bool = True) -> ClassifierInfo:
    """Train the classifier on MNIST train, evaluate on test, write weights + info to ``out_dir``."""
    from trilemma.data import load_mnist

    torch.set_num_threads(max(1, torch.get_num_threads()))
    mnist = load_mnist(data_dir)
    start = time.perf_counter()
    model = train_classifier(mnist["train"].images, mnist["train"].labels, epochs=epochs, seed=seed,
                             device=device, progress=progress)
    seconds = time.perf_counter() - start
    test_acc = accuracy(model, mnist["test"].images, mnist["test"].labels)
    info: dict[str, Any] = {"test_accuracy": round(test_acc, 5), "seed": seed, "epochs": epochs,
                            "train_seconds": round(seconds, 1)}
    sha256 = save_pinned(out_dir, WEIGHTS_NAME, INFO_NAME, model.state_dict(), info)
    return ClassifierInfo(sha256=sha256, **info)
