"""Memorization: are generated samples closer to the training set than unseen real data is?

A data-copying test in the spirit of Meehan, Chaudhuri & Dasgupta (2020, "A Non-Parametric Test to
Detect Data-Copying in Generative Models", §3): compare the distances from generated samples to
their nearest training image with the same distances for held-out real images (the test split),
which the model never saw. A model that generalises produces samples about as far from the
training set as held-out data is; one that copies produces samples much closer.

Columns, in pixel space and in the pinned classifier's feature space: the share of generated
samples closer to a training image than 95% of held-out images are (the 5th percentile of
held-out distances; about 5% for a model that does not copy, about 100% for one that returns
training images), the ratio of median distances (generated / held-out), and the z-score of a
Mann–Whitney U test of the two distance samples in pixel space (Meehan et al.'s C_T without
their cell partition; strongly negative: copying). A row is flagged when either share exceeds
``COPY_SHARE_FLAG``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch

from trilemma.cache import CACHE
from trilemma.columns import Column
from trilemma.hookspecs import hookimpl
from trilemma.metrics import EvalContext, Metric, ReportSection
from trilemma.metrics.features import content_key, real_outputs, sample_outputs
from trilemma.metrics.knn import nearest_distances

HELD_OUT_QUANTILE = 0.05
COPY_SHARE_FLAG = 0.25  # five times the share a non-copying model shows


def mann_whitney_z(a: torch.Tensor, b: torch.Tensor) -> float:
    """z-score of the Mann–Whitney U statistic of ``a`` against ``b`` (normal approximation, ties
    averaged): negative when ``a`` tends to be smaller."""
    from scipy.stats import rankdata

    ranks = rankdata(torch.cat([a, b]).double().numpy())  # ties get their average rank
    n, m = len(a), len(b)
    u = float(ranks[:n].sum()) - n * (n + 1) / 2
    return (u - n * m / 2) / math.sqrt(n * m * (n + m + 1) / 12)


def copying_columns(generated: torch.Tensor, held_out: torch.Tensor, suffix: str) -> dict[str, float]:
    """The share, median ratio for one space, from nearest-training distances."""
    threshold = torch.quantile(held_out.double(), HELD_OUT_QUANTILE)
    return {f"copy_share_{suffix}": float((generated.double() < threshold).double().mean()),
            f"train_distance_ratio_{suffix}": float(generated.median() / held_out.median())}


class MemorizationMetric(Metric):
    name = "memorization"
    needs = ("samples", "real", "features")
    columns = (
        Column("copy_share_pixels", judged="none", better="lower", headline=True, title="copies", fmt="{:.1%}",
               description="share of samples closer to a training image (pixels) than 95% of held-out test images are"),
        Column("copy_share_features", judged="none", better="lower", description="the same in classifier-feature space"),
        Column("train_distance_ratio_pixels", description="median nearest-training distance, generated / held-out"),
        Column("train_distance_ratio_features"),
        Column("copying_z", description="Mann–Whitney z of generated vs held-out nearest-training distances "
                                        "(pixels); strongly negative: copying"),
    )
    protocol_keys = ("held_out", "quantile")

    def compute(self, ctx: EvalContext) -> dict[str, Any]:
        train, held = ctx.data["train"], ctx.data["test"]
        n = min(len(ctx.samples.images), len(held.images))
        generated_pixels = nearest_distances(ctx.samples.images.float(), train.images.float() / 255)
        generated_features = nearest_distances(sample_outputs(ctx)[0], self._train_features(ctx))
        held_pixels = self._held_out(ctx, "pixels", n, lambda: nearest_distances(held.images[:n].float() / 255,
                                                                                 train.images.float() / 255))
        held_features = self._held_out(ctx, "features", n, lambda: nearest_distances(
            real_outputs(ctx.dataset.name, "test", held, ctx.device, n, ctx.cache_dir)[0], self._train_features(ctx)))
        row = {**copying_columns(generated_pixels, held_pixels, "pixels"),
               **copying_columns(generated_features, held_features, "features")}
        row["copying_z"] = mann_whitney_z(generated_pixels, held_pixels)
        return row

    def _train_features(self, ctx: EvalContext) -> torch.Tensor:
        return real_outputs(ctx.dataset.name, "train", ctx.data["train"], ctx.device, cache_dir=ctx.cache_dir)[0]

    def _held_out(self, ctx: EvalContext, space: str, n: int, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        key = (ctx.dataset.name, space, n, content_key(ctx.data["test"].images[:n]), len(ctx.data["train"].images))
        return CACHE.get("memorization-held-out", key, compute)

    def protocol(self, ctx: EvalContext) -> dict[str, Any]:
        n = min(ctx.preset.eval_samples, len(ctx.data["test"].images))
        return {"summary": f"data-copying test after Meehan et al. 2020: nearest-training-image distances of "
                           f"{ctx.preset.eval_samples} samples against those of {n} held-out test images, in pixels "
                           f"and classifier features; flagged when more than {COPY_SHARE_FLAG:.0%} of samples are "
                           f"closer than the {HELD_OUT_QUANTILE:.0%} quantile of held-out distances",
                "held_out": n, "quantile": HELD_OUT_QUANTILE, "flag_share": COPY_SHARE_FLAG}

    def report_section(self, frame: pd.DataFrame) -> ReportSection | None:
        if "copy_share_pixels" not in frame:
            return None
        rows = frame.dropna(subset=["copy_share_pixels"])
        flagged = rows[(rows["copy_share_pixels"] > COPY_SHARE_FLAG) | (rows["copy_share_features"] > COPY_SHARE_FLAG)]
        notes = [f"⚠ {r.model}/{r.sampler} (seed {r.seed}): {r.copy_share_pixels:.0%} of its samples (pixels) and "
                 f"{r.copy_share_features:.0%} (features) are closer to a training image than 95% of held-out test "
                 f"images are: it copies its training set" for r in flagged.itertuples()]
        notes.append(f"A model that does not copy has about {HELD_OUT_QUANTILE:.0%} of its samples below the held-out "
                     f"{HELD_OUT_QUANTILE:.0%} quantile (fewer when its samples are blurry); flagged above "
                     f"{COPY_SHARE_FLAG:.0%}. {len(flagged)} of {len(rows)} rows flagged.")
        table = rows.groupby(["model", "sampler"], sort=False)[
            ["copy_share_pixels", "copy_share_features", "train_distance_ratio_pixels", "copying_z"]].mean()
        table = table.reset_index()
        for column in ("copy_share_pixels", "copy_share_features"):
            table[column] = [f"{v:.1%}" for v in table[column]]
        for column in ("train_distance_ratio_pixels", "copying_z"):
            table[column] = [f"{v:.3g}" for v in table[column]]
        return ReportSection("Memorization", table, notes)


@hookimpl
def register_metrics(register: Callable[..., None]) -> None:
    register(MemorizationMetric())
