"""Density and coverage (Naeem, Oh, Uh, Choi & Yoo 2020, "Reliable Fidelity and Diversity Metrics
for Generative Models", §3.2), in the pinned classifier's and the pinned autoencoder's features.

Each real sample X_i gets the open ball B(X_i, NND_k(X_i)) reaching its k-th nearest real neighbour.
Density = 1/(kM) Σ_j Σ_i 1[Y_j ∈ B(X_i)], the mean number of real balls a generated sample Y_j
falls in, over k (about 1 for samples distributed like the real data; it rewards samples in
dense real regions and is robust to real outliers, unlike precision). Coverage = 1/N Σ_i
1[∃ j: Y_j ∈ B(X_i)], the share of real balls that hold a generated sample (robust to generated
outliers, unlike recall). Real and generated sets are the same size: the first M test images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from trilemma.cache import CACHE
from trilemma.columns import Column
from trilemma.hookspecs import hookimpl
from trilemma.metrics import EvalContext, Metric
from trilemma.metrics.features import AUTOENCODER, CLASSIFIER, FeatureSpace, content_key, real_features, sample_features
from trilemma.metrics.knn import nearest_distances, within_radius_counts

NEIGHBOURS = 5  # the paper's k


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = NEIGHBOURS,
                     squared_radii: torch.Tensor | None = None) -> dict[str, float]:
    """Density and coverage of ``fake`` features against ``real`` features (rows are samples)."""
    if squared_radii is None:
        squared_radii = nearest_distances(real, real, k=k, exclude_self=True, squared=True)
    counts, covered = within_radius_counts(fake, real, squared_radii)
    return {"density": float(counts.double().sum() / (k * len(fake))), "knn_coverage": float(covered.double().mean())}


class DensityCoverageMetric(Metric):
    """Density and k-NN coverage in one feature space (the classifier's, or the autoencoder's: ``ae_`` columns)."""

    needs = ("samples", "real", "features")
    protocol_keys = ("k", "real_samples", "features")

    def __init__(self, space: FeatureSpace = CLASSIFIER) -> None:
        self.space = space
        self.name = "density-coverage" if space is CLASSIFIER else f"density-coverage-{space.name}"
        p, label = space.prefix, f" ({space.label})" if space.label else ""
        self.columns = (
            Column(f"{p}density", description=f"Naeem et al. 2020 density, k=5, {space.name} features (about 1 for "
                                              "real-like samples; higher is not simply better)"),
            Column(f"{p}knn_coverage", judged="coverage", better="higher", headline=space is CLASSIFIER,
                   title=f"k-NN coverage{label}", fmt="{:.3f}",
                   description=f"Naeem et al. 2020 coverage, k=5, {space.name} features: share of real k-NN balls "
                               "holding a generated sample"),
        )

    def compute(self, ctx: EvalContext) -> dict[str, Any]:
        fake = sample_features(ctx, self.space)
        n = min(len(fake), len(ctx.data["test"].images))
        real = real_features(self.space, ctx.dataset.name, "test", ctx.data["test"], ctx.device, n, ctx.cache_dir)
        cache_key = (self.space.name, ctx.dataset.name, n, content_key(ctx.data["test"].images[:n]), NEIGHBOURS,
                     str(real.device))
        radii = CACHE.get("density-radii", cache_key,
                          lambda: nearest_distances(real, real, k=NEIGHBOURS, exclude_self=True, squared=True))
        values = density_coverage(real, fake, squared_radii=radii)
        return {f"{self.space.prefix}{key}": value for key, value in values.items()}

    def protocol(self, ctx: EvalContext) -> dict[str, Any]:
        n = min(ctx.preset.eval_samples, len(ctx.data["test"].images))
        return {"summary": f"density and coverage (Naeem et al. 2020), k={NEIGHBOURS}, {self.space.description}; "
                           f"{n} generated samples against the first {n} real test images",
                "k": NEIGHBOURS, "real_samples": n, "features": self.space.description}


@hookimpl
def register_metrics(register: Callable[..., None]) -> None:
    register(DensityCoverageMetric(CLASSIFIER))
    register(DensityCoverageMetric(AUTOENCODER))
