"""The pinned MNIST classifier: architecture, loading, and its reproducible training.

It judges every generated digit (class histograms, confidence) and provides the features for
FID/KID/precision-recall and the logits for IS, the way an Inception network does for ImageNet.
Weights ship in ``trilemma/assets/`` and are pinned by SHA-256; ``trilemma classifier train``
reproduces them.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trilemma.cache import CACHE
from trilemma.errors import TrilemmaError
from trilemma.files import atomic_torch_save, atomic_write_text

WEIGHTS_NAME = "mnist_classifier.pt"
INFO_NAME = "mnist_classifier.json"
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


def asset_path(name: str) -> Path:
    return Path(str(files("trilemma") / "assets" / name))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def classifier_info() -> ClassifierInfo:
    info_path = asset_path(INFO_NAME)
    if not info_path.exists():
        raise TrilemmaError(f"classifier info {info_path} missing: run `trilemma classifier train`")
    return ClassifierInfo(**json.loads(info_path.read_text()))


def _verified_state(path: str, expected_sha256: str) -> dict[str, torch.Tensor]:
    def load() -> dict[str, torch.Tensor]:
        actual = file_sha256(Path(path))
        if actual != expected_sha256:
            raise TrilemmaError(
                f"classifier weights {path} have SHA-256 {actual[:12]}…, expected {expected_sha256[:12]}…; "
                "reinstall trilemma or run `trilemma classifier train`"
            )
        return torch.load(path, map_location="cpu", weights_only=True)

    return CACHE.get("classifier-weights", (path, expected_sha256), load)


def load_classifier(device: torch.device | str = "cpu") -> MnistClassifier:
    """A new instance of the pinned classifier on ``device``, in eval mode; the weights are read and
    checked against the recorded SHA-256 once, and no caller shares (or moves) another's module."""
    path = asset_path(WEIGHTS_NAME)
    if not path.exists():
        raise TrilemmaError(f"classifier weights {path} missing: run `trilemma classifier train`")
    model = MnistClassifier()
    model.load_state_dict(_verified_state(str(path), classifier_info().sha256))
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
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = MnistClassifier().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps_per_epoch = len(train_images) // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=epochs * steps_per_epoch)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(train_images), generator=generator)
        bar = tqdm(range(steps_per_epoch), desc=f"classifier epoch {epoch + 1}/{epochs}", disable=not progress)
        for step in bar:
            idx = order[step * batch_size : (step + 1) * batch_size]
            x = _shift(train_images[idx].float() / 255, generator).to(device)
            loss = F.cross_entropy(model(x), train_labels[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
    return model.cpu().eval().requires_grad_(False)


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
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_NAME
    atomic_torch_save(weights, model.state_dict())
    info = ClassifierInfo(sha256=file_sha256(weights), test_accuracy=round(test_acc, 5), seed=seed,
                          epochs=epochs, train_seconds=round(seconds, 1))
    atomic_write_text(out_dir / INFO_NAME, json.dumps(info.__dict__, indent=2) + "\n")
    return info
