"""Classifier features and logits of the evaluation samples and of real splits, computed once.

Every metric that looks at the pinned classifier's view of an image goes through here: the
evaluation samples' outputs are cached in the evaluation context (shared by the metrics of one
row), a real split's outputs per process. Multi-channel images (Stacked-MNIST) are classified
channel by channel; their features are the channels' features side by side.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trilemma.cache import CACHE
from trilemma.classifier import classifier_info, classify, load_classifier
from trilemma.data import Split
from trilemma.files import atomic_torch_save
from trilemma.metrics import EvalContext


def classifier_outputs(images: torch.Tensor, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(features N×(C·128), logits N×C×10) of N×C×28×28 images (uint8, or floats in [0, 1]), on the CPU."""
    n, channels = images.shape[:2]
    features, logits = classify(load_classifier(device), images.reshape(n * channels, 1, 28, 28))
    return features.reshape(n, -1).cpu(), logits.reshape(n, channels, -1).cpu()


def sample_outputs(ctx: EvalContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation samples' classifier outputs, computed once per row."""
    if "classifier_outputs" not in ctx.cache:
        ctx.cache["classifier_outputs"] = classifier_outputs(ctx.samples.images, ctx.device)
    return ctx.cache["classifier_outputs"]


def real_outputs(dataset: str, split_name: str, split: Split, device: torch.device | str = "cpu",
                 n: int | None = None, cache_dir: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` (default all) images of a real split through the classifier: once per
    process, and once per machine with ``cache_dir`` (keyed by the split, n and the classifier's hash)."""
    n = len(split.images) if n is None else min(n, len(split.images))
    key = (dataset, split_name, n, str(device))
    held = CACHE.peek("real-features", key)
    if held is not None:
        return held
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"trilemma-{dataset}-{split_name}-{n}-classifier-{classifier_info().sha256[:16]}.pt"
        if path.exists():
            try:
                features, logits = torch.load(path, weights_only=True)
                if len(features) == n:
                    return CACHE.put("real-features", key, (features, logits))
            except Exception:  # a damaged cache file is recomputed
                pass
    outputs = CACHE.put("real-features", key, classifier_outputs(split.images[:n], device))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(path, outputs)
    return outputs
