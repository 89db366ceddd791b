"""The metric sanity suite and coverage by recognised digits (issue 23, items 1 and 2)."""

import math

import pytest
import torch
from helpers import cli_env, trilemma_cli

from trilemma.columns import Column
from trilemma.data import Split
from trilemma.metrics.coverage import class_coverage, recognition_threshold
from trilemma.sanity import BLUR, NOISE, check, sample_sets


def fake_data(n=200):
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(n, 1, 28, 28, generator=g) * 255).to(torch.uint8)
    labels = torch.arange(n) % 10
    return {"test": Split(images, labels, "fake"), "train": Split(images.flip(0), labels, "fake")}


def test_the_sets_are_named_sized_and_in_range():
    sets = sample_sets(fake_data(), 30)
    expected = {"real", *(f"noise-{s:g}" for s in NOISE), *(f"blur-{s:g}" for s in BLUR), "half-classes", "one-class",
                "blobs", "pixel-noise", "black", "training-copies"}
    assert set(sets) == expected
    for name, images in sets.items():
        assert images.shape[1:] == (1, 28, 28) and 0 <= images.min() and images.max() <= 1, name
    assert len(sets["one-class"]) == 20  # only the threes of 200 images: 20
    assert (sets["black"] == 0).all() and 0 < sets["blobs"].mean() < 0.5


def test_check_names_each_pair_out_of_a_persons_order():
    columns = {"fid": Column("fid", better="lower", headline=True),
               "modes": Column("modes", better="higher", judged="coverage"),
               "copies": Column("copies", better="lower", judged="none")}
    sets = ["real", *(f"noise-{s:g}" for s in NOISE), *(f"blur-{s:g}" for s in BLUR), "half-classes", "one-class",
            "blobs", "pixel-noise", "black"]
    table = {name: {"fid": 10.0 + i, "modes": 10.0, "copies": 0.0} for i, name in enumerate(sets)}
    assert check(table, columns) == [
        problem for problem in check(table, columns) if problem.column == "modes"]  # fid is in order
    table["blobs"]["fid"] = 5.0  # blobs better than every digit set
    found = {(p.column, p.better, p.worse) for p in check(table, columns)}
    assert ("fid", "real", "blobs") in found and ("fid", "one-class", "blobs") in found
    assert not any(p.column == "copies" for p in check(table, columns))
    modes = {(p.better, p.worse, p.rule) for p in check(table, columns) if p.column == "modes"}
    assert ("real", "half-classes", "fewer classes") in modes  # a tie is wrong where classes are missing
    assert not any(rule.startswith("monotone") for *_, rule in modes)  # a saturated tie along a degradation is not


def test_coverage_counts_only_the_digits_the_classifier_recognises():
    real = torch.full((100, 10), 0.001).index_fill_(1, torch.tensor([0]), 0.991)
    threshold = recognition_threshold(real)
    assert threshold == pytest.approx(0.991)
    confident = torch.eye(10).repeat(10, 1) * 0.99 + 0.001
    unsure = torch.full((100, 10), 0.1)
    labels = torch.arange(100) % 10
    assert class_coverage(confident, labels, 10, threshold)["modes_covered"] == 10
    blurred = class_coverage(unsure, labels, 10, threshold)
    assert blurred["modes_covered"] == 0 and blurred["recognised_share"] == 0 and math.isinf(blurred["kl_to_test"])
    assert class_coverage(unsure, labels, 10)["modes_covered"] == 1  # every argmax counted: class 0 "covered"


@pytest.mark.slow
def test_the_sanity_command_writes_its_table_and_blobs_cover_no_class(tmp_path):
    ran = trilemma_cli("sanity", "--samples", "200", "--out", str(tmp_path), env=cli_env())  # FID needs > 128
    assert ran.returncode == 0, ran.stderr
    readme = (tmp_path / "README.md").read_text()
    assert "| blobs |" in readme and "Mis-rankings" in readme
    import pandas as pd

    table = pd.read_csv(tmp_path / "results.csv", index_col="set")
    assert table.loc["blobs", "modes_covered"] <= 1 and table.loc["real", "modes_covered"] == 10
    assert table.loc["real", "fid"] < table.loc["noise-0.2", "fid"]
    assert table.loc["blobs", "ae_fid"] > table.loc["one-class", "ae_fid"]  # the second space
    assert "| blobs |" in readme and readme.count("⚠ unlike digits") == 3 and "marks:" not in readme
