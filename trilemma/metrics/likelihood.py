"""Bits per dimension on the test split, for models that have a likelihood.

A model that implements ``GenerativeModel.log_likelihood`` returns log P(x) of each 8-bit test
image in nats, or a lower bound with its kind: ``exact`` (a discrete model), ``dequantized`` (a
flow's uniform-dequantization bound), ``elbo`` (VAEs), ``vlb`` (a diffusion model's variational
bound). Bits per dimension = −nats / (pixels · ln 2), the
mean over the first ``likelihood_images`` test images. Numbers of different kinds are not the
same quantity (a bound is only an upper bound on the bits); the report says which is which, and a
model with no likelihood gets no number at all.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch

from trilemma.columns import Column
from trilemma.hookspecs import hookimpl
from trilemma.metrics import EvalContext, Metric, ReportSection
from trilemma.model import LIKELIHOOD_KINDS, LogLikelihood
from trilemma.seeds import derived_seed
from trilemma.settings import Setting

BATCH = 250


class LikelihoodMetric(Metric):
    name = "likelihood"
    needs = ("model", "real")
    columns = (
        Column("bpd", better="lower", headline=True, title="bits/dim", fmt="{:.3f}",
               description="−log2 P(x) per pixel on the test split (an upper bound unless the kind is exact)"),
        Column("bpd_kind", description=", ".join(LIKELIHOOD_KINDS) + ": which quantity bpd is", text=True),
    )
    protocol_keys = ("images",)
    settings = (Setting("likelihood_images", parse=int, default=None,
                        help="test images the bits per dimension are averaged over (default: a fifth of the "
                             "preset's evaluation samples, at least 100)"),)

    def __init__(self) -> None:
        self._done: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # one evaluation per trained model

    def applies_to(self, dataset: Any) -> bool:
        return True

    @staticmethod
    def images(ctx: EvalContext) -> int:
        given = ctx.settings.get("likelihood_images")
        n = int(given) if given is not None else max(100, ctx.preset.eval_samples // 5)
        return max(1, min(n, len(ctx.data["test"].images)))

    def compute(self, ctx: EvalContext) -> dict[str, Any]:
        if not type(ctx.model).has_likelihood():
            return {}
        if ctx.model not in self._done:
            self._done[ctx.model] = self._bits_per_dim(ctx)
        return dict(self._done[ctx.model])

    def _bits_per_dim(self, ctx: EvalContext) -> dict[str, Any]:
        n = self.images(ctx)
        images = ctx.data["test"].images[:n]
        generator = torch.Generator(device=ctx.device).manual_seed(derived_seed(ctx.seed, "likelihood"))
        nats, kinds = [], set()
        ctx.model.eval()
        with torch.no_grad():
            for start in range(0, len(images), BATCH):
                result = ctx.model.log_likelihood(images[start:start + BATCH].to(ctx.device), generator)
                if not isinstance(result, LogLikelihood) or result.kind not in LIKELIHOOD_KINDS:
                    raise TypeError("log_likelihood must return a trilemma.model.LogLikelihood with kind "
                                    + ", ".join(LIKELIHOOD_KINDS))
                values = result.nats.detach().double().cpu().reshape(-1)
                if len(values) != min(BATCH, len(images) - start) or not torch.isfinite(values).all():
                    raise ValueError("log_likelihood returned a wrong number of values, or non-finite ones")
                nats.append(values)
                kinds.add(result.kind)
        if len(kinds) != 1:
            raise ValueError(f"log_likelihood changed its kind between batches: {sorted(kinds)}")
        pixels = images[0].numel()
        return {"bpd": float(-torch.cat(nats).mean() / (pixels * math.log(2))), "bpd_kind": kinds.pop()}

    def report_section(self, frame: pd.DataFrame) -> ReportSection | None:
        """Each model's bits/dim with its kind, and what each kind shown is."""
        if "bpd_kind" not in frame or not frame["bpd_kind"].notna().any():
            return None
        rows = frame[frame["bpd_kind"].notna()]
        table = (rows.groupby(["model", "bpd_kind"], sort=False)["bpd"].agg(["mean", "count"]).reset_index()
                 .rename(columns={"bpd_kind": "kind", "mean": "bits/dim", "count": "rows"}))
        table["bits/dim"] = table["bits/dim"].map("{:.3f}".format)
        notes = [f"{kind}: {LIKELIHOOD_KINDS.get(kind, 'a kind this version of trilemma does not know')}."
                 for kind in dict.fromkeys(table["kind"])]
        notes.append("Numbers of different kinds are different quantities; every kind but exact is an upper bound on "
                     "the bits of the 8-bit image. Runs before the dequantized kind existed called a flow's bound exact.")
        return ReportSection("Bits per dimension, by kind", table, notes)

    def protocol(self, ctx: EvalContext) -> dict[str, Any]:
        n = self.images(ctx)
        return {"summary": f"bits per dimension = −log2 p(x) / pixels of the first {n} test images (8-bit, 256 levels), "
                           "for models with a likelihood; kinds: " + "; ".join(f"{k}: {v}" for k, v in LIKELIHOOD_KINDS.items())
                           + " (every kind but exact is an upper bound on the bits)",
                "images": n}


@hookimpl
def register_metrics(register: Callable[..., None]) -> None:
    register(LikelihoodMetric())
