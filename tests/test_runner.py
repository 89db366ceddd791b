import json
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from helpers import FAKES_SOURCE, REPO, cli_env, write_installed_plugin

from trilemma.cli import main
from trilemma.columns import declared_columns
from trilemma.plugins import collect


def run_cli(*args):
    return main(list(args))


def test_nfe_is_counted_by_the_harness_not_claimed(fake_registries, tmp_path):
    code = run_cli("run", "tiny", "tiny-k3", "--preset", "smoke", "--out", str(tmp_path), "--no-progress")
    assert code == 0
    rows = pd.read_csv(tmp_path / "results.csv").set_index("model")
    assert rows.loc["tiny", "nfe"] == 1
    assert rows.loc["tiny-k3", "nfe"] == 3  # the model's `nfe = 1` claim is ignored


def test_one_failing_model_does_not_stop_the_others(fake_registries, tmp_path, capsys):
    code = run_cli("run", "tiny-exploding", "tiny", "tiny-nan", "tiny-bad-samples", "--preset", "smoke",
                   "--out", str(tmp_path), "--no-progress")
    assert code == 1
    rows = pd.read_csv(tmp_path / "results.csv").set_index("model")
    declared = [c.name for c in declared_columns(e.item for e in collect().metrics.in_order())
                if not c.optional and not c.is_family]
    assert [c for c in rows.columns if c in declared] == declared[1:]  # declared columns, in declared order
    assert rows.columns[0] == "sampler" and rows.columns[1] == "seed"
    ok = rows.loc["tiny"]
    assert ok["status"] == "ok" and pd.isna(ok["error"])
    for column in ("fid", "is_mean", "kid_mean", "precision", "recall", "nfe", "ms_per_sample", "modes_covered",
                   "kl_to_test", "train_seconds", "train_steps", "images_seen", "params"):
        assert pd.notna(ok[column]), column
    assert rows.loc["tiny-exploding", "status"] == "failed"
    assert "exploded on purpose" in rows.loc["tiny-exploding", "error"]
    assert "non-finite loss" in rows.loc["tiny-nan", "error"]
    assert "expected [0, 1]" in rows.loc["tiny-bad-samples", "error"]
    assert rows.loc["tiny-bad-samples", "train_steps"] == 3  # training columns kept for a sampling failure
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["models"]["tiny"]["config"]["hidden"] == 8
    assert "mnist-classifier" == manifest["metrics"]["fidelity"]["extractor"]
    assert "failed" in capsys.readouterr().err


def test_set_overrides_reach_the_config(fake_registries, tmp_path):
    code = run_cli("run", "tiny", "--preset", "smoke", "--set", "tiny.hidden=16", "--out", str(tmp_path),
                   "--no-progress", "--seed", "3", "--seed", "4")
    assert code == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["models"]["tiny"]["config"]["hidden"] == 16
    rows = pd.read_csv(tmp_path / "results.csv")
    assert sorted(rows["seed"]) == [3, 4]
    assert rows["params"].iloc[0] == 4 * 16 + 16 + 16 * 784 + 784


FAKE_SOURCE = FAKES_SOURCE


def test_killed_run_keeps_finished_rows_and_resume_skips_them(tmp_path):
    site, out = tmp_path / "site", tmp_path / "run"
    write_installed_plugin(site, "trilemma-fakes", "fakes", "fake_models_plugin", FAKE_SOURCE)
    env = cli_env(site, allow="fakes", PYTHONUNBUFFERED="1")
    args = [sys.executable, "-m", "trilemma", "run", "tiny", "tiny-slow", "--preset", "smoke", "--steps", "1000",
            "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    results = out / "results.csv"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if results.exists() and "tiny," in results.read_text() and proc.poll() is None:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # tiny-slow is now training
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = pd.read_csv(results)
    assert list(before["model"]) == ["tiny"] and before["status"].iloc[0] == "ok"

    # tiny-slow has no rows yet, so changing its config is no conflict; tiny's identity is unchanged.
    resumed = subprocess.run([*args, "--set", "tiny-slow.step_sleep=0", "--resume"],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert "tiny seed 0: already finished, skipped (--resume)" in resumed.stdout
    after = pd.read_csv(results).set_index("model")
    assert after.loc["tiny", "train_seconds"] == before["train_seconds"].iloc[0]
    assert after.loc["tiny-slow", "status"] == "ok"


def test_a_fresh_run_into_an_old_directory_starts_over_and_keeps_the_manifest(fake_registries, tmp_path):
    assert run_cli("run", "tiny", "tiny-k3", "--preset", "smoke", "--out", str(tmp_path), "--no-progress") == 0
    assert (tmp_path / "checkpoints" / "tiny-seed0.pt").exists()
    # Without --resume the finished checkpoint (3 steps) must not be loaded.
    assert run_cli("run", "tiny", "--preset", "smoke", "--steps", "2", "--out", str(tmp_path), "--no-progress") == 0
    rows = pd.read_csv(tmp_path / "results.csv").set_index("model")
    assert rows.loc["tiny", "train_steps"] == 2 and rows.loc["tiny-k3", "train_steps"] == 3
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["models"]) == {"tiny", "tiny-k3"}


def test_a_sweep_trains_one_model_row_per_variant_and_resumes_per_cell(fake_registries, tmp_path, capsys):
    args = ["run", "tiny", "--preset", "smoke", "--sweep", "tiny.hidden=4,8", "--sweep", "tiny.lr=0.01,0.02",
            "--set", "tiny.calls_per_sample=2", "--out", str(tmp_path), "--no-progress"]
    assert run_cli(*args) == 0
    rows = pd.read_csv(tmp_path / "results.csv").set_index("model")
    expected = [f"tiny[hidden={h},lr={lr}]" for h in (4, 8) for lr in (0.01, 0.02)]
    assert sorted(rows.index) == sorted(expected)
    assert rows.loc["tiny[hidden=8,lr=0.01]", "params"] == 4 * 8 + 8 + 8 * 784 + 784
    assert (rows["nfe_hooks"] == 2).all()  # --set applies to every variant
    # four dead-ReLU hidden units map many latents to one image: NFE is per distinct sample, and said
    narrow = rows.loc["tiny[hidden=4,lr=0.01]"]
    assert narrow["nfe"] == pytest.approx(2 / narrow["distinct_share"]) and "duplicates" in narrow["count_flags"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    variant = manifest["models"]["tiny[hidden=4,lr=0.02]"]
    assert variant["config"]["hidden"] == 4 and variant["config"]["lr"] == 0.02 and variant["registry_name"] == "tiny"
    assert (tmp_path / "samples" / "tiny[hidden=4,lr=0.02]-default-seed0.png").exists()
    report = (tmp_path / "report.md").read_text()
    assert "tiny[hidden=4,lr=0.02]/default" in report  # its sample grid is found despite the brackets
    capsys.readouterr()
    assert run_cli(*args, "--resume") == 0
    assert capsys.readouterr().out.count("already finished, skipped") == 4
    assert run_cli("run", "tiny", "--sweep", "tiny.hidden=4/5", "--out", str(tmp_path / "x")) == 2
    assert run_cli("run", "tiny", "--sweep", "other.hidden=4", "--out", str(tmp_path / "y")) == 2
