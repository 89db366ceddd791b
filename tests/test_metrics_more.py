"""Density/coverage, memorization and likelihood: against independent computations and planted
cases; and a stranger's metric as a first-class column (headline, comparison, protocol check)."""

import json
import math
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import FAKES_SOURCE, cli_env, trilemma_cli, write_installed_plugin

from trilemma.metrics.density import density_coverage
from trilemma.metrics.features import classifier_outputs
from trilemma.metrics.knn import nearest_distances
from trilemma.metrics.memorization import mann_whitney_z

FAKES = FAKES_SOURCE


def numpy_density_coverage(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Naeem et al. 2020, written out with brute-force distances."""
    real_real = np.sqrt(((real[:, None, :] - real[None, :, :]) ** 2).sum(-1))
    radii = np.sort(real_real, axis=1)[:, k]  # column 0 is the point itself
    fake_real = np.sqrt(((fake[:, None, :] - real[None, :, :]) ** 2).sum(-1))
    inside = fake_real < radii[None, :]
    return inside.sum() / (k * len(fake)), inside.any(axis=0).mean()


def test_density_and_coverage_match_an_independent_numpy_computation():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 16)).astype(np.float32)
    fake = (rng.normal(size=(250, 16)) * 1.3 + 0.4).astype(np.float32)
    ours = density_coverage(torch.from_numpy(real), torch.from_numpy(fake), k=5)
    density, coverage = numpy_density_coverage(real, fake, 5)
    assert ours["density"] == pytest.approx(density, rel=1e-6)
    assert ours["knn_coverage"] == pytest.approx(coverage, rel=1e-6)


def test_density_and_coverage_planted_cases(mnist):
    features, _ = classifier_outputs(mnist["test"].images[:2000])
    labels = mnist["test"].labels[:2000]
    itself = density_coverage(features, features, k=5)
    # Each real point lies in its own ball and in those of which it is one of the k − 1 nearer neighbours.
    assert itself["knn_coverage"] == 1.0 and itself["density"] == pytest.approx(1.0, abs=0.01)
    low = features[labels < 5]
    half = density_coverage(features, low, k=5)
    share_low = float((labels < 5).double().mean())
    assert abs(half["knn_coverage"] - share_low) < 0.08  # the balls of the other five digits stay empty


def test_nearest_distances_match_cdist():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(70, 30, generator=g), torch.rand(2100, 30, generator=g)
    expected = torch.cdist(a.double(), b.double()).min(1).values.float()
    assert torch.allclose(nearest_distances(a, b), expected, atol=1e-4)
    third = torch.cdist(b[:50].double(), b.double()).sort(1).values[:, 3].float()  # k=3, self excluded
    assert torch.allclose(nearest_distances(b[:50], b, k=3, exclude_self=True), third, atol=1e-4)


def test_mann_whitney_z_matches_scipy():
    from scipy.stats import mannwhitneyu

    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(200, generator=g), torch.rand(300, generator=g) + 0.1
    z = mann_whitney_z(a, b)
    p = mannwhitneyu(a.numpy(), b.numpy(), method="asymptotic", use_continuity=False).pvalue
    assert z < 0 and 2 * (1 - 0.5 * (1 + math.erf(abs(z) / math.sqrt(2)))) == pytest.approx(p, rel=1e-6)


# A stranger's package: a model that returns training images, one with an exact likelihood, a
# metric with a headline column and a protocol setting.
STRANGER = textwrap.dedent('''
    import math
    from dataclasses import dataclass
    import torch
    import trilemma
    from trilemma import Column, Setting
    from trilemma.data import load_mnist
    from trilemma_fakes import Tiny


    class Copier(Tiny):
        """Trains like Tiny, samples by returning training images."""
        name = "copier"

        def sample(self, n, generator=None):
            train = load_mnist(log=None)["train"].images
            index = torch.randint(0, len(train), (n,), generator=generator, device=generator.device).cpu()
            self.net(torch.zeros(n, 4, device=self.device))  # one network call, so NFE is counted
            return (train[index].float() / 255).to(self.device)


    class Uniform(Tiny):
        """Every 8-bit image equally likely: exactly 8 bits per pixel."""
        name = "uniform"

        def log_likelihood(self, images, generator=None):
            return trilemma.LogLikelihood(torch.full((len(images),), -images[0].numel() * math.log(256)), "exact")


    class Sharpness(trilemma.Metric):
        name = "sharpness"
        columns = (Column("sharpness", better="higher", headline=True, title="sharp"),)
        protocol_keys = ("threshold",)
        settings = (Setting("threshold", parse=float, default=0.5, help="what counts as ink"),)

        def compute(self, ctx):
            ink = ctx.samples.images > ctx.settings["threshold"]
            return {"sharpness": float(ink.double().mean())}

        def protocol(self, ctx):
            return {"threshold": ctx.settings["threshold"]}


    @trilemma.hookimpl
    def register_models(register):
        register(Copier)
        register(Uniform)


    @trilemma.hookimpl
    def register_metrics(register):
        register(Sharpness())
''')


@pytest.fixture(scope="module")
def stranger(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stranger")
    site = tmp / "site"
    write_installed_plugin(site, "trilemma-fakes", "fakes", "trilemma_fakes", FAKES)
    write_installed_plugin(site, "trilemma-stranger", "stranger", "trilemma_stranger", STRANGER)
    env = cli_env(site, allow="fakes,stranger")
    runs = {}
    for name, extra in (("a", ()), ("b", ("--sharpness-threshold", "0.25"))):
        ran = trilemma_cli("run", "copier", "uniform", "tiny", "--preset", "smoke", "--out", str(tmp / name),
                           "--no-progress", "--jobs", "1", *extra, env=env)
        assert ran.returncode == 0, ran.stderr + ran.stdout
        runs[name] = pd.read_csv(tmp / name / "results.csv").set_index("model")
    return tmp, env, runs


def test_a_model_that_returns_training_images_is_flagged_and_others_are_not(stranger):
    tmp, _, runs = stranger
    rows = runs["a"]
    assert rows.loc["copier", "copy_share_pixels"] > 0.95 and rows.loc["copier", "copy_share_features"] > 0.95
    assert rows.loc["copier", "copying_z"] < -10
    assert rows.loc["tiny", "copy_share_pixels"] < 0.05
    report = (tmp / "a" / "report.md").read_text()
    assert "⚠ copier/default" in report and "⚠ tiny/default" not in report


def test_exact_likelihood_is_reported_in_bits_per_dimension_with_its_kind(stranger):
    _, _, runs = stranger
    rows = runs["a"]
    assert rows.loc["uniform", "bpd"] == pytest.approx(8.0) and rows.loc["uniform", "bpd_kind"] == "exact"
    assert pd.isna(rows.loc["tiny", "bpd"])  # no likelihood, no number
    # By default the bound is averaged over a fifth of the evaluation samples, never fewer than 100 images.
    manifest = json.loads((stranger[0] / "a" / "manifest.json").read_text())
    eval_samples = manifest["models"]["uniform"]["eval_samples"]
    assert manifest["metrics"]["likelihood"]["images"] == max(100, eval_samples // 5)


def test_a_strangers_metric_is_a_first_class_column(stranger):
    tmp, env, runs = stranger
    headline = (tmp / "a" / "report.md").read_text().split("## Results")[1].split("##")[0]
    assert "sharp ↑" in headline
    assert runs["a"].loc["tiny", "sharpness"] != runs["b"].loc["tiny", "sharpness"]
    refused = trilemma_cli("report", "--compare", str(tmp / "a"), str(tmp / "b"), "--out", str(tmp / "c"), env=env)
    assert refused.returncode == 2 and "metrics.sharpness.threshold: 0.5 vs 0.25" in refused.stderr
    forced = trilemma_cli("report", "--compare", "--force", str(tmp / "a"), str(tmp / "b"), "--out", str(tmp / "c"),
                          env=env)
    assert forced.returncode == 0, forced.stderr
    assert "sharpness Δ" in pd.read_csv(tmp / "c" / "comparison.csv").columns
    manifest = json.loads((tmp / "a" / "manifest.json").read_text())
    assert manifest["protocol_keys"]["sharpness"] == ["threshold"]
    listed = trilemma_cli("list", env=env)
    assert "sharpness" in listed.stdout and "sharp ↑" in listed.stdout and "--sharpness-threshold" in listed.stdout
    for name in ("density-coverage", "memorization", "likelihood"):
        assert f"  {name} " in listed.stdout
