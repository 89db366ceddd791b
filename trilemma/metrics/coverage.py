"""Mode coverage, judged by the pinned MNIST classifier.

MNIST: class histogram of the generated digits the classifier *recognises* (its top probability at
least what real test digits get: the threshold below which only ``RECOGNITION_MISS`` of the real
test digits fall, calibrated on the test split and recorded in the protocol), so that blobs and
noise the classifier's argmax would label anyway do not count as digits; modes covered (classes
holding at least a tenth of their fair share of *all* the samples), KL and total variation of the
recognised histogram to the real test-label distribution, KL to uniform, the recognised share, and
the share of low-confidence samples. Stacked-MNIST (PacGAN, Lin et al. 2018): each channel is
classified, mode = 100·d1 + 10·d2 + d3; modes covered out of 1000 and KL to uniform.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trilemma.columns import Column
from trilemma.data import TEST_LABEL_COUNTS
from trilemma.hookspecs import hookimpl
from trilemma.metrics import EvalContext, Metric, ReportSection
from trilemma.metrics.features import classifier_outputs, real_outputs, sample_outputs
from trilemma.sampling import draw
from trilemma.seeds import derived_seed

#: Classes of the pinned classifier: the digits.
NUM_CLASSES = 10
#: A sample whose largest softmax probability is below this counts as low-confidence.
LOW_CONFIDENCE_THRESHOLD = 0.9
#: An MNIST class is covered when it holds at least this fraction of its fair share (n / classes)
#: of the samples: 1% of them for ten classes. Stacked-MNIST keeps PacGAN's "at least one sample".
MODE_MIN_FAIR_SHARE = 0.1
#: The share of real test digits allowed below the recognition threshold (its calibration).
RECOGNITION_MISS = 0.05


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> float:
    """KL(p ‖ q) in nats for histograms (normalised here); bins where p is 0 contribute 0."""
    p = p.double() / p.sum()
    q = q.double() / q.sum()
    mask = p > 0
    if bool((q[mask] == 0).any()):
        return math.inf
    return float((p[mask] * (p[mask] / q[mask]).log()).sum())


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    return float(0.5 * (p.double() / p.sum() - q.double() / q.sum()).abs().sum())


def recognition_threshold(real_probabilities: torch.Tensor) -> float:
    """The top-probability threshold that all but ``RECOGNITION_MISS`` of real digits reach."""
    return float(real_probabilities.max(dim=-1).values.double().quantile(RECOGNITION_MISS))


def class_coverage(probabilities: torch.Tensor, reference_labels: torch.Tensor, num_classes: int = 10,
                   threshold: float = 0.0) -> dict[str, Any]:
    """Coverage columns from per-sample class probabilities (N×classes); a sample counts towards
    its class only when its top probability reaches ``threshold`` (0: every argmax counts)."""
    confidence, predicted = probabilities.max(dim=1)
    recognised = confidence >= threshold
    counts = torch.bincount(predicted[recognised].cpu(), minlength=num_classes).double()
    reference = torch.bincount(reference_labels.cpu(), minlength=num_classes).double()
    nothing = counts.sum() == 0
    row: dict[str, Any] = {
        "modes_covered": int((counts >= MODE_MIN_FAIR_SHARE * len(probabilities) / num_classes).sum()),
        "recognised_share": float(recognised.double().mean()),
        "modes_total": num_classes,
        "kl_to_test": math.inf if nothing else kl_divergence(counts, reference),
        "kl_to_uniform": math.inf if nothing else kl_divergence(counts, torch.ones(num_classes)),
        "tv_to_test": 1.0 if nothing else total_variation(counts, reference),
        "low_confidence_share": float((confidence < LOW_CONFIDENCE_THRESHOLD).double().mean()),
    }
    row.update({f"class_share_{k}": float(counts[k] / len(probabilities)) for k in range(num_classes)})
    return row


def stacked_coverage(digit_logits: torch.Tensor, threshold: float = 0.0) -> dict[str, Any]:
    """Stacked-MNIST coverage from logits of shape N×C×classes (one classification per channel):
    mode = the channels' digits read as a number (100·d1 + 10·d2 + d3 for three channels), counted
    only when every channel's digit is recognised (top probability ≥ ``threshold``)."""
    channels, classes = digit_logits.shape[1], digit_logits.shape[2]
    digits = digit_logits.argmax(dim=2).cpu()
    places = classes ** torch.arange(channels - 1, -1, -1)
    modes = (digits * places).sum(dim=1)
    num_modes = classes ** channels
    confidence = digit_logits.softmax(dim=2).max(dim=2).values.min(dim=1).values.cpu()
    recognised = confidence >= threshold
    counts = torch.bincount(modes[recognised], minlength=num_modes).double()
    return {
        "modes_covered": int((counts > 0).sum()),
        "modes_total": num_modes,
        "recognised_share": float(recognised.double().mean()),
        "kl_to_uniform": math.inf if counts.sum() == 0 else kl_divergence(counts, torch.ones(num_modes)),
        "low_confidence_share": float((confidence < LOW_CONFIDENCE_THRESHOLD).double().mean()),
    }


def classify_stacked(images: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits N×3×10: each channel of N×3×28×28 images classified on its own."""
    return classifier_outputs(images, device)[1]


class CoverageMetric(Metric):
    name = "coverage"
    needs = ("samples", "model", "real")
    in_curves = True
    columns = (
        Column("modes_covered", judged="coverage", better="higher", headline=True, title="modes", fmt="{:g}"),
        Column("modes_total"),
        Column("kl_to_test", judged="coverage", better="lower", headline=True, title="KL to real", fmt="{:.3f}",
               description="KL(generated class histogram ‖ real test labels), nats"),
        Column("kl_to_uniform", judged="coverage", better="lower", headline=True, title="KL to uniform", fmt="{:.3f}"),
        Column("tv_to_test", judged="coverage", better="lower", description="total variation to the real test labels"),
        Column("recognised_share", better="higher", headline=True, title="recognised", fmt="{:.0%}",
               description="share of samples the classifier recognises as a digit with the confidence real test "
                           "digits get (the threshold 95% of them reach); only these count towards modes and KL"),
        Column("low_confidence_share", better="lower", headline=True, title="low-conf.", fmt="{:.3f}",
               description="share of samples the classifier reads below 0.9 confidence"),
        Column("class_share_*", description="share of samples recognised as class *"),
        Column("coverage_score", judged="coverage", better="higher", axis="coverage",
               description="modes covered / modes total × exp(−KL to the real labels, or to uniform): 1 is perfect"),
    )
    protocol_keys = ("samples", "recognition")

    def threshold(self, ctx: EvalContext) -> float:
        """The recognition threshold, calibrated on the real test split's classifier outputs."""
        _, logits = real_outputs(ctx.dataset.name, "test", ctx.data["test"], ctx.device, cache_dir=ctx.cache_dir)
        return recognition_threshold(logits.softmax(dim=-1))

    def applies_to(self, dataset: Any) -> bool:
        """Digit datasets: one digit a channel, so the modes are the classes to the power of the channels."""
        return dataset.num_modes == NUM_CLASSES ** dataset.channels

    def compute(self, ctx: EvalContext) -> dict[str, Any]:
        if ctx.dataset.channels > 1:
            row = self._stacked(ctx)
        else:
            _, logits = sample_outputs(ctx)
            row = class_coverage(logits[:, 0].softmax(dim=1), ctx.data["test"].labels, NUM_CLASSES, self.threshold(ctx))
        if row["modes_total"] != ctx.dataset.num_modes:
            raise ValueError(f"counted {row['modes_total']} modes where {ctx.dataset.name} has {ctx.dataset.num_modes}")
        kl = row.get("kl_to_test", row["kl_to_uniform"])
        row["coverage_score"] = row["modes_covered"] / row["modes_total"] * math.exp(-kl)
        return row

    def _stacked(self, ctx: EvalContext) -> dict[str, Any]:
        images = ctx.samples.images
        needed = ctx.preset.stacked_samples
        _, logits = sample_outputs(ctx)
        if len(images) < needed:
            extra = draw(ctx.model, ctx.sampler, needed - len(images), batch_size=ctx.preset.sample_batch_size,
                         seed=derived_seed(ctx.seed, "stacked_extra_samples"),
                         where=f"{ctx.model_name}/{ctx.sampler_name} (stacked coverage)")
            logits = torch.cat([logits, classifier_outputs(extra.images, ctx.device)[1]])
        return stacked_coverage(logits, self.threshold(ctx))

    def protocol(self, ctx: EvalContext) -> dict[str, Any]:
        modes = ctx.dataset.num_modes
        threshold = self.threshold(ctx)
        recognition = (f"a sample counts only when the classifier recognises it: top probability ≥ {threshold:.4f}, "
                       f"the level all but {RECOGNITION_MISS:.0%} of the real test digits reach")
        if ctx.dataset.channels > 1:
            samples = max(ctx.preset.stacked_samples, ctx.preset.eval_samples)
            return {"summary": f"Stacked-MNIST (PacGAN): each channel classified by the pinned classifier; a mode is "
                               f"covered by at least one of {samples} samples; KL(generated ‖ uniform over {modes}); "
                               + recognition + " in every channel",
                    "protocol": "Stacked-MNIST (PacGAN): each channel classified by the pinned classifier; "
                                f"a mode is covered by at least one sample; KL(generated ‖ uniform over {modes})",
                    "recognition": f"top probability ≥ the {RECOGNITION_MISS:g} quantile of real test digits' "
                                   "(pinned classifier), every channel",
                    "recognition_threshold": threshold, "samples": samples}
        return {"summary": f"classes of the pinned classifier on {ctx.preset.eval_samples} samples; {recognition}; a "
                           f"class is covered when it holds at least {MODE_MIN_FAIR_SHARE:g} of its fair share (n/10); "
                           f"KL to the real test labels and to uniform, in nats; low confidence = max softmax below "
                           f"{LOW_CONFIDENCE_THRESHOLD}",
                "protocol": f"classes of the pinned classifier; a class is covered when it holds at least "
                            f"{MODE_MIN_FAIR_SHARE:g} of its fair share (n/10) of the samples; "
                            "KL(generated ‖ real test labels) and KL(generated ‖ uniform), in nats",
                "recognition": f"top probability ≥ the {RECOGNITION_MISS:g} quantile of real test digits' (pinned "
                               "classifier)",
                "recognition_threshold": threshold,
                "low_confidence_threshold": LOW_CONFIDENCE_THRESHOLD, "mode_min_fair_share": MODE_MIN_FAIR_SHARE,
                "samples": ctx.preset.eval_samples}

    def report_section(self, frame: Any) -> ReportSection | None:
        """Class histograms of the single-channel rows (mean over seeds) against the real test labels."""
        shares = sorted((c for c in frame.columns if c.startswith("class_share_")), key=lambda c: int(c.rsplit("_", 1)[1]))
        if not shares:
            return None
        rows = frame[frame["status"] == "ok"].dropna(subset=shares)
        if rows.empty:
            return None
        means = rows.groupby(["model", "sampler"], sort=False)[[*shares, "modes_covered", "modes_total", "kl_to_test"]]
        means = means.mean().reset_index()
        real = [count / sum(TEST_LABEL_COUNTS) for count in TEST_LABEL_COUNTS]

        def draw_histograms(path: Path) -> Path | None:
            from trilemma.plots import class_histograms

            titles = [f"{r.model}/{r.sampler}: {r.modes_covered:g}/{r.modes_total:g} modes, KL {r.kl_to_test:.3f}"
                      for r in means.itertuples()]
            return class_histograms(means, shares, real, path, titles)

        return ReportSection("Class histograms", means.iloc[0:0], [
            f"The classes the pinned classifier recognises in each row's samples (mean over seeds; runs before "
            f"recognition counted every argmax), against the real test labels; a class is covered when it holds at "
            f"least {MODE_MIN_FAIR_SHARE:g} of its fair share of all samples."],
            {"class histograms": draw_histograms})


@hookimpl
def register_metrics(register: Callable[..., None]) -> None:
    register(CoverageMetric())
