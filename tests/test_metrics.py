"""The metrics on real MNIST: classifier, FID/IS/KID/PRC, coverage, Stacked-MNIST, Inception."""

import numpy as np
import pytest
import scipy.linalg
import torch
import torchvision.transforms.functional as TF

from trilemma.classifier import classifier_info, classify, load_classifier
from trilemma.data import stack_mnist
from trilemma.errors import TrilemmaError
from trilemma.metrics.coverage import class_coverage, classify_stacked, kl_divergence, stacked_coverage
from trilemma.metrics.fidelity import INCEPTION_EXTRACTOR, compute_fidelity
from trilemma.pinned import asset_path, file_sha256


@pytest.fixture(scope="module")
def reference(mnist, tmp_path_factory):
    """Fidelity against the real test split, its features cached once for the module."""
    cache = tmp_path_factory.mktemp("fidelity-cache")

    def fidelity(images, **kwargs):
        kwargs.setdefault("metrics", ("fid",))
        return compute_fidelity(images, mnist["test"].images, reference_name="test-split", cache_dir=cache, **kwargs)

    return fidelity


def test_classifier_accuracy_and_pinned_hash(mnist):
    info = classifier_info()
    assert file_sha256(asset_path("mnist_classifier.pt")) == info.sha256
    _, logits = classify(load_classifier(), mnist["test"].images)
    accuracy = (logits.argmax(1) == mnist["test"].labels).float().mean().item()
    assert accuracy >= 0.993
    assert abs(accuracy - info.test_accuracy) < 1e-4


def test_real_data_scores_well(mnist):
    real = compute_fidelity(mnist["test"].images, mnist["train"].images[:10000])
    assert real["is_mean"] >= 9.5  # published MNIST-classifier IS of real data: about 9.88
    assert real["fid"] < 0.5
    assert real["precision"] > 0.8 and real["recall"] > 0.8


def test_fid_grows_with_blur_and_noise(mnist, reference):
    clean = mnist["train"].images[:2000].float() / 255
    g = torch.Generator().manual_seed(0)
    blurred = [reference(TF.gaussian_blur(clean, 5, sigma))["fid"] for sigma in (0.5, 1.0, 1.5, 2.0)]
    noised = [reference((clean + s * torch.randn(clean.shape, generator=g)).clamp(0, 1))["fid"]
              for s in (0.05, 0.1, 0.2, 0.3)]
    baseline = reference(clean)["fid"]
    uniform = reference(torch.rand(2000, 1, 28, 28, generator=g))["fid"]
    assert baseline < blurred[0]
    assert blurred == sorted(blurred) and noised == sorted(noised)
    assert len(set(blurred)) == 4 and len(set(noised)) == 4
    assert uniform > 2 * max(blurred + noised)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance of two Gaussians fitted to features (Heusel et al. 2017), with scipy."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def test_fid_matches_an_independent_computation(mnist, reference):
    g = torch.Generator().manual_seed(1)
    generated = (mnist["train"].images[:1500].float() / 255 + 0.15 * torch.randn(1500, 1, 28, 28, generator=g)).clamp(0, 1)
    ours = reference(generated)["fid"]
    as_bytes = (generated * 255).round().to(torch.uint8)  # what torch-fidelity is given
    classifier = load_classifier()
    gen_features = classify(classifier, as_bytes)[0].double().numpy()
    real_features = classify(classifier, mnist["test"].images)[0].double().numpy()
    independent = fid_from_features(gen_features, real_features)
    assert ours == pytest.approx(independent, rel=1e-3)


def test_fids_sampling_spread_matches_independent_draws_of_one_model(mnist, reference):
    # One "model": training digits with pixel noise, drawn independently (a shuffled pool: MNIST's
    # consecutive blocks are not alike). Its FID on eight disjoint draws of 1,000 spreads about as
    # much as the bootstrap of one draw says (measured: 0.75 over 24 draws, bootstrap 0.87; eight
    # values give a rough estimate, hence the factor 2); the spread shrinks with more samples.
    g = torch.Generator().manual_seed(2)
    shuffled = mnist["train"].images[torch.randperm(60000, generator=g)[:9000]]
    pool = (shuffled.float() / 255 + 0.1 * torch.randn(9000, 1, 28, 28, generator=g)).clamp(0, 1)
    draws = [reference(pool[i * 1000:(i + 1) * 1000]) for i in range(8)]
    independent = float(np.std([d["fid"] for d in draws], ddof=1))
    bootstrap = draws[0]["fid_sd"]
    assert independent / 2 < bootstrap < independent * 2, (bootstrap, independent)
    assert reference(pool[6000:9000])["fid_sd"] < bootstrap < reference(pool[8500:8800])["fid_sd"]


def test_fids_sampling_spread_is_the_spread_of_torch_fidelitys_fid_over_the_same_resamples():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    from trilemma.metrics.fidelity import fid_sampling_sd

    g = torch.Generator().manual_seed(0)
    real = fid_features_to_statistics(torch.randn(5000, 32, generator=g))
    generated = torch.randn(400, 32, generator=g) * 1.2 + 0.3
    again = torch.Generator().manual_seed(7)
    theirs = [fid_statistics_to_metric(fid_features_to_statistics(generated[torch.randint(400, (400,), generator=again)]),
                                       real, False)["frechet_inception_distance"] for _ in range(20)]
    assert fid_sampling_sd(generated, real, resamples=20, seed=7) == pytest.approx(np.std(theirs, ddof=1), rel=1e-6)


def test_too_few_samples_for_fid_is_a_clear_error(mnist):
    with pytest.raises(TrilemmaError, match="needs more samples than feature dimensions"):
        compute_fidelity(mnist["train"].images[:100], mnist["test"].images)


def test_coverage_of_real_data_and_of_a_two_digit_generator(mnist, reference):
    test = mnist["test"]
    _, logits = classify(load_classifier(), test.images)
    real = class_coverage(logits.softmax(1), test.labels)
    assert real["modes_covered"] == 10 and real["kl_to_test"] < 0.01
    assert real["low_confidence_share"] < 0.05

    train = mnist["train"]
    zeros_and_ones = train.images[(train.labels == 0) | (train.labels == 1)][:2000]
    _, logits = classify(load_classifier(), zeros_and_ones)
    collapsed = class_coverage(logits.softmax(1), test.labels)
    assert collapsed["modes_covered"] == 2 and collapsed["kl_to_test"] > 1.0
    assert collapsed["class_share_0"] + collapsed["class_share_1"] > 0.99
    quality = reference(zeros_and_ones, metrics=("prc",))
    assert quality["recall"] < quality["precision"]


def test_kl_divergence():
    assert kl_divergence(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])) == 0
    assert kl_divergence(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == pytest.approx(np.log(2))
    assert kl_divergence(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])) == float("inf")


@pytest.mark.slow
def test_stacked_mnist_protocol_on_26000_real_samples(mnist):
    real = stack_mnist(mnist["test"], 26000, seed=0)
    coverage = stacked_coverage(classify_stacked(real.images))
    assert coverage["modes_covered"] >= 995 and coverage["kl_to_uniform"] < 0.1


def test_stacked_mnist_ten_mode_generator(mnist):
    # A generator restricted to ten modes: the same digit in all three channels, d·111.
    test = mnist["test"]
    first_of_each = torch.stack([test.images[test.labels == d][0, 0] for d in range(10)])
    picks = torch.randint(0, 10, (2000,), generator=torch.Generator().manual_seed(0))
    restricted = first_of_each[picks].unsqueeze(1).expand(-1, 3, -1, -1)
    coverage = stacked_coverage(classify_stacked(restricted))
    assert coverage["modes_covered"] == 10
    assert coverage["kl_to_uniform"] > np.log(1000 / 10) - 0.05


def write_random_inception_weights(path):
    """A randomly initialised Inception-v3 in torch-fidelity's format, built without a download."""
    from unittest import mock

    from torch_fidelity import feature_extractor_inceptionv3 as inception

    # The constructor insists on loading weights: hand it an empty state and skip the load.
    with mock.patch.object(inception, "load_state_dict_from_url", return_value={}), \
            mock.patch.object(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None):
        torch.manual_seed(0)
        network = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(network.state_dict(), path)


def test_inception_path_end_to_end_on_a_test_written_weights_file(mnist, tmp_path, monkeypatch):
    from torch_fidelity import feature_extractor_inceptionv3 as inception

    monkeypatch.setattr(inception, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
    weights = tmp_path / "inception.pth"
    write_random_inception_weights(weights)
    result = compute_fidelity(mnist["train"].images[:24], mnist["test"].images[:24], extractor=INCEPTION_EXTRACTOR,
                              weights_path=weights)
    assert result["is_mean"] >= 1.0 and np.isfinite(result["kid_mean"])
    assert np.isnan(result["fid"])  # 24 samples cannot estimate a 2048-d covariance: FID left out, not faked


@pytest.mark.slow  # Inception-v3 on 2 × 200 images: minutes on a 2-core CPU
def test_run_with_inception_weights_and_without(fake_registries, tmp_path, monkeypatch, capsys):
    import pandas as pd
    from torch_fidelity import feature_extractor_inceptionv3 as inception

    from trilemma.cli import main

    monkeypatch.setattr(inception, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no cached weights
    assert main(["run", "tiny", "--preset", "smoke", "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("Inception-v3 weights not found") == 1
    assert "inception_is_mean" not in pd.read_csv(tmp_path / "a" / "results.csv")

    weights = tmp_path / "inception.pth"
    write_random_inception_weights(weights)
    assert main(["run", "tiny", "--preset", "smoke", "--out", str(tmp_path / "b"), "--no-progress",
                 "--inception-weights", str(weights), "--set", "tiny.hidden=4"]) == 0
    row = pd.read_csv(tmp_path / "b" / "results.csv").iloc[0]
    assert row["inception_is_mean"] >= 1.0 and np.isfinite(row["inception_kid_mean"])


@pytest.mark.parametrize("space", ["classifier", "autoencoder"])
def test_fidelity_step_by_step_gives_torch_fidelitys_numbers_and_reuses_the_real_radii(mnist, space, tmp_path):
    """compute_fidelity runs torch-fidelity's own functions one by one so that precision/recall's real
    k-NN radii are computed once per reference: every number must equal calculate_metrics'."""
    import contextlib
    import io

    import torch_fidelity

    from trilemma.cache import CACHE
    from trilemma.metrics.features import AUTOENCODER, CLASSIFIER
    from trilemma.metrics.fidelity import ImageSet, register_extractors

    chosen = CLASSIFIER if space == "classifier" else AUTOENCODER
    generated = (mnist["test"].images[:400].float() / 255 + 0.1 * torch.rand(400, 1, 28, 28)).clamp(0, 1)
    real = mnist["train"].images[:600]
    with_isc = chosen is CLASSIFIER
    got = compute_fidelity(generated, real, extractor=chosen.extractor, dim=chosen.dim, reference_name="ref-a",
                           cache_dir=tmp_path, metrics=("fid", "isc", "kid", "prc") if with_isc else ("fid", "kid", "prc"))
    register_extractors()
    with contextlib.redirect_stdout(io.StringIO()):
        expected = torch_fidelity.calculate_metrics(
            input1=ImageSet(generated), input2=ImageSet(real), feature_extractor=chosen.extractor, isc=with_isc,
            fid=True, kid=True, prc=True, kid_subset_size=400, rng_seed=0, verbose=False, save_cpu_ram=True,
            cuda=False, batch_size=500)
    names = {"fid": "frechet_inception_distance", "is_mean": "inception_score_mean",
             "kid_mean": "kernel_inception_distance_mean", "kid_std": "kernel_inception_distance_std",
             "precision": "precision", "recall": "recall"}
    for ours, theirs in names.items():
        if ours == "is_mean" and not with_isc:
            continue
        assert got[ours] == pytest.approx(expected[theirs], rel=1e-6, abs=1e-9), ours
    assert any(key[0] == "ref-a" for key in CACHE._store.get("prc-real-radii", {}))
    again = compute_fidelity(generated[:300], real, extractor=chosen.extractor, dim=chosen.dim, reference_name="ref-a",
                             cache_dir=tmp_path, metrics=("prc",))
    with contextlib.redirect_stdout(io.StringIO()):
        fresh = torch_fidelity.calculate_metrics(
            input1=ImageSet(generated[:300]), input2=ImageSet(real), feature_extractor=chosen.extractor, prc=True,
            verbose=False, save_cpu_ram=True, cuda=False)
    assert (again["precision"], again["recall"]) == pytest.approx((fresh["precision"], fresh["recall"]))
