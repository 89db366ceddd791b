import json
import math

import numpy as np
import pandas as pd
import pytest

from trilemma.cli import main
from trilemma.columns import Column
from trilemma.errors import TrilemmaError
from trilemma.plots import pareto_frontier
from trilemma.report import aggregate, bootstrap_interval, columns_of, comparison_table, render_run, render_runs

MANIFEST = {
    "dataset": "mnist", "preset": "quick", "seeds": [0, 1, 2], "device": {"type": "cpu", "name": "test cpu"},
    "metrics": {"fidelity": {"extractor": "mnist-classifier", "extractor_sha256": "ab" * 32, "generated_samples": 1000,
                             "real_samples": 10000, "input1": "generated samples", "input2": "real mnist test split"},
                "coverage": {"samples": 1000, "protocol": "classes"}},
    "versions": {"torch": "x"},
}
SAMPLERS = {"vae": {"default": 1}, "dcgan": {"default": 1}, "ddpm": {"ddpm-100": 100, "ddim-20": 20, "ddim-10": 10}}
FID = {("vae", "default"): 60.0, ("dcgan", "default"): 30.0, ("ddpm", "ddpm-100"): 5.0, ("ddpm", "ddim-20"): 8.0,
       ("ddpm", "ddim-10"): 35.0}


def make_run(path, seeds=(0, 1, 2), fail=("dcgan", 2), offset=0.0, manifest=MANIFEST):
    rng = np.random.default_rng(len(str(path)))
    rows = []
    for seed in seeds:
        for model, samplers in SAMPLERS.items():
            for sampler, nfe in samplers.items():
                if (model, seed) == fail:
                    rows.append({"model": model, "sampler": sampler, "seed": seed, "dataset": "mnist", "status": "failed",
                                 "error": "RuntimeError: boom"})
                    continue
                shares = rng.dirichlet(np.ones(10) * 50)
                rows.append({"model": model, "sampler": sampler, "seed": seed, "dataset": "mnist", "status": "ok",
                             "error": "", "fid": FID[model, sampler] + offset + rng.normal(), "is_mean": 9 + rng.normal(),
                             "nfe": nfe, "samples_per_s": 1000 / nfe, "ms_per_sample": nfe, "modes_covered": 10,
                             "modes_total": 10, "kl_to_test": 0.01, "coverage_score": float(np.exp(-0.01)),
                             "precision": 0.8, "recall": 0.7,
                             **{f"class_share_{k}": shares[k] for k in range(10)}})
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path / "results.csv", index=False)
    (path / "manifest.json").write_text(json.dumps(manifest))
    return pd.DataFrame(rows)


def test_aggregates_match_numpy(tmp_path):
    frame = make_run(tmp_path / "run")
    summary = aggregate(frame).set_index(["model", "sampler"])
    ok = frame[(frame.model == "ddpm") & (frame.sampler == "ddim-20")]
    row = summary.loc[("ddpm", "ddim-20")]
    assert row["n_seeds"] == 3 and row["fid"] == pytest.approx(ok["fid"].mean())
    assert row["fid_std"] == pytest.approx(np.std(ok["fid"], ddof=1))
    assert row["fid_ci_low"] <= row["fid"] <= row["fid_ci_high"]
    dcgan = summary.loc[("dcgan", "default")]
    assert dcgan["n_seeds"] == 2 and dcgan["failed"] == 1 and "boom" in dcgan["error"]
    assert dcgan["fid"] == pytest.approx(frame[(frame.model == "dcgan") & (frame.status == "ok")]["fid"].mean())


def test_bootstrap_interval_of_the_mean():
    values = np.random.default_rng(1).normal(10, 2, size=200)
    low, high = bootstrap_interval(values)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))  # the normal approximation
    assert low < values.mean() < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)
    assert all(math.isnan(v) for v in bootstrap_interval([1.0]))


def test_pareto_frontier():
    frame = pd.DataFrame({"nfe": [1, 1, 10, 20, 100, 50], "fid": [60, 30, 35, 8, 5, 9]})
    assert pareto_frontier(frame, x="nfe", y="fid")[["nfe", "fid"]].values.tolist() == [[1, 30], [20, 8], [100, 5]]


def test_report_has_every_model_failures_and_non_empty_pngs(tmp_path):
    run = tmp_path / "run"
    make_run(run)
    (run / "samples").mkdir()
    import torch
    from torchvision.utils import save_image

    save_image(torch.rand(4, 1, 28, 28), run / "samples" / "vae-default-seed0.png")
    md = render_run(run).read_text()
    for model in SAMPLERS:
        assert f"| {model} |" in md
    assert "RuntimeError: boom" in md and "1 failed" in md
    assert " ± " in md  # three seeds: intervals shown
    pngs = sorted((run / "plots").glob("*.png"))
    assert [p.name for p in pngs] == ["class_histograms.png", "fid_vs_nfe.png", "trilemma.png"]
    assert all(p.stat().st_size > 5000 for p in pngs)
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "<table" in html
    assert '<div class="scroll"><table' in html  # a wide table scrolls inside the page
    assert "`" not in html.split("</h1>")[0]  # no Markdown backticks in the HTML heading
    assert "NFE ↓" in md and " 100 ± " not in md and "± 0 " not in md  # a constant has no "± 0"
    (run / "plots" / "trilemma.png").rename(run / "plots" / "a_figure_since_renamed.png")
    render_run(run)  # rendered again: the earlier rendering's figure of another name is gone
    assert sorted(p.name for p in (run / "plots").glob("*.png")) == [p.name for p in pngs]


def test_pooling_seeds_from_several_runs(tmp_path):
    make_run(tmp_path / "a", seeds=(0,), fail=None)
    make_run(tmp_path / "b", seeds=(1,), fail=None)
    render_runs([tmp_path / "a", tmp_path / "b"], out=tmp_path / "pooled")
    summary = pd.read_csv(tmp_path / "pooled" / "summary.csv")
    assert (summary["n_seeds"] == 2).all()
    # The pooled report states the training-seed spread of its quality column; a one-seed run has none.
    pooled = pd.concat([pd.read_csv(tmp_path / run / "results.csv") for run in "ab"])
    expected = pooled.groupby(["model", "sampler"], sort=False)["fid"].std(ddof=1)
    spread = _column((tmp_path / "pooled" / "report.md").read_text(), "FID seed sd")
    assert spread == pytest.approx(list(expected.round(2)), abs=0.006)
    render_run(tmp_path / "a")
    assert "seed sd |" not in (tmp_path / "a" / "report.md").read_text()


def test_comparison_refuses_different_protocols_unless_forced(tmp_path, capsys):
    make_run(tmp_path / "a", fail=None)
    other = json.loads(json.dumps(MANIFEST))
    other["metrics"]["fidelity"]["generated_samples"] = 10000
    make_run(tmp_path / "b", fail=None, offset=2.0, manifest=other)
    with pytest.raises(TrilemmaError, match="generated_samples: 1000 vs 10000"):
        render_runs([tmp_path / "a", tmp_path / "b"], out=tmp_path / "c", compare=True)
    assert main(["report", "--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")]) == 2
    assert "add --force" in capsys.readouterr().err
    assert main(["report", "--compare", "--force", str(tmp_path / "a"), str(tmp_path / "b"),
                 "--out", str(tmp_path / "c")]) == 0
    table = pd.read_csv(tmp_path / "c" / "comparison.csv")
    assert len(table) == 5
    row = table[(table.model == "ddpm") & (table.sampler == "ddim-20")].iloc[0]
    assert row["fid Δ"] == pytest.approx(row["fid B"] - row["fid A"])


def test_comparison_shows_headline_columns_by_their_titles_unless_all_are_asked(tmp_path):
    make_run(tmp_path / "a", fail=None)
    make_run(tmp_path / "b", fail=None, offset=1.0)
    assert main(["report", "--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")]) == 0
    md = (tmp_path / "c" / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| model"))
    assert "FID ↓ A" in header and "FID ↓ Δ" in header and "fid Δ" not in header
    assert "coverage_score" not in header  # not a headline column
    assert "+1" in md.split(header)[1].splitlines()[2]  # Δ signed, in the column's own format
    assert "### A: " in md and "### B: " in md  # both protocols, side by side
    assert main(["report", "--compare", "--all-columns", str(tmp_path / "a"), str(tmp_path / "b"),
                 "--out", str(tmp_path / "d")]) == 0
    header = next(line for line in (tmp_path / "d" / "report.md").read_text().splitlines() if line.startswith("| model"))
    assert "coverage_score ↑ A" in header


def test_comparing_runs_that_share_no_rows_is_refused_unless_forced(tmp_path, capsys):
    make_run(tmp_path / "a", fail=None)
    b = make_run(tmp_path / "b", fail=None)
    b.assign(model="other").to_csv(tmp_path / "b" / "results.csv", index=False)
    assert main(["report", "--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")]) == 2
    assert "share no (model, sampler) rows" in capsys.readouterr().err
    assert main(["report", "--compare", "--force", str(tmp_path / "a"), str(tmp_path / "b"),
                 "--out", str(tmp_path / "c")]) == 0


def test_comparison_table_matches_rows_by_model_and_sampler(tmp_path):
    a = make_run(tmp_path / "a", fail=None)
    b = make_run(tmp_path / "b", fail=None, offset=1.0)
    table = comparison_table(a, b, columns_of([MANIFEST])).set_index(["model", "sampler"])
    expected = b[b.model == "vae"]["fid"].mean() - a[a.model == "vae"]["fid"].mean()
    assert table.loc[("vae", "default"), "fid Δ"] == pytest.approx(expected)


def _identity_run(path, seeds, identity, config_hash="c0"):
    make_run(path, seeds=seeds, fail=None)
    frame = pd.read_csv(path / "results.csv")
    frame["identity"], frame["config_hash"] = identity, config_hash
    frame.to_csv(path / "results.csv", index=False)


def test_pooling_refuses_one_name_trained_as_different_identities(tmp_path, capsys):
    # Measured in issue 21: vae at latent_dim 16 (seed 0) and at 8 (seeds 0, 1) pooled into "vae, seeds 3".
    _identity_run(tmp_path / "z16", (0,), "aaaaaa111111", "h16")
    _identity_run(tmp_path / "z8", (0, 1), "bbbbbb222222", "h8")
    pooled = tmp_path / "pooled"
    assert main(["report", str(tmp_path / "z16"), str(tmp_path / "z8"), "--out", str(pooled)]) == 2
    err = capsys.readouterr().err
    assert "different identities" in err and "aaaaaa111111" in err and "bbbbbb222222" in err
    assert not pooled.exists()
    # --force reports each identity apart, never one pooled row.
    render_runs([tmp_path / "z16", tmp_path / "z8"], out=pooled, force=True)
    summary = pd.read_csv(pooled / "summary.csv")
    vae = summary[summary["model"].str.startswith("vae")].set_index("model")["n_seeds"].to_dict()
    assert vae == {"vae [id aaaaaa]": 1, "vae [id bbbbbb]": 2}


def test_pooling_refuses_a_seed_counted_twice(tmp_path, capsys):
    _identity_run(tmp_path / "a", (0, 1), "aaaaaa111111")
    _identity_run(tmp_path / "b", (1, 2), "aaaaaa111111")
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "seed 1 in" in err and "seed 0" not in err and "counted twice" in err
    _identity_run(tmp_path / "c", (2,), "aaaaaa111111")
    render_runs([tmp_path / "a", tmp_path / "c"], out=tmp_path / "ok")
    assert (pd.read_csv(tmp_path / "ok" / "summary.csv")["n_seeds"] == 3).all()


def test_legacy_rows_pool_by_config_hash_and_one_run_keeps_identities_apart(tmp_path):
    make_run(tmp_path / "old", seeds=(0, 1), fail=None)
    frame = pd.read_csv(tmp_path / "old" / "results.csv")
    frame["config_hash"] = ["h1" if seed == 0 else "h2" for seed in frame["seed"]]
    frame.to_csv(tmp_path / "old" / "results.csv", index=False)
    render_run(tmp_path / "old")
    table = (tmp_path / "old" / "report.md").read_text()
    assert "vae [id h1]" in table and "vae [id h2]" in table


def test_markdown_and_html_say_the_same_things(tmp_path):
    import re

    make_run(tmp_path / "run", seeds=(0, 1), fail=("dcgan", 1))
    render_run(tmp_path / "run")
    md = (tmp_path / "run" / "report.md").read_text()
    page = (tmp_path / "run" / "report.html").read_text()
    md_headings = re.findall(r"^#+ (.+)$", md, flags=re.MULTILINE)
    html_headings = [h.replace("&amp;", "&") for h in re.findall(r"<h\d>(.+?)</h\d>", page)]
    assert md_headings == html_headings and "Failures" in md_headings and "Protocol" in md_headings
    assert "dcgan/default: RuntimeError: boom" in md and "dcgan/default: RuntimeError: boom" in page
    assert "{{" not in md + page and "{%" not in md + page
    assert page.count("<img") == len(re.findall(r"^!\[", md, flags=re.MULTILINE))


def test_a_failed_rows_values_are_shown_greyed_and_never_ranked(tmp_path):
    run = tmp_path / "run"
    frame = make_run(run, seeds=(0,), fail=("none", 0))
    frame.loc[(frame.model == "dcgan"), ["status", "error"]] = ["failed", "MetricsFailed: metric memorization: boom"]
    frame.to_csv(run / "results.csv", index=False)
    fid = frame.loc[frame.model == "dcgan", "fid"].iloc[0]
    summary = aggregate(frame).set_index("model")
    assert math.isnan(summary.loc["dcgan", "fid"])  # not ranked, pooled or plotted
    assert summary.loc["dcgan", "failed_values"]["fid"] == pytest.approx(fid)
    md = render_run(run).read_text()
    row = next(line for line in md.splitlines() if line.startswith("| dcgan |"))
    assert f"({fid:.2f})" in row and row.endswith("| 1 failed |"), row
    assert "Values in parentheses" in md
    html = (run / "report.html").read_text()
    assert '<td class="failed">(' in html and "td.failed{color:#999}" in html
    assert "Values in parentheses" not in render_run(make_run_dir_without_failures(tmp_path)).read_text()


def make_run_dir_without_failures(tmp_path):
    run = tmp_path / "clean"
    make_run(run, seeds=(0,), fail=("none", 0))
    return run


def test_a_metric_that_does_not_apply_to_the_dataset_is_said_under_the_table(fake_registries, tmp_path, monkeypatch):
    from trilemma.metrics.likelihood import LikelihoodMetric

    monkeypatch.setattr(LikelihoodMetric, "applies_to", lambda self, dataset: False)
    assert main(["run", "tiny", "--preset", "smoke", "--no-progress", "--out", str(tmp_path)]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["does_not_apply"] == {"likelihood": ["bpd"]}
    assert "bits/dim: – because the metric likelihood does not apply to mnist." in (tmp_path / "report.md").read_text()


def test_the_protocol_lists_the_plugin_version_of_every_trained_model():
    from trilemma.report_document import protocol_items

    manifest = {"versions": {"torch": "2.14.1", "trilemma-b": "0.2"},
                "models": {"a": {"distribution": "trilemma-a 0.1"}, "b": {"distribution": "trilemma-b 0.2"}}}
    (line,) = [item for item in protocol_items(manifest) if item.startswith("Versions: ")]
    assert line == "Versions: torch 2.14.1, trilemma-a 0.1, trilemma-b 0.2"


def test_comparison_weighs_fid_gaps_against_sampling_noise_and_says_when_devices_differ(tmp_path):
    a = make_run(tmp_path / "a", fail=None)
    b = make_run(tmp_path / "b", fail=None, offset=3.0, manifest={**MANIFEST, "device": {"type": "cpu", "name": "other"}})
    a.assign(fid_sd=0.5).to_csv(tmp_path / "a" / "results.csv", index=False)
    b.assign(fid_sd=0.5).to_csv(tmp_path / "b" / "results.csv", index=False)
    assert main(["report", "--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")]) == 0
    table = pd.read_csv(tmp_path / "c" / "comparison.csv")
    md = (tmp_path / "c" / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| model"))
    assert "FID Δ / noise" in header
    ratios = _column(md, "FID Δ / noise")[:5]
    assert ratios == pytest.approx(list(table["fid Δ"].abs()[:5] / 0.5 ** 0.5), abs=0.06)
    assert "⚠ A ran on test cpu and B on other" in md
    make_run(tmp_path / "e", fail=None)
    assert main(["report", "--compare", str(tmp_path / "a"), str(tmp_path / "e"), "--out", str(tmp_path / "f")]) == 0
    assert "⚠ A ran on" not in (tmp_path / "f" / "report.md").read_text()


def _column(md, heading):
    """The cells of one column of the first table of a Markdown report, as floats."""
    header = next(line for line in md.splitlines() if line.startswith("| model"))
    at = [cell.strip() for cell in header.split("|")].index(heading)
    return [float(line.split("|")[at]) for line in md.split(header)[1].splitlines()[2:] if line.startswith("|")]


def test_comparison_quotes_the_training_seed_spread_of_another_run(tmp_path, capsys):
    other = {**MANIFEST, "device": {"type": "cpu", "name": "other"}}
    make_run(tmp_path / "a", seeds=(0,), fail=None)
    make_run(tmp_path / "b", seeds=(0,), fail=None, offset=3.0, manifest=other)
    spread_run = make_run(tmp_path / "seeds", seeds=(0, 1, 2), fail=None)
    args = ["report", "--compare", str(tmp_path / "a"), str(tmp_path / "b")]
    # One seed a side and no spread given: the device warning says how to get the yardstick.
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    md = (tmp_path / "plain" / "report.md").read_text()
    assert "pass --seed-spread RUN" in md and "FID seed sd" not in md
    assert main([*args, "--seed-spread", str(tmp_path / "seeds"), "--out", str(tmp_path / "c")]) == 0
    table = pd.read_csv(tmp_path / "c" / "comparison.csv").set_index(["model", "sampler"])
    expected = spread_run.groupby(["model", "sampler"])["fid"].std(ddof=1)
    assert table["fid_seed_sd"].to_numpy() == pytest.approx(expected.reindex(table.index).to_numpy())
    md = (tmp_path / "c" / "report.md").read_text()
    # Two single-seed runs differ by sd·√2 when only the seed differs.
    assert _column(md, "FID Δ / seed noise") == pytest.approx(
        list(table["fid Δ"].abs() / (table["fid_seed_sd"] * 2 ** 0.5)), abs=0.06)
    assert "the training-seed spread (FID seed sd) is the yardstick" in md and str(tmp_path / "seeds") in md
    # A spread needs several seeds, and only means something beside a comparison.
    assert main([*args, "--seed-spread", str(tmp_path / "a"), "--out", str(tmp_path / "d")]) == 2
    assert "no model and sampler there has two or more seeds" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before anything is written
    assert main(["report", str(tmp_path / "a"), "--seed-spread", str(tmp_path / "seeds")]) == 2
    assert "only applies with --compare" in capsys.readouterr().err
    # Without --seed-spread, each side's own seeds (never the two sides' rows taken as seeds of one).
    make_run(tmp_path / "a3", seeds=(0, 1, 2), fail=None)
    assert main(["report", "--compare", str(tmp_path / "a3"), str(tmp_path / "b"), "--out", str(tmp_path / "e")]) == 0
    own = pd.read_csv(tmp_path / "e" / "comparison.csv").set_index(["model", "sampler"])
    a3 = pd.read_csv(tmp_path / "a3" / "results.csv").groupby(["model", "sampler"])["fid"].std(ddof=1)
    assert own["fid_seed_sd"].to_numpy() == pytest.approx(a3.reindex(own.index).to_numpy())
    assert "(from A's and B's own seeds)" in (tmp_path / "e" / "report.md").read_text()


def test_the_noise_columns_weigh_the_declared_quality_axis_whatever_it_is_called(tmp_path):
    # A stranger's run whose quality axis is its own metric, with its own sampling-spread column.
    columns = [Column("model", text=True), Column("sampler", text=True), Column("seed"),
               Column("sharpness", better="higher", headline=True, title="sharp", axis="quality",
                      spread="sharpness_sd", fmt="{:.2f}"),
               Column("sharpness_sd", headline=True, fmt="{:.2f}"), Column("fid", better="lower", headline=True)]
    manifest = {**MANIFEST, "columns": [c.to_dict() for c in columns]}
    for name, offset, seeds in (("a", 0.0, (0, 1, 2)), ("b", 2.0, (0,))):
        make_run(tmp_path / name, seeds=seeds, fail=None, manifest=manifest).assign(
            sharpness=lambda f, o=offset: f["fid"] + o, sharpness_sd=0.25).to_csv(
            tmp_path / name / "results.csv", index=False)
    assert main(["report", "--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")]) == 0
    md = (tmp_path / "c" / "report.md").read_text()
    table = pd.read_csv(tmp_path / "c" / "comparison.csv")
    assert _column(md, "sharp Δ / noise") == pytest.approx(list(table["sharpness Δ"].abs() / 0.125 ** 0.5), abs=0.06)
    assert "sharp seed sd" in md and "sharpness_seed_sd" in table and "FID Δ / noise" not in md
    own = pd.read_csv(tmp_path / "a" / "results.csv").groupby(["model", "sampler"])["sharpness"].std(ddof=1)
    assert table.set_index(["model", "sampler"])["sharpness_seed_sd"].to_numpy() == pytest.approx(
        own.reindex(table.set_index(["model", "sampler"]).index).to_numpy())


def test_columns_recorded_before_a_declaration_field_existed_take_it_from_todays_declaration():
    today = {c.name: c for c in columns_of([{}])}  # no recorded columns: the registered metrics'
    assert today["fid"].spread == "fid_sd" and today["ae_fid"].curve_rank > today["fid"].curve_rank > 0
    old = [{k: v for k, v in c.to_dict().items() if k not in ("spread", "curve_rank")} for c in today.values()]
    upgraded = {c.name: c for c in columns_of([{"columns": old}])}
    assert upgraded == today
    old[0]["title"] = "as recorded"
    assert columns_of([{"columns": old}])[0].title == "as recorded"  # what was recorded is kept
