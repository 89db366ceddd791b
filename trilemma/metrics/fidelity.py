"""Sample quality through torch-fidelity: FID, IS, KID and precision/recall.

Per (samples, extractor), torch-fidelity's own functions compute all four from features extracted
once (``_calculate``: its ``calculate_metrics`` step by step, with precision/recall's real radii kept).
Input 1 is generated, input 2 is real (torch-fidelity's convention for precision/recall).
Two instances measure in two pinned feature spaces: the MNIST classifier (128-d penultimate
features for FID/KID/PRC, logits for IS; Inception-v3 added when its weights are on disk) and the
MNIST autoencoder (its 64-d code: FID/KID/PRC, columns prefixed ``ae_``).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from trilemma.classifier import FEATURE_DIM, classifier_info
from trilemma.columns import Column
from trilemma.errors import TrilemmaError
from trilemma.hookspecs import hookimpl
from trilemma.metrics import EvalContext, Metric, ReportSection
from trilemma.metrics.features import AUTOENCODER, CLASSIFIER, FeatureSpace, content_key
from trilemma.pinned import file_sha256
from trilemma.settings import Setting, existing_file

MNIST_EXTRACTOR = CLASSIFIER.extractor
INCEPTION_EXTRACTOR = "inception-v3-compat"
INCEPTION_FEATURE_DIM = 2048
# Where torch-fidelity's own download of the Inception weights would have put them.
INCEPTION_CACHE_FILE = "weights-inception-2015-12-05-6726825d.pth"
KID_SUBSET_SIZE = 1000
#: Rows whose rank differs by at least this many places between the two spaces are named.
RANK_GAP = 3


def register_extractors() -> None:
    """Register the pinned networks with torch-fidelity once, on first use (no import-time side effects)."""
    import torch_fidelity
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    from trilemma.metrics.fidelity_extractor import EXTRACTORS

    for name, extractor in EXTRACTORS.items():
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            torch_fidelity.register_feature_extractor(name, extractor)


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
                     dim: int = FEATURE_DIM, reference_name: str | None = None, cache_dir: Path | None = None,
                     weights_path: Path | None = None, device: torch.device | str = "cpu",
                     batch_size: int = 500, seed: int = 0,
                     metrics: tuple[str, ...] = ("fid", "isc", "kid", "prc")) -> dict[str, float]:
    """FID, IS, KID and precision/recall of ``generated`` against ``real`` (N×1×28×28, uint8 or
    floats in [0, 1]), in ``extractor``'s ``dim`` features. ``reference_name`` caches the real
    features under ``cache_dir``; it must identify the split, the extractor and its weights.
    ``metrics`` picks a subset; the columns of the others are NaN."""
    register_extractors()
    n_gen, n_real = len(generated), len(real)
    dim = INCEPTION_FEATURE_DIM if extractor == INCEPTION_EXTRACTOR else dim
    if min(n_gen, n_real) < 2:
        raise TrilemmaError(f"fidelity metrics need at least 2 samples per input, got {n_gen} generated, {n_real} real")
    with_fid = min(n_gen, n_real) > dim and "fid" in metrics
    if "fid" in metrics and not with_fid and extractor != INCEPTION_EXTRACTOR:
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
        raw = _calculate(kwargs, reference_name)
    names = {"fid": "frechet_inception_distance", "fid_sd": FID_SD_KEY,
             "is_mean": "inception_score_mean", "is_std": "inception_score_std",
             "kid_mean": "kernel_inception_distance_mean", "kid_std": "kernel_inception_distance_std",
             "precision": "precision", "recall": "recall"}
    return {ours: raw.get(theirs, math.nan) for ours, theirs in names.items()}


def _calculate(kwargs: dict[str, Any], reference_name: str | None) -> dict[str, float]:
    """torch-fidelity's ``calculate_metrics`` for one feature extractor, step by step with its own
    functions (the same numbers), except that precision/recall's real k-NN radii, a 10,000 × 10,000
    distance matrix, are computed once per reference and process instead of once per row."""
    from torch_fidelity.metric_fid import fid_featuresdict_to_statistics_cached, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_featuresdict_to_metric
    from torch_fidelity.metric_kid import kid_featuresdict_to_metric
    from torch_fidelity.utils import (
        create_feature_extractor,
        extract_featuresdict_from_input_id_cached,
        get_cacheable_input_name,
        resolve_feature_extractor,
        resolve_feature_layer_for_metric,
    )

    wanted = [m for m in ("isc", "fid", "kid", "prc") if kwargs.get(m)]
    layers = {m: resolve_feature_layer_for_metric(m, **kwargs) for m in wanted}
    extractor = create_feature_extractor(resolve_feature_extractor(**kwargs), sorted(set(layers.values())), **kwargs)
    generated = extract_featuresdict_from_input_id_cached(1, extractor, **kwargs)
    real = extract_featuresdict_from_input_id_cached(2, extractor, **kwargs)
    out: dict[str, float] = {}
    if "isc" in layers:
        out.update(isc_featuresdict_to_metric(generated, layers["isc"], **kwargs))
    if "fid" in layers:
        stats = [fid_featuresdict_to_statistics_cached(features, get_cacheable_input_name(i, **kwargs), extractor,
                                                       layers["fid"], **kwargs)
                 for i, features in ((1, generated), (2, real))]
        out.update(fid_statistics_to_metric(*stats, False))
        out[FID_SD_KEY] = fid_sampling_sd(generated[layers["fid"]], stats[1], seed=int(kwargs.get("rng_seed", 0)))
    if "kid" in layers:
        out.update(kid_featuresdict_to_metric(generated, real, layers["kid"], **kwargs))
    if "prc" in layers:
        layer = layers["prc"]
        key = (reference_name, str(kwargs["feature_extractor"]), layer) if reference_name is not None else None
        out.update(precision_recall(generated[layer], real[layer], reference_key=key))
    return out


def knn_radii(features: torch.Tensor, neighbourhood: int, batch_size: int = 10_000) -> torch.Tensor:
    """Each row's distance to its ``neighbourhood``-th nearest other row (itself excluded), as
    torch-fidelity's precision/recall computes it."""
    from torch_fidelity.metric_prc import calc_cdist_part

    return torch.cat([calc_cdist_part(part, features, batch_size).kthvalue(neighbourhood + 1).values
                      for part in features.split(batch_size)])


def _inside_any(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, batch_size: int = 10_000) -> float:
    """The share of queries within some centre's radius (boundary included)."""
    from torch_fidelity.metric_prc import calc_cdist_part

    return torch.cat([(calc_cdist_part(part, centres, batch_size) <= radii).any(dim=1).float()
                      for part in queries.split(batch_size)]).mean().item()


def precision_recall(generated: torch.Tensor, real: torch.Tensor, neighbourhood: int = 3,
                     reference_key: tuple[str, ...] | None = None) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, eqs. 1–3, k = 3) exactly as
    torch-fidelity's ``calculate_precision_recall_part``: precision, the share of generated samples
    inside some real sample's k-NN ball; recall, the share of real samples inside some generated
    sample's. The real radii are kept per ``reference_key`` (the real set's cache name, the extractor and
    its layer)."""
    from trilemma.cache import CACHE

    real_radii = (CACHE.get("prc-real-radii", (*reference_key, neighbourhood), lambda: knn_radii(real, neighbourhood))
                  if reference_key is not None else knn_radii(real, neighbourhood))
    return {"recall": _inside_any(real, generated, knn_radii(generated, neighbourhood)),
            "precision": _inside_any(generated, real, real_radii)}


def reference_cache_name(dataset: str, split: str, images: torch.Tensor, extractor: str, weights_sha256: str) -> str:
    """torch-fidelity's cache name for the features of the real ``images``: their content, the extractor and its weights."""
    return f"trilemma-{dataset}-{split}-{len(images)}-{content_key(images)}-{extractor}-{weights_sha256[:16]}"


FID_SD_KEY = "fid_sampling_sd"
#: Bootstrap resamples of the generated features behind a row's FID sampling spread.
FID_RESAMPLES = 100


def fid_sampling_sd(features: torch.Tensor, real: dict[str, Any], *, resamples: int = FID_RESAMPLES,
                    seed: int = 0) -> float:
    """The standard deviation of FID over bootstrap resamples of the generated ``features`` (N×d,
    drawn with replacement, N each), against the real statistics ``real`` (torch-fidelity's ``mu``
    and ``sigma``): how much the row's FID moves with the draw alone, the same trained model and no
    retraining (Efron & Tibshirani 1993, the bootstrap estimate of a statistic's standard error).
    Two rows whose FIDs differ by less than about twice it cannot be told apart by their samples.

    Each resample's FID is Heusel et al.'s, with tr √(Σ₁Σ₂) computed as Σ √λ of the symmetric
    √Σ₂ Σ₁ √Σ₂ (the same eigenvalues as Σ₁Σ₂), √Σ₂ taken once: a symmetric eigensolver per resample
    instead of a general one."""
    mu_real = torch.as_tensor(real["mu"], dtype=torch.float64)
    sigma_real = torch.as_tensor(real["sigma"], dtype=torch.float64)
    values, vectors = torch.linalg.eigh(sigma_real)
    root_real = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    x = features.to(torch.float64)
    generator = torch.Generator().manual_seed(seed)
    fids = []
    for _ in range(resamples):
        sample = x[torch.randint(len(x), (len(x),), generator=generator)]
        mu = sample.mean(0)
        centred = sample - mu
        sigma = centred.T @ centred / (len(sample) - 1)
        covmean_trace = torch.linalg.eigvalsh(root_real @ sigma @ root_real).clamp(min=0).sqrt().sum()
        fids.append(float((mu - mu_real).square().sum() + sigma.trace() + sigma_real.trace() - 2 * covmean_trace))
    return float(torch.tensor(fids, dtype=torch.float64).std())


def _fidelity_columns(space: FeatureSpace) -> tuple[Column, ...]:
    """FID, KID and precision/recall in ``space``; IS and Inception's columns with the classifier."""
    p, label = space.prefix, f" ({space.label})" if space.label else ""
    where = f"{space.name} features"
    main = space is CLASSIFIER
    columns = [
        # The learning curves follow the autoencoder's FID where it was measured: it ranks samples
        # as a person would where the classifier's does not (``reports/metric-sanity``).
        Column(f"{p}fid", better="lower", headline=True, title=f"FID{label}", fmt="{:.2f}",
               axis="quality" if main else None, description=f"Fréchet distance of {where}, generated vs real test split",
               spread=f"{p}fid_sd", curve_rank=1 if main else 2),
        Column(f"{p}fid_sd", headline=main, title=f"FID sd{label}", fmt="{:.2f}",
               description=f"sampling spread of {p}fid: its standard deviation over {FID_RESAMPLES} bootstrap resamples "
                           "of the row's generated samples (same model, no retraining); a smaller FID gap than about "
                           "twice it is within the noise of the draw"),
        *([Column("is_mean", better="higher", headline=True, title="IS", fmt="{:.2f}",
                  description="Inception Score on classifier logits"), Column("is_std")] if main else []),
        Column(f"{p}kid_mean", better="lower", headline=main, title=f"KID{label}", fmt="{:.4f}",
               description=f"kernel inception distance of {where}"),
        Column(f"{p}kid_std"),
        Column(f"{p}precision", better="higher", headline=main, title=f"precision{label}", fmt="{:.3f}",
               description=f"improved precision (k=3) in {where}: share of samples inside a real sample's k-NN ball"),
        Column(f"{p}recall", judged="coverage", better="higher", headline=main, title=f"recall{label}", fmt="{:.3f}",
               description=f"improved recall (k=3) in {where}"),
    ]
    if main:
        columns += [
            Column("inception_fid", better="lower", optional=True,
                   description="FID on Inception-v3 features (with --inception-weights)"),
            Column("inception_is_mean", better="higher", optional=True),
            Column("inception_is_std", optional=True),
            Column("inception_kid_mean", better="lower", optional=True),
            Column("inception_kid_std", optional=True),
        ]
    return tuple(columns)


class FidelityMetric(Metric):
    """FID/KID/precision/recall in one feature space (``fidelity``: the classifier's, with IS and,
    when its weights are there, Inception's; ``fidelity-autoencoder``: the autoencoder's)."""

    reference_split = "test"
    needs = ("samples", "real", "features")
    in_curves = True
    protocol_keys = ("extractor", "extractor_sha256", "generated_samples", "real_samples", "input2")

    def __init__(self, space: FeatureSpace = CLASSIFIER) -> None:
        self.space = space
        self.name = "fidelity" if space is CLASSIFIER else f"fidelity-{space.name}"
        self.columns = _fidelity_columns(space)
        self.settings = (
            Setting("inception_weights", parse=Path, flag="--inception-weights", check=existing_file,
                    help="Inception-v3 weights (torch-fidelity's format) for Inception FID/IS/KID; skipped when absent"),
        ) if space is CLASSIFIER else ()
        self._told_no_inception = False

    def applies_to(self, dataset) -> bool:
        return dataset.channels == 1

    def compute(self, ctx: EvalContext) -> dict[str, Any]:
        real = ctx.data[self.reference_split].images
        space = self.space
        raw = compute_fidelity(
            ctx.samples.images, real, extractor=space.extractor, dim=space.dim, device=ctx.device, seed=ctx.seed,
            reference_name=reference_cache_name(ctx.dataset.name, self.reference_split, real, space.extractor,
                                                space.sha256()),
            cache_dir=ctx.cache_dir,
            metrics=("fid", "isc", "kid", "prc") if space is CLASSIFIER else ("fid", "kid", "prc"),
        )
        row = {f"{space.prefix}{key}": value for key, value in raw.items()
               if space is CLASSIFIER or not key.startswith("is_")}
        if space is not CLASSIFIER:
            return row
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
            reference_name=reference_cache_name(ctx.dataset.name, self.reference_split, real, INCEPTION_EXTRACTOR,
                                                file_sha256(weights)),
        )
        row.update({f"inception_{key}": inception[key] for key in ("fid", "is_mean", "is_std", "kid_mean", "kid_std")})
        return row

    def report_section(self, frame: pd.DataFrame) -> ReportSection | None:
        """Where this space and the classifier's order the rows differently."""
        p = self.space.prefix
        if self.space is CLASSIFIER or f"{p}fid" not in frame or not frame[f"{p}fid"].notna().any():
            return None
        ok = frame[frame["status"] == "ok"]
        pairs = [(name, f"{p}{name}") for name in ("fid", "precision", "recall", "density", "knn_coverage")
                 if name in ok and f"{p}{name}" in ok]
        means = ok.groupby(["model", "sampler"], sort=False)[[c for pair in pairs for c in pair]].mean().reset_index()
        label = self.space.label
        table = pd.DataFrame({"model": means["model"], "sampler": means["sampler"]})
        notes = []
        for name, other in pairs:
            table[name] = means[name].map("{:.3g}".format)
            table[f"{name} ({label})"] = means[other].map("{:.3g}".format)
            both = means[[name, other]].dropna()
            if len(both) >= 3:
                tau = both[name].corr(both[other], method="kendall")
                notes.append(f"{name}: Kendall τ between the spaces' orders of the rows = {tau:.2f}.")
        if "fid" in means and len(means) >= 3:
            rank, other_rank = means["fid"].rank(), means[f"{p}fid"].rank()
            table["FID rank"] = [f"{a:g} → {b:g}" for a, b in zip(rank, other_rank, strict=True)]
            moved = [f"{r.model}/{r.sampler} ({a:g} → {b:g})" for r, a, b
                     in zip(means.itertuples(), rank, other_rank, strict=True) if abs(a - b) >= RANK_GAP]
            notes.insert(0, f"FID ranks (1 = best) in the classifier's space → the {self.space.name}'s: "
                            + (f"rows {RANK_GAP}+ places apart: " + "; ".join(moved) + "." if moved
                               else f"no row moves {RANK_GAP} or more places."))
        return ReportSection(f"Two feature spaces: classifier and {self.space.name}", table, notes)

    def protocol(self, ctx: EvalContext) -> dict[str, Any]:
        from importlib.metadata import version

        library = f"torch-fidelity {version('torch-fidelity')}"
        space, sha256 = self.space, self.space.sha256()
        real = len(ctx.data[self.reference_split].labels)
        kid_subset = min(KID_SUBSET_SIZE, ctx.preset.eval_samples)
        described = {"library": library, "input1": "generated samples",
                     "input2": f"real {ctx.dataset.name} {self.reference_split} split",
                     "extractor": space.extractor, "extractor_sha256": sha256, "generated_samples": ctx.preset.eval_samples,
                     "real_samples": real, "kid_subset_size": kid_subset}
        summary = (f"{library}; input 1 = generated samples, input 2 = real {ctx.dataset.name} {self.reference_split} "
                   f"split ({real} images); {ctx.preset.eval_samples} generated samples per row; extractor "
                   f"{space.extractor} (SHA-256 {sha256[:16]}…")
        if space is not CLASSIFIER:
            from trilemma.autoencoder import autoencoder_info

            return {**described, "summary": f"{summary}, {space.description}, test reconstruction BCE "
                                            f"{autoencoder_info().test_bce} nats/pixel); KID subset {kid_subset}",
                    "features": {"fid": space.description, "kid": "features", "prc": "features (k=3)"}}
        info = classifier_info()
        weights = inception_weights(ctx.settings.get("inception_weights"))
        inception = (f"{weights.name} (SHA-256 {file_sha256(weights)[:16]}…): first {ctx.preset.eval_samples} real "
                     "images of the split, 3 repeated channels" if weights else "skipped: no weights")
        return {**described,
                "summary": f"{summary}, test accuracy {info.test_accuracy}); KID subset {kid_subset}; Inception: {inception}",
                "extractor_test_accuracy": info.test_accuracy,
                "features": {"fid": "features (128-d)", "kid": "features", "prc": "features (k=3)", "isc": "logits"},
                "isc_splits": 10, "inception": inception}


@hookimpl
def register_metrics(register: Callable[..., None]) -> None:
    register(FidelityMetric(CLASSIFIER))
    register(FidelityMetric(AUTOENCODER))
