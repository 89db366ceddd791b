"""Budgets are work (images or steps), time is a measured cost, a wall-time cap is explicit."""

import json
import math
import subprocess
import sys

import pandas as pd
import pytest
import torch
from helpers import cli_env, trilemma_cli

import trilemma
from trilemma.cli import main
from trilemma.cost import training_flops_per_step
from trilemma.errors import TrilemmaError
from trilemma.presets import PRESETS


def test_images_budget_sets_the_steps_and_the_manifest_records_it(fake_registries, tmp_path):
    assert main(["run", "tiny", "--preset", "smoke", "--images", "40", "--out", str(tmp_path), "--no-progress"]) == 0
    row = pd.read_csv(tmp_path / "results.csv").iloc[0]
    assert row["train_steps"] == 3 and row["images_seen"] == 48  # ⌈40 / 16⌉ steps of 16
    assert not row["train_capped"] and row["train_precision"] in ("fp32", "bf16")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["models"]["tiny"]["budget"] == {"train_images": 40, "train_steps": 3, "train_pflop": None,
                                                    "batch_size": 16}
    assert manifest["training"]["train_seconds_cap"] is None


def test_cost_columns_are_measured(fake_registries, tmp_path):
    assert main(["run", "tiny", "--preset", "smoke", "--out", str(tmp_path), "--no-progress"]) == 0
    row = pd.read_csv(tmp_path / "results.csv").iloc[0]
    assert row["train_gflop_per_step"] * 1e9 == pytest.approx(TINY_FLOPS_PER_STEP, rel=0.01)
    assert row["train_images_per_s"] == pytest.approx(row["images_seen"] / row["train_seconds"])
    assert row["peak_gflops"] > 0 and row["train_gflops"] > 0
    assert row["utilisation"] == pytest.approx(row["train_gflops"] / row["peak_gflops"])


def test_a_wall_time_cap_is_marked_and_such_rows_are_not_compared_with_uncapped(fake_registries, tmp_path, capsys):
    capped, free = tmp_path / "capped", tmp_path / "free"
    assert main(["run", "tiny-slow", "--preset", "smoke", "--steps", "50", "--train-seconds", "1",
                 "--out", str(capped), "--no-progress"]) == 0
    row = pd.read_csv(capped / "results.csv").iloc[0]
    assert bool(row["train_capped"]) and row["train_steps"] < 50
    assert json.loads((capped / "manifest.json").read_text())["training"]["train_seconds_cap"] == 1
    assert "capped at 1 s of wall time" in (capped / "report.md").read_text()
    assert main(["run", "tiny-slow", "--preset", "smoke", "--steps", "2", "--out", str(free), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["report", "--compare", str(capped), str(free), "--out", str(tmp_path / "c")]) == 2
    assert "training.train_seconds_cap: 1.0 vs None" in capsys.readouterr().err


TINY_FLOPS_PER_STEP = 2 * 3 * 16 * (4 * 8 + 8 * 784)  # the smoke tiny: two linear layers, fwd + bwd, batch 16


def test_a_compute_budget_buys_the_steps_its_flops_per_step_allow():
    budget = PRESETS["quick"].with_budget({"train_pflop": 2.5, "batch_size": 64}).budget
    assert budget.kind == "pflop" and budget.train_images is None and budget.train_steps is None
    with pytest.raises(TrilemmaError, match="no steps until"):
        _ = budget.steps
    assert budget.for_flops_per_step(1e12).steps == 2500
    assert budget.for_flops_per_step(3e12).steps == math.ceil(2.5e15 / 3e12)
    assert budget.for_flops_per_step(1e18).steps == 1  # at least one step
    assert budget.with_changes({"train_images": 640}).kind == "images"  # one amount clears the others
    with pytest.raises(TrilemmaError, match="train_pflop must be a number > 0"):
        PRESETS["quick"].with_budget({"train_pflop": 0})
    with pytest.raises(TrilemmaError, match="counted FLOPs per step"):
        budget.for_flops_per_step(math.nan)


def test_a_compute_matched_run_trains_each_model_to_its_flops_and_is_compared_only_with_its_kind(
        fake_registries, tmp_path, capsys):
    matched, work = tmp_path / "matched", tmp_path / "work"
    pflop = 5.5 * TINY_FLOPS_PER_STEP / 1e15
    assert main(["run", "tiny", "--preset", "smoke", "--train-pflop", str(pflop), "--out", str(matched),
                 "--no-progress"]) == 0
    row = pd.read_csv(matched / "results.csv").iloc[0]
    assert row["status"] == "ok" and row["train_steps"] == 6  # ⌈5.5⌉ steps
    assert row["train_pflop_budget"] == pytest.approx(pflop)
    assert row["train_pflop"] == pytest.approx(6 * TINY_FLOPS_PER_STEP / 1e15, rel=0.01)
    manifest = json.loads((matched / "manifest.json").read_text())
    assert manifest["training"]["budget_kind"] == "compute"
    assert manifest["models"]["tiny"]["budget"]["train_pflop"] == pytest.approx(pflop)
    assert next(iter(manifest["identities"].values()))["budget"]["kind"] == "pflop"
    assert "budgets in compute" in (matched / "report.md").read_text()
    assert main(["eval", str(matched), "--no-progress"]) == 0  # the checkpoint's budget is rebuilt from the manifest
    assert main(["run", "tiny", "--preset", "smoke", "--steps", "6", "--out", str(work), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["report", "--compare", str(matched), str(work), "--out", str(tmp_path / "c")]) == 2
    assert "training.budget_kind: compute vs work" in capsys.readouterr().err
    assert main(["run", "tiny", "--preset", "smoke", "--steps", "2", "--train-pflop", "1", "--out",
                 str(tmp_path / "x")]) == 2
    assert "--steps and --train-pflop each set the training budget" in capsys.readouterr().err


def test_flop_counting_leaves_the_model_and_the_random_state_alone():
    import fake_models

    model = fake_models.Tiny()
    model.optimizers = model.configure_optimizers()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8)
    rng = torch.get_rng_state()
    assert training_flops_per_step(model, images, 8, "fp32") > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert torch.equal(rng, torch.get_rng_state())
    assert not model.optimizers["adam"].state  # the optimizer never stepped


def test_precision_follows_the_model_and_the_flag(tmp_path, monkeypatch):
    import fake_models

    import trilemma.plugins as plugins

    class TinyBF16(fake_models.Tiny):
        name = "tiny-bf16"
        precisions = ("fp32", "bf16")

    class Plugin:
        @trilemma.hookimpl
        def register_models(self, register):
            register(TinyBF16)

    real_collect = plugins.collect
    monkeypatch.setattr(plugins, "collect", lambda pm=None: real_collect(
        pm or plugins.get_plugin_manager({"fakes": fake_models, "bf16": Plugin()})))
    out = tmp_path / "run"
    assert main(["run", "tiny", "tiny-bf16", "--preset", "smoke", "--precision", "bf16", "--out", str(out),
                 "--no-progress"]) == 0
    rows = pd.read_csv(out / "results.csv").set_index("model")
    assert rows.loc["tiny", "train_precision"] == "fp32"  # it does not list bf16
    assert rows.loc["tiny-bf16", "train_precision"] == "bf16"
    assert main(["run", "tiny-bf16", "--preset", "smoke", "--precision", "fp32", "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 0
    assert pd.read_csv(tmp_path / "b" / "results.csv").iloc[0]["train_precision"] == "fp32"


def test_presets_refuse_time_budgets_and_bad_work():
    quick = PRESETS["quick"]
    with pytest.raises(TrilemmaError, match="budgets are work, not time"):
        quick.with_budget({"train_seconds": 100}, where="model 'x', ")
    with pytest.raises(TrilemmaError, match="train_images must be a whole number ≥ 1"):
        quick.with_budget({"train_images": 0})
    assert quick.with_budget({"train_steps": 7}).steps == 7
    assert quick.with_budget({"train_images": 1000, "batch_size": 64}).steps == math.ceil(1000 / 64)
    for preset in PRESETS.values():
        assert preset.train_seconds is None  # no built-in preset is a time budget


@pytest.mark.slow
def test_the_same_preset_and_seed_give_the_same_numbers_under_load(tmp_path):
    """Acceptance of the budgets issue: `trilemma run dcgan --preset quick` twice, the second time
    with the CPU loaded by two other processes: identical quality and coverage."""
    env = cli_env(allow="dcgan")
    quiet = trilemma_cli("run", "dcgan", "--preset", "quick", "--out", str(tmp_path / "quiet"), "--no-progress",
                         env=env, timeout=3600, process=True)
    assert quiet.returncode == 0, quiet.stderr
    spinners = [subprocess.Popen([sys.executable, "-c", "while True:\n    sum(range(10000))\n"]) for _ in range(2)]
    try:
        loaded = trilemma_cli("run", "dcgan", "--preset", "quick", "--out", str(tmp_path / "loaded"), "--no-progress",
                              env=env, timeout=3600, process=True)
    finally:
        for process in spinners:
            process.kill()
    assert loaded.returncode == 0, loaded.stderr
    a = pd.read_csv(tmp_path / "quiet" / "results.csv").iloc[0]
    b = pd.read_csv(tmp_path / "loaded" / "results.csv").iloc[0]
    assert a["train_steps"] == b["train_steps"] and a["images_seen"] == b["images_seen"]
    for column in ("fid", "is_mean", "kid_mean", "precision", "recall", "modes_covered", "kl_to_test", "kl_to_uniform"):
        assert a[column] == b[column], column
    assert b["train_seconds"] > a["train_seconds"]  # the load was real: time is the cost that moved


def test_the_budget_and_the_evaluation_protocol_are_typed_objects_and_the_protocol_is_versioned(tmp_path):
    from trilemma.presets import EVAL_PROTOCOL_VERSION, PRESETS, EvalProtocol, TrainingBudget
    from trilemma.report_protocol import protocol_differences

    quick = PRESETS["quick"]
    assert isinstance(quick.budget, TrainingBudget) and isinstance(quick.evaluation, EvalProtocol)
    assert (quick.steps, quick.eval_samples) == (quick.budget.steps, quick.evaluation.eval_samples)
    changed = quick.with_budget({"train_steps": 7}, where="model 'x', ")
    assert changed.steps == 7 and changed.train_images is None and changed.evaluation == quick.evaluation
    with pytest.raises(TrilemmaError, match="eval_samples"):
        quick.with_budget({"eval_samples": 10})  # a model changes its budget, never the evaluation
    with pytest.raises(TrilemmaError, match="speed_batch_sizes is empty"):
        EvalProtocol(10, 10, (), 1, 10)
    with pytest.raises(TrilemmaError, match="needs one of train_images, train_steps or train_pflop"):
        TrainingBudget(train_images=10, train_steps=10, batch_size=1, checkpoint_every=1)
    first = {"evaluation_protocol": {"version": 1}}
    assert protocol_differences([first, {}]) == []  # a run from before versions is version 1
    assert EVAL_PROTOCOL_VERSION == 3  # 2: the counted draw (issue 22); 3: ms/sample at the draw's batch (27)
    assert protocol_differences([first, {"evaluation_protocol": {"version": EVAL_PROTOCOL_VERSION}}]) == [
        "evaluation_protocol.version: 1 vs 3"]
