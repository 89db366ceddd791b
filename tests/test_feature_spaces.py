"""The second feature space (the pinned autoencoder), metrics measured in it, and the realism mark (issue 23, items 3 and 4)."""

import math

import pandas as pd
import torch

from trilemma.autoencoder import MnistAutoencoder, autoencoder_info, load_autoencoder, train_autoencoder
from trilemma.cli import main
from trilemma.metrics import Metric
from trilemma.metrics.density import DensityCoverageMetric
from trilemma.metrics.features import AUTOENCODER, CLASSIFIER
from trilemma.metrics.fidelity import REALISM_MARK, REALISM_THRESHOLD, FidelityMetric, compute_fidelity
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
    assert names[AUTOENCODER] == {"ae_fid", "ae_kid_mean", "ae_kid_std", "ae_precision", "ae_recall"}
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
    and its precision (the realism rule) separates digits from non-digits by a wide margin."""
    reference, source = held_out(mnist)
    sets = sample_sets(source, 300, seed=1)
    real = reference["test"].images[:3000]
    scores = {name: compute_fidelity(images, real, extractor=AUTOENCODER.extractor, dim=AUTOENCODER.dim,
                                     metrics=("fid", "prc")) for name, images in sets.items()}
    classifier = {name: compute_fidelity(sets[name], real, metrics=("fid",))["fid"] for name in ("blobs", "one-class")}
    assert classifier["blobs"] < classifier["one-class"]  # the failure this space is for
    digits = [name for name in sets if name not in NOT_DIGITS]
    for other in NOT_DIGITS:
        for digit in digits:
            assert scores[digit]["fid"] < scores[other]["fid"], (digit, other)
        assert scores[other]["precision"] < REALISM_THRESHOLD / 10, other
    assert min(scores[d]["precision"] for d in digits) > REALISM_THRESHOLD * 4
    noise = [scores[n]["fid"] for n in ("real", "noise-0.1", "noise-0.2")]  # 0.05 is within FID's bias at 300
    assert noise == sorted(noise)


def test_the_realism_mark_follows_the_share_and_sanity_holds_it_to_the_sets():
    metric = FidelityMetric(AUTOENCODER, realism_threshold=REALISM_THRESHOLD)
    assert metric.marks({"ae_precision": REALISM_THRESHOLD / 2}) == [REALISM_MARK]
    assert metric.marks({"ae_precision": 0.8}) == [] and metric.marks({"ae_precision": math.nan}) == []
    assert FidelityMetric(AUTOENCODER).marks({"ae_precision": 0.0}) == []  # no threshold, no mark
    table = {"real": {"ae_precision": 0.99}, "one-class": {"ae_precision": 0.03}, "blobs": {"ae_precision": 0.9},
             "black": {"ae_precision": 0.0}}
    problems = {(p.better or p.worse) for p in check_marks(table, {"ae": metric})}
    assert problems == {"one-class", "blobs"}  # digits marked, blobs unmarked; real and black are right


class BrokenMarks(Metric):
    name = "broken-marks"
    columns = ()

    def marks(self, row):
        raise RuntimeError("a stranger's bug")


def test_marks_reach_the_headline_table_and_a_broken_metric_does_not_take_the_report_down(monkeypatch):
    import trilemma.report_document as document

    realism = FidelityMetric(AUTOENCODER, realism_threshold=REALISM_THRESHOLD)
    broken = BrokenMarks()
    broken.columns = realism.columns  # so that it counts as having run on these rows
    monkeypatch.setattr(document, "registered_metrics", lambda: [realism, broken])
    summary = pd.DataFrame({"model": ["a", "b"], "sampler": ["s", "s"], "n_seeds": [1, 1], "failed": [0, 0],
                            "ae_fid": [5.0, 90.0], "ae_precision": [0.95, 0.01]})
    marks = row_marks(summary)
    assert REALISM_MARK not in marks[0] and REALISM_MARK in marks[1]
    assert all("broken-marks.marks failed: RuntimeError" in m for m in marks)
    table = headline_table(summary, realism.columns, marks)
    assert list(table["marks"]) == marks
    assert "marks" not in headline_table(summary, realism.columns, ["", ""])


def test_the_two_spaces_section_names_rows_that_move_and_the_marked_ones():
    metric = FidelityMetric(AUTOENCODER, realism_threshold=REALISM_THRESHOLD)
    rows = [("digits", 80.0, 10.0, 0.9), ("blobs", 20.0, 150.0, 0.005), ("ok", 30.0, 20.0, 0.95),
            ("fine", 40.0, 30.0, 0.92)]
    frame = pd.DataFrame([{"model": m, "sampler": "s", "status": "ok", "fid": f, "ae_fid": a, "precision": 0.5,
                           "ae_precision": p} for m, f, a, p in rows])
    section = metric.report_section(frame)
    text = " ".join(section.notes)
    assert "digits/s (4 → 1)" in text and "blobs/s (1 → 4)" in text
    assert "Marked: blobs/s." in text and "Kendall τ" in text
    assert list(section.table["realism"]) == ["", REALISM_MARK, "", ""]
    assert FidelityMetric(CLASSIFIER).report_section(frame) is None
