"""Benchmarks (``tox -e bench``): feature extraction, the metric suite on 10,000 samples, and the
nearest-neighbour searches of density/coverage and memorization (10,000 × 60,000)."""

import pytest
import torch

from trilemma.classifier import classify, load_classifier
from trilemma.metrics.coverage import class_coverage
from trilemma.metrics.density import density_coverage
from trilemma.metrics.features import classifier_outputs
from trilemma.metrics.fidelity import compute_fidelity
from trilemma.metrics.knn import nearest_distances

N = 10_000


@pytest.fixture(scope="module")
def generated(mnist):
    g = torch.Generator().manual_seed(0)
    return (mnist["train"].images[:N].float() / 255 + 0.1 * torch.randn(N, 1, 28, 28, generator=g)).clamp(0, 1)


def test_feature_extraction_10k(benchmark, generated):
    classifier = load_classifier()
    features, _ = benchmark.pedantic(classify, args=(classifier, generated), rounds=3, warmup_rounds=1)
    assert features.shape == (N, 128)


def test_metric_suite_10k(benchmark, mnist, generated, tmp_path):
    """FID, IS, KID, precision/recall and class coverage of 10,000 samples against the test split,
    the reference features cached as in a run."""
    classifier = load_classifier()

    def suite():
        row = compute_fidelity(generated, mnist["test"].images, reference_name="bench-test", cache_dir=tmp_path)
        _, logits = classify(classifier, generated)
        row.update(class_coverage(logits.softmax(1), mnist["test"].labels))
        return row

    row = benchmark.pedantic(suite, rounds=2, warmup_rounds=1)
    assert row["modes_covered"] == 10


def test_density_coverage_10k(benchmark, mnist, generated):
    real, _ = classifier_outputs(mnist["test"].images[:N])
    fake, _ = classifier_outputs(generated)
    row = benchmark.pedantic(density_coverage, args=(real, fake), rounds=2, warmup_rounds=0)
    assert 0 < row["knn_coverage"] <= 1


def test_nearest_training_image_10k_by_60k_pixels(benchmark, mnist, generated):
    train = mnist["train"].images.float() / 255
    distances = benchmark.pedantic(nearest_distances, args=(generated, train), rounds=1, warmup_rounds=0)
    assert distances.shape == (N,)


def test_nearest_training_image_10k_by_60k_features(benchmark, mnist, generated):
    train, _ = classifier_outputs(mnist["train"].images)
    fake, _ = classifier_outputs(generated)
    distances = benchmark.pedantic(nearest_distances, args=(fake, train), rounds=2, warmup_rounds=0)
    assert distances.shape == (N,)
