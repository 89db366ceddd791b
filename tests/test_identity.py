"""One identity per cell: samplers apart from training, resume and eval by identity, contradictory
input refused (issue 21). In-process through ``trilemma.cli.main``."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from trilemma.cli import main
from trilemma.errors import TrilemmaError
from trilemma.samplers import SamplerSpec, bind, grid, specs
from trilemma.train import Budget, CheckpointError, load_trained, train

SMOKE = ["--preset", "smoke", "--no-progress"]


def rows(out):
    return pd.read_csv(out / "results.csv", keep_default_na=False)


def manifest(out):
    return json.loads((out / "manifest.json").read_text())


# --- sampler specs -----------------------------------------------------------------------------

def test_specs_parse_name_and_expand():
    spec = SamplerSpec.parse("ddim:steps=20,eta=1")
    assert spec.method == "ddim" and spec.values == {"steps": "20", "eta": "1"}
    assert [s.name for s in grid("ddim", steps=(20, 10), eta=(0.0, 1.0))] == [
        "ddim-20-eta0", "ddim-20-eta1", "ddim-10-eta0", "ddim-10-eta1"]  # not yet canonical: eta 0 still shown
    assert str(SamplerSpec.of("heun", steps=5, spacing="trailing")) == "heun:steps=5,spacing=trailing"
    for bad in ("ddim:steps", "ddim:steps=1,steps=2", ":steps=3", "ddim:=3"):
        with pytest.raises(TrilemmaError):
            SamplerSpec.parse(bad)


def test_specs_are_made_canonical_against_the_method(fake_registries):
    import fake_models

    model = fake_models.TinySteps()
    bound = bind(model, specs(["loop:steps=3", "loop:steps=3,mix=0.5", "loop:steps=2,mix=0.01"]))
    assert list(bound) == ["loop-3", "loop-3-mix0.5", "loop-2"]
    assert str(bound["loop-3-mix0.5"][0]) == "loop:steps=3,mix=0.5"
    with pytest.raises(TrilemmaError, match="same sampler"):
        bind(model, specs(["loop:steps=3", "loop:steps=3,mix=0.01"]))
    with pytest.raises(TrilemmaError, match="unknown method 'lop'; valid: loop, default"):
        bind(model, specs(["lop:steps=3"]))
    with pytest.raises(TrilemmaError, match="expected int"):
        bind(model, specs(["loop:steps=many"]))


def test_a_protocol_1_model_or_a_bad_preset_is_refused_at_registration(fake_registries):
    import fake_models

    class Old(fake_models.Tiny):
        name = "old"

        def samplers(self):
            return {"default": self.sample}

    class Typo(fake_models.Tiny):
        name = "typo"
        presets = {"smoke": {"confg": {"hidden": 4}}}

    class BadSpec(fake_models.Tiny):
        name = "bad-spec"
        presets = {"smoke": {"samplers": ("loop:steps",)}}

    assert "protocol 1" in Old.declaration_problem()
    assert "unknown key(s) 'confg'" in Typo.declaration_problem()
    assert "KEY=VALUE" in BadSpec.declaration_problem()
    assert fake_models.TinySteps.declaration_problem() is None


# --- contradictory input -----------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--steps", "3", "--images", "48"], "--steps and --images each set the training budget"),
    (["--set", "tiny.hidden=8", "--sweep", "tiny.hidden=4,8"], "--set and --sweep both set tiny.hidden"),
    (["--sampler", "loop:steps=2"], "no model in this run has the method(s) loop"),
    (["--sampler", "default:steps=2"], "unknown parameter(s) steps"),
    (["--sampler", "tiny-steps/loop:steps=2"], "--sampler names model(s) not in this run: tiny-steps"),
    (["--retrain-changed"], "--retrain-changed only applies with --resume"),
])
def test_contradictory_or_bad_input_is_refused_before_any_work(fake_registries, tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["run", "tiny", *SMOKE, "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "results.csv").exists()


# --- resume by identity ------------------------------------------------------------------------

def test_resume_refuses_rows_trained_as_something_else_and_the_manifest_keeps_describing_them(
        fake_registries, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "tiny", *SMOKE, "--out", str(out)]) == 0
    before, described = rows(out), manifest(out)
    assert described["models"]["tiny"]["config"]["hidden"] == 8
    from trilemma.seeds import SEED_OFFSETS

    assert described["seed_offsets"] == SEED_OFFSETS  # every random stream's seed, in the protocol
    identity = before["identity"].iloc[0]
    assert described["identities"][identity]["config"]["hidden"] == 8
    capsys.readouterr()

    # The case measured in issue 21: another config under --resume was "already finished, skipped".
    assert main(["run", "tiny", *SMOKE, "--set", "tiny.hidden=4", "--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "tiny seed 0 already has rows" in err and "--retrain-changed" in err
    assert rows(out).equals(before) and manifest(out)["models"] == described["models"]
    # Another budget is another identity too.
    assert main(["run", "tiny", *SMOKE, "--steps", "2", "--resume", "--out", str(out)]) == 2

    assert main(["run", "tiny", *SMOKE, "--set", "tiny.hidden=4", "--resume", "--retrain-changed",
                 "--out", str(out)]) == 0
    after = rows(out)
    assert len(after) == 1 and after["identity"].iloc[0] != identity
    assert after["params"].iloc[0] == 4 * 4 + 4 + 4 * 784 + 784
    assert manifest(out)["models"]["tiny"]["config"]["hidden"] == 4
    # The same identity again is skipped.
    capsys.readouterr()
    assert main(["run", "tiny", *SMOKE, "--set", "tiny.hidden=4", "--resume", "--out", str(out)]) == 0
    assert "tiny seed 0: already finished, skipped (--resume)" in capsys.readouterr().out


def test_checkpoints_carry_the_cell_identity(tmp_path):
    import fake_models

    model = fake_models.Tiny()
    images = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8)
    budget = Budget(steps=2, seconds=None, batch_size=8)
    path = tmp_path / "tiny.pt"
    cell = {"dataset": "mnist", "plugin": "trilemma-fakes 0.0.1"}
    train(model, images, budget, seed=0, checkpoint=path, progress=False, identity=cell)
    assert load_trained(fake_models.Tiny(), path, budget, cell).steps == 2
    with pytest.raises(CheckpointError, match="another identity"):
        load_trained(fake_models.Tiny(), path, budget, {**cell, "dataset": "stacked-mnist"})
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_trained(fake_models.Tiny(), tmp_path / "none.pt", budget, cell)


# --- samplers are evaluation, not training ------------------------------------------------------

def test_a_new_sampler_under_resume_evaluates_without_retraining(fake_registries, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "tiny-steps", *SMOKE, "--out", str(out)]) == 0
    first = rows(out).set_index("sampler")
    assert list(first.index) == ["loop-1", "loop-3"] and list(first["nfe"]) == [1, 3]
    assert list(first["sampler_spec"]) == ["loop:steps=1", "loop:steps=3"]
    checkpoint = out / "checkpoints" / "tiny-steps-seed0.pt"
    stamp = checkpoint.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["run", "tiny-steps", *SMOKE, "--sampler", "loop:steps=2", "--resume", "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "training from scratch" not in log and "already has rows" not in log
    assert checkpoint.stat().st_mtime_ns == stamp  # the finished checkpoint was loaded, not retrained
    after = rows(out).set_index("sampler")
    assert list(after.index) == ["loop-2"] and after.loc["loop-2", "nfe"] == 2  # a resumed cell is rerun whole
    assert after.loc["loop-2", "train_seconds"] == first.loc["loop-1", "train_seconds"]


def test_eval_adds_sampler_rows_to_a_finished_run_without_training(fake_registries, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "tiny-steps", "tiny", *SMOKE, "--seed", "0", "--seed", "1", "--out", str(out)]) == 0
    first = rows(out)
    checkpoint = out / "checkpoints" / "tiny-steps-seed1.pt"
    stamp = checkpoint.stat().st_mtime_ns

    assert main(["eval", str(out), "tiny-steps", "--sampler", "loop:steps=5,mix=0.02", "--no-progress"]) == 0
    assert checkpoint.stat().st_mtime_ns == stamp
    after = rows(out)
    added = after[after["sampler"] == "loop-5-mix0.02"]
    assert sorted(added["seed"]) == [0, 1] and set(added["nfe"]) == {5} and set(added["status"]) == {"ok"}
    kept = after[after["sampler"] != "loop-5-mix0.02"].sort_values(["model", "sampler", "seed"]).reset_index(drop=True)
    old = first.sort_values(["model", "sampler", "seed"]).reset_index(drop=True)
    assert kept[["model", "sampler", "seed", "fid", "identity"]].equals(old[["model", "sampler", "seed", "fid", "identity"]])
    trained = first[first["model"] == "tiny-steps"].set_index("seed")["train_seconds"]
    assert added.set_index("seed")["train_seconds"].to_dict() == trained.groupby(level=0).first().to_dict()
    assert set(added["identity"]) == set(first.loc[first["model"] == "tiny-steps", "identity"])
    described = manifest(out)
    assert "loop:steps=5,mix=0.02" in described["models"]["tiny-steps"]["samplers"]
    assert any(c.startswith("trilemma eval") for c in described["commands"])
    capsys.readouterr()

    assert main(["eval", str(out), "--sampler", "lop:steps=2"]) == 2
    assert "no model evaluated here has the method(s) lop" in capsys.readouterr().err
    assert main(["eval", str(out), "nosuch"]) == 2
    assert main(["eval", str(tmp_path / "empty")]) == 2


def test_eval_never_trains_and_keeps_rows_it_cannot_evaluate(fake_registries, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "tiny", *SMOKE, "--out", str(out)]) == 0
    before = rows(out)
    checkpoint = out / "checkpoints" / "tiny-seed0.pt"
    checkpoint.rename(out / "aside.pt")
    assert main(["eval", str(out), "--no-progress"]) == 2
    assert "no checkpoint of tiny seed 0" in capsys.readouterr().err
    assert rows(out).equals(before) and not checkpoint.exists()

    (out / "aside.pt").write_bytes((out / "aside.pt").read_bytes()[:300])  # damaged: said in the row, not retrained
    (out / "aside.pt").rename(checkpoint)
    assert main(["eval", str(out), "--no-progress"]) == 1
    failed = rows(out)
    assert list(failed["status"]) == ["failed"] and "unreadable" in failed["error"].iloc[0]
    assert checkpoint.stat().st_size == 300


def test_a_plugin_upgrade_is_another_identity_for_resume_and_eval(tmp_path):
    """A stranger's installed package: rows trained by 0.0.1 are neither skipped by --resume nor
    evaluated by eval once 0.0.2 is installed (its code may sample differently)."""
    from helpers import FAKES_SOURCE, cli_env, trilemma_cli, write_installed_plugin

    out = tmp_path / "run"
    for version in ("0.0.1", "0.0.2"):
        site = tmp_path / f"site-{version}"
        write_installed_plugin(site, "trilemma-stranger", "stranger", "trilemma_stranger", FAKES_SOURCE, version)
    old, new = (cli_env(tmp_path / f"site-{v}", allow="stranger") for v in ("0.0.1", "0.0.2"))
    args = ["run", "tiny-steps", *SMOKE, "--out", str(out)]
    assert trilemma_cli(*args, env=old).returncode == 0
    assert manifest(out)["models"]["tiny-steps"]["distribution"] == "trilemma-stranger 0.0.1"
    resumed = trilemma_cli(*args, "--resume", env=new)
    assert resumed.returncode == 2 and "already has rows" in resumed.stderr
    evaluated = trilemma_cli("eval", str(out), "--sampler", "loop:steps=2", env=new)
    assert evaluated.returncode == 2
    assert "trained with trilemma-stranger 0.0.1 and trilemma-stranger 0.0.2 is installed" in evaluated.stderr
    assert trilemma_cli("eval", str(out), "--sampler", "loop:steps=2", "--no-progress", env=old).returncode == 0
    assert sorted(rows(out)["sampler"]) == ["loop-1", "loop-2", "loop-3"]


def test_a_metric_cannot_fill_the_identity_columns(fake_registries):
    import trilemma
    from trilemma.columns import Column
    from trilemma.metrics import Metric
    from trilemma.plugins import collect, get_plugin_manager

    class Forger(Metric):
        name = "forger"
        columns = (Column("identity"), Column("sampler_spec"))

        def compute(self, ctx):
            return {"identity": "0" * 12}

    class Plugin:
        @trilemma.hookimpl
        def register_metrics(self, register):
            register(Forger())

    registries = collect(get_plugin_manager({"forger": Plugin()}))
    assert "forger" not in registries.metrics
    assert any("identity" in str(conflict) for conflict in registries.conflicts())


def test_the_manifest_lists_the_versions_of_every_command_that_wrote_rows(fake_registries, tmp_path, monkeypatch):
    import trilemma.record as record

    out = tmp_path / "run"
    monkeypatch.setattr(record, "library_versions", lambda extra=(): {"torch": "2.0", "trilemma-a": "0.1"})
    assert main(["run", "tiny", *SMOKE, "--out", str(out)]) == 0
    monkeypatch.setattr(record, "library_versions", lambda extra=(): {"torch": "2.1", "trilemma-b": "0.2"})
    assert main(["run", "tiny", *SMOKE, "--seed", "1", "--resume", "--out", str(out)]) == 0
    # A plugin only the first command used stays listed; a library that changed says so, in order.
    assert manifest(out)["versions"] == {"torch": "2.0, then 2.1", "trilemma-a": "0.1", "trilemma-b": "0.2"}
    assert record.merged_versions({"torch": "2.0, then 2.1"}, {"torch": "2.1"}) == {"torch": "2.0, then 2.1"}
    assert record.merged_versions({"torch": "2.0, then 2.1"}, {"torch": "2.0"}) == {"torch": "2.0, then 2.1, then 2.0"}
