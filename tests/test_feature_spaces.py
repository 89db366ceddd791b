"""The second feature space (the pinned autoencoder), metrics measured in it, and the realism mark (issue 23, items 3 and 4)."""

import math

import pandas as pd
import torch

from trilemma.autoencoder import MnistAutoencoder, autoencoder_info, load_autoencoder, train_autoencoder
from trilemma.cli import main
from trilemma.metrics import Metric
from trilemma.metrics.density import DensityCoverageMetric
from trilemma.metrics.features import AUTOENCODER, CLASSIFIER
from trilemma.metrics.fidelity import FidelityMetric, compute_fidelity
from trilemma.metrics.realism import REALISM_MARK, REALISM_THRESHOLD, RealismMetric, kept_balls, realistic_share
from trilemma.pinned import asset_path, file_sha256
from trilemma.report_document import headline_table, row_marks
from trilemma.sanity import NOT_DIGITS, check_marks, held_out, sample_sets


def test_training_is_reproducible_under_a_seed(mnist):
    images = mnist["train"].images[:384]
    first, second = (train_autoencoder(images, epochs=1, seed=5, progress=False) for _ in range(2))
    other = train_autoencoder(images, epochs=1, seed=6, progress=False)
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name
    assert not torch.equal(first.encoder[-1].weight, other.encoder[-1].weight)


def test_the_shipped_weights_are_the_pinned_ones_and_reconstruct_digits(mnist):
    assert file_sha256(asset_path("mnist_autoencoder.pt")) == autoencoder_info().sha256
    model = load_autoencoder()
    x = mnist["test"].images[:200].float() / 255
    reconstruction = torch.sigmoid(model(x))
    assert (reconstruction - x).abs().mean() < 0.05  # an untrained one is ~0.5 off
    assert (torch.sigmoid(MnistAutoencoder()(x)) - x).abs().mean() > 0.2
    assert model.encode(x).shape == (200, AUTOENCODER.dim)


def test_info_command_names_the_weights(capsys):
    assert main(["autoencoder", "info"]) == 0
    out = capsys.readouterr().out
    assert autoencoder_info().sha256 in out and "test bce" in out


def test_the_metrics_have_a_second_instance_with_their_own_columns():
    names = {space: {c.name for c in FidelityMetric(space).columns} for space in (CLASSIFIER, AUTOENCODER)}
    assert {"fid", "precision", "recall", "kid_mean", "is_mean"} <= names[CLASSIFIER]
    assert names[AUTOENCODER] == {"ae_fid", "ae_fid_sd", "ae_kid_mean", "ae_kid_std", "ae_precision", "ae_recall"}
    assert {c.name for c in DensityCoverageMetric(AUTOENCODER).columns} == {"ae_density", "ae_knn_coverage"}
    assert FidelityMetric(AUTOENCODER).name != FidelityMetric(CLASSIFIER).name
    assert FidelityMetric(AUTOENCODER).settings == ()  # Inception belongs to the classifier instance


def test_features_of_stacked_images_are_the_channels_side_by_side(mnist):
    one = mnist["test"].images[:4]
    stacked = torch.cat([one, one.flip(0)], dim=1)
    features = AUTOENCODER.features(stacked)
    assert features.shape == (4, 2 * AUTOENCODER.dim)
    assert torch.allclose(features[:, : AUTOENCODER.dim], AUTOENCODER.features(one), atol=1e-5)


def test_the_autoencoder_space_puts_every_digit_set_above_blobs_and_noise(mnist):
    """Where the classifier's FID ranks blobs above one-class and heavily blurred digits, the autoencoder's does not;
    and its realistic share (the realism rule) is zero on non-digits and well above the mark on every digit set."""
    reference, source = held_out(mnist)
    sets = sample_sets(source, 300, seed=1)
    real = reference["test"].images
    scores = {name: compute_fidelity(images, real, extractor=AUTOENCODER.extractor, dim=AUTOENCODER.dim,
                                     metrics=("fid",)) for name, images in sets.items()}
    classifier = {name: compute_fidelity(sets[name], real, metrics=("fid",))["fid"] for name in ("blobs", "one-class")}
    assert classifier["blobs"] < classifier["one-class"]  # the failure this space is for
    centres, radii = kept_balls(AUTOENCODER.features(real))
    realistic = {name: realistic_share(AUTOENCODER.features(images), centres, radii) for name, images in sets.items()}
    digits = [name for name in sets if name not in NOT_DIGITS]
    for other in NOT_DIGITS:
        for digit in digits:
            assert scores[digit]["fid"] < scores[other]["fid"], (digit, other)
        assert realistic[other] == 0, other
    assert min(realistic[d] for d in digits) > REALISM_THRESHOLD, realistic  # blur-1.5: 0.04
    noise = [scores[n]["fid"] for n in ("real", "noise-0.1", "noise-0.2")]  # 0.05 is within FID's bias at 300
    assert noise == sorted(noise)


def test_realism_drops_the_outliers_balls():
    """One real outlier with a huge ball would call a far-away sample realistic; dropping the largest balls drops it."""
    real = torch.cat([torch.randn(200, 2) * 0.1, torch.tensor([[5.0, 5.0], [9.0, 9.0]])])
    centres, radii = kept_balls(real)
    assert realistic_share(torch.tensor([[6.0, 6.0]]), centres, radii) == 0
    assert realistic_share(torch.zeros(1, 2), centres, radii) == 1
    everything = torch.ones(len(real), dtype=torch.bool)
    from trilemma.metrics.knn import nearest_distances

    unpruned = nearest_distances(real, real, k=3, exclude_self=True, squared=True)
    assert realistic_share(torch.tensor([[6.0, 6.0]]), real[everything], unpruned) == 1  # what precision does


def test_the_realism_mark_follows_the_share_and_sanity_holds_it_to_the_sets():
    metric = RealismMetric(AUTOENCODER, mark_below=REALISM_THRESHOLD)
    assert metric.marks({"ae_realism": REALISM_THRESHOLD / 2}) == [REALISM_MARK]
    assert metric.marks({"ae_realism": 0.8}) == [] and metric.marks({"ae_realism": math.nan}) == []
    assert RealismMetric(AUTOENCODER).marks({"ae_realism": 0.0}) == []  # no threshold, no mark
    table = {"real": {"ae_realism": 0.5}, "one-class": {"ae_realism": 0.001}, "blobs": {"ae_realism": 0.9},
             "black": {"ae_realism": 0.0}}
    problems = {(p.better or p.worse) for p in check_marks(table, {"ae": metric})}
    assert problems == {"one-class", "blobs"}  # digits marked, blobs unmarked; real and black are right


class BrokenMarks(Metric):
    name = "broken-marks"
    columns = ()

    def marks(self, row):
        raise RuntimeError("a stranger's bug")


def test_marks_reach_the_headline_table_and_a_broken_metric_does_not_take_the_report_down(monkeypatch):
    import trilemma.report_document as document

    realism = RealismMetric(AUTOENCODER, mark_below=REALISM_THRESHOLD)
    broken = BrokenMarks()
    broken.columns = realism.columns  # so that it counts as having run on these rows
    monkeypatch.setattr(document, "registered_metrics", lambda: [realism, broken])
    summary = pd.DataFrame({"model": ["a", "b"], "sampler": ["s", "s"], "n_seeds": [1, 1], "failed": [0, 0],
                            "ae_fid": [5.0, 90.0], "ae_realism": [0.5, 0.001]})
    marks = row_marks(summary)
    assert REALISM_MARK not in marks[0] and REALISM_MARK in marks[1]
    assert all("broken-marks.marks failed: RuntimeError" in m for m in marks)
    table = headline_table(summary, realism.columns, marks)
    assert list(table["marks"]) == marks
    assert "marks" not in headline_table(summary, realism.columns, ["", ""])


def test_the_two_spaces_section_names_rows_that_move_and_the_realism_section_the_marked_ones():
    rows = [("digits", 80.0, 10.0, 0.4), ("blobs", 20.0, 150.0, 0.0), ("ok", 30.0, 20.0, 0.5),
            ("fine", 40.0, 30.0, 0.45)]
    frame = pd.DataFrame([{"model": m, "sampler": "s", "status": "ok", "fid": f, "ae_fid": a, "precision": 0.5,
                           "ae_precision": 0.5, "ae_realism": r} for m, f, a, r in rows])
    section = FidelityMetric(AUTOENCODER).report_section(frame)
    text = " ".join(section.notes)
    assert "digits/s (4 → 1)" in text and "blobs/s (1 → 4)" in text and "Kendall τ" in text
    assert FidelityMetric(CLASSIFIER).report_section(frame) is None
    realism = RealismMetric(AUTOENCODER, mark_below=REALISM_THRESHOLD).report_section(frame)
    assert "Marked: blobs/s." in " ".join(realism.notes)
    assert list(realism.table["mark"]) == ["", REALISM_MARK, "", ""]
    assert RealismMetric(CLASSIFIER).report_section(frame) is None


def test_real_features_are_cached_by_content_not_by_split_name_and_size(mnist, tmp_path):
    """`trilemma sanity` measures against a random half of the test split: a cache keyed by ("test", 5000) would
    hand it the first half's features, or a run's."""
    from trilemma.data import Split
    from trilemma.metrics.features import real_features
    from trilemma.metrics.fidelity import reference_cache_name

    first, other = mnist["test"].images[:50], mnist["test"].images[50:100]
    for space in (CLASSIFIER, AUTOENCODER):
        a = real_features(space, "mnist", "test", Split(first, first[:, 0, 0, 0], "a"), cache_dir=tmp_path)
        b = real_features(space, "mnist", "test", Split(other, other[:, 0, 0, 0], "b"), cache_dir=tmp_path)
        assert not torch.allclose(a, b)
        assert torch.allclose(b, space.features(other), atol=1e-5)
    assert len(list(tmp_path.iterdir())) == 4
    assert reference_cache_name("mnist", "test", first, "x", "0" * 64) != reference_cache_name("mnist", "test", other,
                                                                                               "x", "0" * 64)
