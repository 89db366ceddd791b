"""Learning curves (issue 24, items 1 and 2): points during training that change no weight, rows per
cell, the report's section and its "still improving" marks."""

import re

import pandas as pd
import pytest
import torch

from trilemma.cli import main
from trilemma.columns import Column
from trilemma.curves import CurveFile, curve_points, curve_sampler_names
from trilemma.presets import PRESETS
from trilemma.report_curves import IMPROVING_MARK, curve_marks, improvements
from trilemma.samplers import SamplerSpec
from trilemma.train import Budget, train

FID = [Column("fid", better="lower", title="FID", curve_rank=1)]


def test_points_are_log_spaced_whole_steps_before_the_end():
    assert curve_points(1000, (0.125, 0.25, 0.5)) == {125: 0.125, 250: 0.25, 500: 0.5}
    assert curve_points(3, (0.1, 0.5)) == {1: 1 / 3, 2: 2 / 3}  # at least one step, rounded
    assert curve_points(1, (0.5,)) == {}  # nothing before the end
    assert PRESETS["quick"].curve_fractions == (0.125, 0.25, 0.5) and PRESETS["smoke"].curve_fractions == ()


def test_the_cheapest_sampler_unless_the_model_says():
    bound = {name: (SamplerSpec.parse(spec), None) for name, spec in
             (("ddpm-100", "ddpm:steps=100"), ("ddim-10", "ddim:steps=10"), ("default", "default"))}
    assert curve_sampler_names((), bound) == ["default"]  # no steps: one network pass
    assert curve_sampler_names((), {k: v for k, v in bound.items() if k != "default"}) == ["ddim-10"]
    assert curve_sampler_names(("ddpm-100", "nope"), bound) == ["ddpm-100"]


def test_pauses_leave_the_weights_of_a_run_without_them(mnist):
    import fake_models

    images = mnist["train"].images[:256]

    def trained(pauses):
        torch.manual_seed(0)
        model = fake_models.Tiny(fake_models.Tiny.Config(hidden=8))
        train(model, images, Budget(6, None, 16, 1000, "fp32"), seed=3, progress=False, pauses=pauses)
        return model.state_dict()

    seen = []

    def draw(step):  # what a curve point does to the random state: draws noise and samples
        seen.append(step)
        torch.randn(1000)

    plain, paused = trained(None), trained({2: draw, 4: draw})
    assert seen == [2, 4]
    for name, tensor in plain.items():
        assert torch.equal(tensor, paused[name]), name


def test_a_point_replaces_its_own_earlier_rows(tmp_path):
    curves = CurveFile(tmp_path / "curves" / "m-seed0.csv")
    curves.record([{"model": "m", "sampler": "a", "seed": 0, "step": 2, "fid": 9.0}])
    curves.record([{"model": "m", "sampler": "a", "seed": 0, "step": 4, "fid": 5.0}])
    curves.record([{"model": "m", "sampler": "a", "seed": 0, "step": 2, "fid": 8.0}])  # a resumed cell again
    assert [(r["step"], r["fid"]) for r in curves.rows()] == [(2, 8.0), (4, 5.0)]


def test_still_improving_compares_the_last_doubling_and_marks_every_row_of_the_model():
    curves = pd.DataFrame([{"model": "m", "sampler": "a", "seed": 0, "step": s, "fid": f}
                           for s, f in ((10, 100.0), (20, 60.0), (40, 40.0))]
                          + [{"model": "n", "sampler": "a", "seed": 0, "step": s, "fid": f}
                             for s, f in ((10, 50.0), (20, 30.0), (40, 29.0))])
    found = improvements(curves, FID).set_index("model")
    assert found.loc["m", "improved"] == pytest.approx(1 / 3) and found.loc["m", "before_step"] == 20
    assert found.loc["n", "improved"] == pytest.approx(1 / 30)
    summary = pd.DataFrame({"model": ["m", "m", "n"], "sampler": ["a", "b", "a"]})
    assert curve_marks(summary, curves, FID) == [IMPROVING_MARK, IMPROVING_MARK, ""]


def test_the_curves_follow_the_highest_ranked_measured_column_whatever_its_name_and_direction():
    from trilemma.report_curves import curve_metric

    columns = [Column("fid", better="lower", curve_rank=1), Column("sharpness", better="higher", curve_rank=5),
               Column("ae_fid", better="lower", curve_rank=2), Column("kid_mean", better="lower")]
    curves = pd.DataFrame([{"model": "m", "sampler": "a", "seed": 0, "step": s, "fid": f, "ae_fid": None,
                            "sharpness": h, "kid_mean": 0.1} for s, f, h in ((10, 50.0, 0.2), (20, 49.0, 0.5))])
    assert curve_metric(curves, columns).name == "sharpness"  # a third party's metric, ranked highest
    # Higher is better: 0.2 → 0.5 is an improvement of 150%, not a worsening.
    assert improvements(curves, columns).loc[0, "improved"] == pytest.approx(1.5)
    assert curve_metric(curves.drop(columns="sharpness"), columns).name == "fid"  # ae_fid never measured
    assert curve_metric(curves, [Column("kid_mean")]) is None and improvements(curves, []).empty


def test_a_run_with_curves_records_them_reports_them_and_keeps_the_rows_of_a_run_without(fake_registries, tmp_path):
    args = ["run", "tiny", "--preset", "smoke", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert main([*args, "--curves", "0.5", "--out", str(tmp_path / "curves")]) == 0
    curve = pd.read_csv(tmp_path / "curves" / "curves" / "tiny-seed0.csv")
    assert list(curve["step"]) == [2, 3] and list(curve["images_seen"]) == [32, 48]
    assert curve["fid"].notna().all() and "ae_fid" in curve and "seconds_metric_speed" not in curve
    assert (tmp_path / "curves" / "curves" / "samples" / "tiny-default-seed0-step2.png").exists()
    # the end point is the first of the scored samples, not a second draw; earlier points draw their own
    assert list(curve["reused_draw"].fillna(False).astype(bool)) == [False, True]
    plain = pd.read_csv(tmp_path / "plain" / "results.csv").iloc[0]
    with_curves = pd.read_csv(tmp_path / "curves" / "results.csv").iloc[0]
    for column in ("fid", "ae_fid", "precision", "modes_covered", "nfe", "train_steps"):
        assert plain[column] == with_curves[column], column
    assert with_curves["seconds_curves"] > 0 and pd.isna(plain.get("seconds_curves"))
    report = (tmp_path / "curves" / "report.md").read_text()
    assert "## Learning curves" in report and "learning curves" in report  # the section and the time stage
    plots = sorted(p.name for p in (tmp_path / "curves" / "plots").glob("*.png"))
    assert "FID_AE_against_training_images.png" in plots  # named from the declared title, "FID (AE)"
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", name) for name in plots)  # safe as a Markdown link target
    assert "## Learning curves" not in (tmp_path / "plain" / "report.md").read_text()


def test_bad_curve_points_are_refused(fake_registries, tmp_path, capsys):
    assert main(["run", "tiny", "--curves", "0.5,0.25", "--out", str(tmp_path)]) == 2
    assert "increasing shares" in capsys.readouterr().err


def test_models_whose_steps_round_differently_share_one_column_per_budget_share(tmp_path):
    from trilemma.report_curves import budget_shares, curves_section

    # 1/8 of 1,500 steps is step 188 (0.12533), of 300 is 38 (0.12667), of 2,000 exactly 250.
    points = {"a": ((188, 1500), (375, 1500), (1500, 1500)), "b": ((38, 300), (75, 300), (300, 300)),
              "c": ((250, 2000), (500, 2000), (2000, 2000))}
    curves = pd.DataFrame([{"model": m, "sampler": "s", "seed": 0, "step": step, "fraction": step / total,
                            "images_seen": 64 * step, "samples": 500, "fid": 100.0 - step / total}
                           for m, steps in points.items() for step, total in steps])
    assert budget_shares(curves["fraction"]) == {188 / 1500: 0.125, 38 / 300: 0.125, 0.125: 0.125,
                                                 0.25: 0.25, 1.0: 1.0}
    frame = pd.DataFrame({"model": list(points), "train_gflop_per_step": [1.0, 1.0, 1.0]})
    section = curves_section(curves, frame, tmp_path, FID)
    assert [c for c in section.table.columns if c.endswith("%")] == ["12.5%", "25%", "100%"]
    assert section.table.loc[section.table["model"] == "b", "12.5%"].item() == f"{100 - 38 / 300:.1f}"
