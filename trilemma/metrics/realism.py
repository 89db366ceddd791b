"""Realism: the share of samples that lie in a real digit's neighbourhood (Kynkäänniemi, Karras,
Laine, Lehtinen & Aila 2019, "Improved Precision and Recall Metric for Assessing Generative
Models", §5, eq. 6), in one feature space.

A sample's realism score is R(φ_g) = max_r NND_k(φ_r) / ‖φ_g − φ_r‖ over the real samples φ_r whose
k-th-neighbour radius NND_k is not among the largest: a few real outliers with huge balls would
otherwise call anything realistic (on MNIST one faint test digit's ball in the autoencoder's code
holds an all-black image). R ≥ 1 means the sample is inside a kept ball; the column is the share
of samples with R ≥ 1. Unlike a distribution distance it is per sample: it says whether the
samples look like digits at all, whatever their classes. The autoencoder's instance marks rows
where almost none do.

The paper keeps the balls up to the median radius; this keeps those up to the 90th percentile
(``KEEP_QUANTILE``). Measured on the sample grids of the committed quick run, the median keeps only
the dense core of the data: a clean DCGAN's digits were 0 of 64 realistic, a DDPM's 1–3, while
the 90th percentile already drops the outliers' balls (blobs, pixel noise and black stay at 0 of
1,000) and leaves DCGAN at 5%, a blurry 2-d VAE at 58% and held-out digits at 74–93%.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd
import torch

from trilemma.cache import CACHE
from trilemma.columns import Column
from trilemma.hookspecs import hookimpl
from trilemma.metrics import EvalContext, Metric, ReportSection
from trilemma.metrics.features import AUTOENCODER, CLASSIFIER, FeatureSpace, content_key, real_features, sample_features
from trilemma.metrics.knn import nearest_distances, within_radius_counts

NEIGHBOURS = 3  # the paper's k
KEEP_QUANTILE = 0.9  # real balls up to this quantile of the radii are kept (the paper: the median)
#: A row of which fewer samples than this are realistic in the autoencoder's code is marked.
#: ``trilemma sanity`` holds the rule to its sets (1,000 held-out samples each, against half the
#: test split): every set of digits, noisy (σ ≤ 0.2), blurred (σ ≤ 1.5 px), one class or training
#: digits, has a realistic share of 0.6 or more, and blobs, pixel noise and black have 0. The mark
#: says "almost none": fewer than one sample in a hundred, far below every set of digits.
REALISM_THRESHOLD = 0.01
REALISM_MARK = "⚠ unlike digits"


def kept_balls(real: torch.Tensor, k: int = NEIGHBOURS, quantile: float = KEEP_QUANTILE
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The real points whose k-th-neighbour radius is at most the ``quantile`` of the radii, and their
    squared radii."""
    squared = nearest_distances(real, real, k=k, exclude_self=True, squared=True)
    keep = squared <= squared.quantile(quantile)
    return real[keep], squared[keep]


def realistic_share(fake: torch.Tensor, centres: torch.Tensor, squared_radii: torch.Tensor) -> float:
    """The share of ``fake`` rows with realism score ≥ 1: inside at least one of the balls."""
    counts, _ = within_radius_counts(fake, centres, squared_radii)
    return float((counts > 0).double().mean())


class RealismMetric(Metric):
    """The share of samples with realism score ≥ 1 (Kynkäänniemi et al. 2019) in one feature space;
    with ``mark_below``, rows under it get the ``⚠ unlike digits`` mark."""

    needs = ("samples", "real", "features")
    in_curves = True
    protocol_keys = ("k", "real_samples", "features", "pruning")

    def __init__(self, space: FeatureSpace = CLASSIFIER, mark_below: float | None = None) -> None:
        self.space, self.mark_below = space, mark_below
        self.name = "realism" if space is CLASSIFIER else f"realism-{space.name}"
        label = f" ({space.label})" if space.label else ""
        self.column = f"{space.prefix}realism"
        self.columns = (
            Column(self.column, better="higher", headline=mark_below is not None, title=f"realistic{label}",
                   fmt="{:.3f}", description=f"share of samples with realism score ≥ 1 (Kynkäänniemi et al. 2019, k=3, "
                                             f"the largest 10% of real balls dropped) in {space.name} features"),
        )

    def compute(self, ctx: EvalContext) -> dict[str, Any]:
        test = ctx.data["test"]
        real = real_features(self.space, ctx.dataset.name, "test", test, ctx.device, cache_dir=ctx.cache_dir)
        key = (self.space.name, ctx.dataset.name, content_key(test.images), NEIGHBOURS)
        centres, radii = CACHE.get("realism-balls", key, lambda: kept_balls(real))
        return {self.column: realistic_share(sample_features(ctx, self.space), centres, radii)}

    def marks(self, row: Mapping[str, Any]) -> list[str]:
        share = row.get(self.column, math.nan)
        if self.mark_below is None or not isinstance(share, float) or not math.isfinite(share):
            return []
        return [REALISM_MARK] if share < self.mark_below else []

    def report_section(self, frame: pd.DataFrame) -> ReportSection | None:
        if self.mark_below is None or self.column not in frame or not frame[self.column].notna().any():
            return None
        ok = frame[frame["status"] == "ok"]
        shares = ok.groupby(["model", "sampler"], sort=False)[self.column].mean().reset_index()
        marked = [f"{r.model}/{r.sampler}" for r in shares.itertuples() if getattr(r, self.column) < self.mark_below]
        table = pd.DataFrame({"model": shares["model"], "sampler": shares["sampler"],
                              f"realistic ({self.space.label})": shares[self.column].map("{:.3f}".format),
                              "mark": [REALISM_MARK if v < self.mark_below else "" for v in shares[self.column]]})
        notes = [f"{REALISM_MARK}: fewer than {self.mark_below:.1%} of the row's samples lie in a real test digit's "
                 f"neighbourhood in the {self.space.name}'s code (realism score ≥ 1, Kynkäänniemi et al. 2019: inside "
                 f"the k=3 ball of a real digit, the largest 10% of balls, the outliers', dropped). `trilemma sanity` "
                 "calibrates the rule: every set of real digits (noisy, blurred, one class) has 60% or more, blobs, "
                 "pixel noise and black 0%. Its numbers are the samples', whatever the other columns say. "
                 + (f"Marked: {', '.join(marked)}." if marked else "No row is marked.")]
        return ReportSection(f"Realism in the {self.space.name}'s code", table, notes)

    def protocol(self, ctx: EvalContext) -> dict[str, Any]:
        n = len(ctx.data["test"].images)
        return {"summary": f"realistic share (Kynkäänniemi et al. 2019, §5): samples with realism score ≥ 1 against "
                           f"the {n} real test images' k={NEIGHBOURS} balls up to the {KEEP_QUANTILE:.0%} quantile of "
                           "their radii, "
                           f"{self.space.description}" + (f"; rows under {self.mark_below:g} marked "
                                                          f"'{REALISM_MARK}'" if self.mark_below is not None else ""),
                "k": NEIGHBOURS, "real_samples": n, "features": self.space.description,
                "pruning": f"balls with radius ≤ the {KEEP_QUANTILE:g} quantile", "mark_below": self.mark_below}


@hookimpl
def register_metrics(register: Callable[..., None]) -> None:
    register(RealismMetric(CLASSIFIER))
    register(RealismMetric(AUTOENCODER, mark_below=REALISM_THRESHOLD))
