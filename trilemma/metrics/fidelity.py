"""Sample quality through torch-fidelity: FID, IS, KID and precision/recall.

One ``calculate_metrics`` call per (samples, extractor) computes all four from shared features.
Input 1 is generated, input 2 is real (torch-fidelity's convention for precision/recall).
The default extractor is the pinned MNIST classifier (128-d penultimate features for
FID/KID/PRC, logits for IS); Inception-v3 is added when its weights are on disk.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trilemma.classifier import FEATURE_DIM, classifier_info, file_sha256
from trilemma.columns import Column
from trilemma.errors import TrilemmaError
from trilemma.hookspecs import hookimpl
from trilemma.metrics import EvalContext, Metric
from trilemma.settings import Setting, existing_file

MNIST_EXTRACTOR = "mnist-classifier"
INCEPTION_EXTRACTOR = "inception-v3-compat"
INCEPTION_FEATURE_DIM = 2048
# Where torch-fidelity's own download of the Inception weights would have put them.
INCEPTION_CACHE_FILE = "weights-inception-2015-12-05-6726825d.pth"
KID_SUBSET_SIZE = 1000


def register_extractor() -> None:
    """Register the classifier with torch-fidelity once, on first use (no import-time side effects)."""
    import torch_fidelity
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    from trilemma.metrics.fidelity_extractor import MnistClassifierExtractor

    if MNIST_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(MNIST_EXTRACTOR, MnistClassifierExtractor)


class ImageSet(torch.utils.data.Dataset):
    """uint8 images for torch-fidelity, optionally repeated to three channels (Inception)."""

    def __init__(self, images: torch.Tensor, rgb: bool = False) -> None:
        if images.is_floating_point():
            images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        self.images = images.cpu()
        self.rgb = rgb

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = self.images[i]
        return image.expand(3, -1, -1).contiguous() if self.rgb else image


def inception_weights(explicit: Path | None) -> Path | None:
    """``--inception-weights``, else torch-fidelity's cached download, else None."""
    if explicit is not None:
        return Path(explicit)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_CACHE_FILE
    return cached if cached.exists() else None


def compute_fidelity(generated: torch.Tensor, real: torch.Tensor, *, extractor: str = MNIST_EXTRACTOR,
                     reference_name: str | None = None, cache_dir: Path | None = None,
                     weights_path: Path | None = None, device: torch.device | str = "cpu",
                     batch_size: int = 500, seed: int = 0,
                     metrics: tuple[str, ...] = ("fid", "isc", "kid", "prc")) -> dict[str, float]:
    """FID, IS, KID and precision/recall of ``generated`` against ``real`` (N×1×28×28, uint8 or
    floats in [0, 1]). ``reference_name`` caches the real features under ``cache_dir``; it must
    identify the split, the extractor and its weights. ``metrics`` picks a subset; the columns of
    the others are NaN."""
    register_extractor()
    n_gen, n_real = len(generated), len(real)
    dim = INCEPTION_FEATURE_DIM if extractor == INCEPTION_EXTRACTOR else FEATURE_DIM
    if min(n_gen, n_real) < 2:
        raise TrilemmaError(f"fidelity metrics need at least 2 samples per input, got {n_gen} generated, {n_real} real")
    with_fid = min(n_gen, n_real) > dim and "fid" in metrics
    if "fid" in metrics and not with_fid and extractor == MNIST_EXTRACTOR:
        raise TrilemmaError(
            f"FID with {extractor} needs more samples than feature dimensions ({dim}); "
            f"got {n_gen} generated and {n_real} real: raise the preset's eval_samples"
        )
    rgb = extractor == INCEPTION_EXTRACTOR
    kwargs: dict[str, Any] = {
        "input1": ImageSet(generated, rgb), "input2": ImageSet(real, rgb),
        "cuda": torch.device(device).type == "cuda", "batch_size": batch_size,
        "feature_extractor": extractor, "isc": "isc" in metrics, "fid": with_fid, "kid": "kid" in metrics,
        "prc": "prc" in metrics,
        "kid_subset_size": min(KID_SUBSET_SIZE, n_gen, n_real), "verbose": False, "save_cpu_ram": True,
        "rng_seed": seed, "cache": reference_name is not None,
    }
    if reference_name is not None:
        kwargs.update(input2_cache_name=reference_name, cache_root=str(cache_dir) if cache_dir else None)
    if weights_path is not None:
        kwargs["feature_extractor_weights_path"] = str(weights_path)
    with contextlib.redirect_stdout(io.StringIO()):
        import torch_fidelity

        raw = torch_fidelity.calculate_metrics(**kwargs)
    names = {"fid": "frechet_inception_distance", "is_mean": "inception_score_mean", "is_std": "inception_score_std",
             "kid_mean": "kernel_inception_distance_mean", "kid_std": "kernel_inception_distance_std",
             "precision": "precision", "recall": "recall"}
    return {ours: raw.get(theirs, math.nan) for ours, theirs in names.items()}


def reference_cache_name(dataset: str, split: str, n: int, extractor: str, weights_sha256: str) -> str:
    return f"trilemma-{dataset}-{split}-{n}-{extractor}-{weights_sha256[:16]}"


class FidelityMetric(Metric):
    """FID/IS/KID/precision/recall with the MNIST classifier, plus Inception when available."""

    name = "fidelity"
    reference_split = "test"
    needs = ("samples", "real", "features")
    columns = (
        Column("fid", better="lower", headline=True, title="FID", fmt="{:.2f}", axis="quality",
               description="Fréchet distance of classifier features, generated vs real test split"),
        Column("is_mean", better="higher", headline=True, title="IS", fmt="{:.2f}",
               description="Inception Score on classifier logits"),
        Column("is_std"),
        Column("kid_mean", better="lower", headline=True, title="KID", fmt="{:.4f}"),
        Column("kid_std"),
        Column("precision", better="higher", headline=True, fmt="{:.3f}", description="improved precision (k=3)"),
        Column("recall", judged="coverage", better="higher", headline=True, fmt="{:.3f}", description="improved recall (k=3)"),
        Column("inception_fid", better="lower", optional=True,
               description="FID on Inception-v3 features (with --inception-weights)"),
        Column("inception_is_mean", better="higher", optional=True),
        Column("inception_is_std", optional=True),
        Column("inception_kid_mean", better="lower", optional=True),
        Column("inception_kid_std", optional=True),
    )
    protocol_keys = ("extractor", "extractor_sha256", "generated_samples", "real_samples", "input2")
    settings = (
        Setting("inception_weights", parse=Path, flag="--inception-weights", check=existing_file,
                help="Inception-v3 weights (torch-fidelity's format) for Inception FID/IS/KID; skipped when absent"),
    )

    def __init__(self) -> None:
        self._told_no_inception = False

    def applies_to(self, dataset) -> bool:
        return dataset.channels == 1

    def compute(self, ctx: EvalContext) -> dict[str, Any]:
        real = ctx.data[self.reference_split].images
        info = classifier_info()
        row = compute_fidelity(
            ctx.samples.images, real, extractor=MNIST_EXTRACTOR, device=ctx.device, seed=ctx.seed,
            reference_name=reference_cache_name(ctx.dataset.name, self.reference_split, len(real),
                                                MNIST_EXTRACTOR, info.sha256),
            cache_dir=ctx.cache_dir,
        )
        weights = inception_weights(ctx.settings.get("inception_weights"))
        if weights is None:
            if not self._told_no_inception:
                ctx.log("Inception-v3 weights not found (--inception-weights PATH): Inception FID/IS/KID skipped")
                self._told_no_inception = True
            return row
        # Inception-v3 runs at 299×299: as many real images as generated ones, not the whole split.
        real = real[: len(ctx.samples.images)]
        inception = compute_fidelity(
            ctx.samples.images, real, extractor=INCEPTION_EXTRACTOR, device=ctx.device, seed=ctx.seed,
            weights_path=weights, cache_dir=ctx.cache_dir,
            reference_name=reference_cache_name(ctx.dataset.name, self.reference_split, len(real),
                                                INCEPTION_EXTRACTOR, file_sha256(weights)),
        )
        row.update({f"inception_{key}": inception[key] for key in ("fid", "is_mean", "is_std", "kid_mean", "kid_std")})
        return row

    def protocol(self, ctx: EvalContext) -> dict[str, Any]:
        from importlib.metadata import version

        library = f"torch-fidelity {version('torch-fidelity')}"
        info = classifier_info()
        weights = inception_weights(ctx.settings.get("inception_weights"))
        inception = (f"{weights.name} (SHA-256 {file_sha256(weights)[:16]}…): first {ctx.preset.eval_samples} real "
                     "images of the split, 3 repeated channels" if weights else "skipped: no weights")
        real = len(ctx.data[self.reference_split].labels)
        return {
            "summary": f"{library}; input 1 = generated samples, input 2 = real "
                       f"{ctx.dataset.name} {self.reference_split} split ({real} images); {ctx.preset.eval_samples} "
                       f"generated samples per row; extractor {MNIST_EXTRACTOR} (SHA-256 {info.sha256[:16]}…, test "
                       f"accuracy {info.test_accuracy}); KID subset {min(KID_SUBSET_SIZE, ctx.preset.eval_samples)}; "
                       f"Inception: {inception}",
            "library": library,
            "input1": "generated samples", "input2": f"real {ctx.dataset.name} {self.reference_split} split",
            "extractor": MNIST_EXTRACTOR, "extractor_sha256": info.sha256,
            "extractor_test_accuracy": info.test_accuracy,
            "features": {"fid": "features (128-d)", "kid": "features", "prc": "features (k=3)", "isc": "logits"},
            "generated_samples": ctx.preset.eval_samples,
            "real_samples": real,
            "kid_subset_size": min(KID_SUBSET_SIZE, ctx.preset.eval_samples), "isc_splits": 10,
            "inception": inception,
        }


@hookimpl
def register_metrics(register: Callable[..., None]) -> None:
    register(FidelityMetric())
