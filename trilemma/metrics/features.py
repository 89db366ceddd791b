"""Feature spaces, and the features of the evaluation samples and of real splits, computed once.

A ``FeatureSpace`` is a pinned network's view of an image: the classifier's penultimate layer,
or the autoencoder's code. Every metric that measures distances between images goes through
here: the evaluation samples' features are cached in the evaluation context (shared by the
metrics of one row), a real split's per process and, with a cache directory, per machine.
Multi-channel images (Stacked-MNIST) are seen channel by channel; their features are the
channels' features side by side.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trilemma.cache import CACHE
from trilemma.data import Split
from trilemma.files import atomic_torch_save
from trilemma.metrics import EvalContext

#: Computing features of this many real images or more is said on stderr before it starts.
ANNOUNCE_FROM = 20_000


@dataclass(frozen=True)
class FeatureSpace:
    """A pinned network's view of N×1×28×28 images, in which distances between samples are measured.

    ``prefix`` starts the column names of a metric measured in this space (empty for the classifier,
    whose columns came first); ``label`` goes into column titles; ``extractor`` is the name under
    which torch-fidelity knows the network; ``encode(images, device)`` gives N×``dim`` features of
    images in [0, 1] (or uint8); ``sha256()`` identifies the weights."""

    name: str
    extractor: str
    dim: int
    prefix: str
    label: str
    description: str
    sha256: Callable[[], str]
    encode: Callable[[torch.Tensor, Any], torch.Tensor]

    def features(self, images: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """N×(C·dim) features of N×C×28×28 images, on the CPU."""
        n, channels = images.shape[:2]
        return self.encode(images.reshape(n * channels, 1, 28, 28), device).reshape(n, -1).cpu()


def _classifier_features(images: torch.Tensor, device: Any) -> torch.Tensor:
    from trilemma.classifier import classify, load_classifier

    return classify(load_classifier(device), images)[0]


def _classifier_sha256() -> str:
    from trilemma.classifier import classifier_info

    return classifier_info().sha256


def _autoencoder_features(images: torch.Tensor, device: Any) -> torch.Tensor:
    from trilemma.autoencoder import encode, load_autoencoder

    return encode(load_autoencoder(device), images)


def _autoencoder_sha256() -> str:
    from trilemma.autoencoder import autoencoder_info

    return autoencoder_info().sha256


CLASSIFIER = FeatureSpace("classifier", "mnist-classifier", 128, "", "", "mnist-classifier penultimate (128-d per channel)",
                          _classifier_sha256, _classifier_features)
AUTOENCODER = FeatureSpace("autoencoder", "mnist-autoencoder", 64, "ae_", "AE",
                           "mnist-autoencoder code (64-d per channel, no labels seen)", _autoencoder_sha256,
                           _autoencoder_features)


def classifier_outputs(images: torch.Tensor, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(features N×(C·128), logits N×C×10) of N×C×28×28 images (uint8, or floats in [0, 1]), on the CPU."""
    from trilemma.classifier import classify, load_classifier

    n, channels = images.shape[:2]
    features, logits = classify(load_classifier(device), images.reshape(n * channels, 1, 28, 28))
    return features.reshape(n, -1).cpu(), logits.reshape(n, channels, -1).cpu()


def sample_outputs(ctx: EvalContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation samples' classifier outputs, computed once per row."""
    if "classifier_outputs" not in ctx.cache:
        ctx.cache["classifier_outputs"] = classifier_outputs(ctx.samples.images, ctx.device)
    return ctx.cache["classifier_outputs"]


def sample_features(ctx: EvalContext, space: FeatureSpace) -> torch.Tensor:
    """The evaluation samples' features in ``space``, computed once per row."""
    if space is CLASSIFIER:
        return sample_outputs(ctx)[0]
    key = f"{space.name}_features"
    if key not in ctx.cache:
        ctx.cache[key] = space.features(ctx.samples.images, ctx.device)
    return ctx.cache[key]


def content_key(images: torch.Tensor) -> str:
    """A short hash of the images' bytes: caches of real features are keyed by what was encoded, not
    by a split's name and size (``trilemma sanity`` measures against half a split, for one)."""
    import hashlib

    return hashlib.sha256(images.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def _real_cached(kind: str, dataset: str, split_name: str, images: torch.Tensor, device: Any, sha256: str,
                 cache_dir: Path | None, compute: Callable[[], Any]) -> Any:
    n, content = len(images), content_key(images)
    key = (kind, dataset, split_name, n, content, str(device))
    held = CACHE.peek("real-features", key)
    if held is not None:
        return held
    path = Path(cache_dir) / f"trilemma-{dataset}-{split_name}-{n}-{content}-{kind}-{sha256[:16]}.pt" if cache_dir else None
    if path is not None and path.exists():
        try:
            found = torch.load(path, weights_only=True)
            first = found[0] if isinstance(found, (tuple, list)) else found
            if len(first) == n:
                return CACHE.put("real-features", key, found)
        except Exception:  # a damaged cache file is recomputed
            pass
    if n >= ANNOUNCE_FROM:  # a silent minute looks like a hang
        where = f", kept in {path.parent}" if path is not None else ""
        print(f"computing {kind} features of {n:,} {dataset} {split_name} images once{where}", file=sys.stderr,
              flush=True)
    outputs = CACHE.put("real-features", key, compute())
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(path, outputs)
    return outputs


def real_outputs(dataset: str, split_name: str, split: Split, device: torch.device | str = "cpu",
                 n: int | None = None, cache_dir: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` (default all) images of a real split through the classifier: once per
    process, and once per machine with ``cache_dir`` (keyed by the images' content and the classifier's hash)."""
    n = len(split.images) if n is None else min(n, len(split.images))
    return _real_cached("classifier", dataset, split_name, split.images[:n], device, CLASSIFIER.sha256(), cache_dir,
                        lambda: classifier_outputs(split.images[:n], device))


def real_features(space: FeatureSpace, dataset: str, split_name: str, split: Split,
                  device: torch.device | str = "cpu", n: int | None = None,
                  cache_dir: Path | None = None) -> torch.Tensor:
    """The first ``n`` images of a real split in ``space``, cached like ``real_outputs``."""
    if space is CLASSIFIER:
        return real_outputs(dataset, split_name, split, device, n, cache_dir)[0]
    n = len(split.images) if n is None else min(n, len(split.images))
    return _real_cached(space.name, dataset, split_name, split.images[:n], device, space.sha256(), cache_dir,
                        lambda: space.features(split.images[:n], device))
