"""Experiment trackers (`--log`): each cell logged as a run of its own, read back with the real
libraries (`tox -e trackers`); without them, or with a tracker that breaks, the run is unchanged."""

import importlib.util

import pandas as pd
import pytest

import trilemma
from trilemma.cli import main


@pytest.fixture
def recording(monkeypatch):
    """The fake models and a third party's tracker that records every cell it is handed, then breaks."""
    import fake_models

    import trilemma.plugins as plugins

    seen = []

    class Recording(trilemma.Tracker):
        name = "recording"

        def log_cell(self, record, options):
            seen.append(record)
            raise RuntimeError("the tracking server is down")

    class Plugin:
        @trilemma.hookimpl
        def register_trackers(self, register):
            register(Recording())

    real_collect = plugins.collect
    monkeypatch.setattr(plugins, "collect", lambda pm=None: real_collect(
        pm or plugins.get_plugin_manager({"fake-models": fake_models, "recording": Plugin()})))
    return seen


def test_a_tracker_that_breaks_never_fails_the_run_and_is_handed_every_cell(recording, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "tiny", "tiny-k3", "--preset", "smoke", "--no-progress", "--log", "recording",
                 "--out", str(out), "--curves", "0.5"]) == 0
    assert "tracker recording failed: RuntimeError: the tracking server is down" in capsys.readouterr().out
    assert (pd.read_csv(out / "results.csv")["status"] == "ok").all()
    assert sorted(record.model for record in recording) == ["tiny", "tiny-k3"]
    record = next(r for r in recording if r.model == "tiny")
    assert record.params["identity.threads"] == 1 and record.params["config.hidden"] == 8
    assert record.losses and record.losses[-1]["step"] == 3 and "loss" in record.losses[-1]
    assert record.rows[0]["sampler"] == "default" and record.grids["default"].exists()
    assert {point["step"] for point in record.curves} >= {3}


def test_unknown_or_uninstalled_trackers_are_refused_before_any_work(fake_registries, tmp_path, capsys, monkeypatch):
    assert main(["run", "tiny", "--preset", "smoke", "--log", "tensorbord", "--out", str(tmp_path / "a")]) == 2
    assert "unknown tracker(s) tensorbord (did you mean 'tensorboard'?)" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "tensorboard", None)  # as if not installed
    assert main(["run", "tiny", "--preset", "smoke", "--log", "tensorboard", "--out", str(tmp_path / "b")]) == 2
    assert "--log tensorboard needs tensorboard: pip install 'trilemma[tensorboard]'" in capsys.readouterr().err
    assert not (tmp_path / "b" / "results.csv").exists()


def _needs(module):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=f"{module} not installed (tox -e trackers)")


@pytest.mark.trackers
@_needs("tensorboard")
def test_tensorboard_gets_a_run_per_cell_with_losses_curves_rows_and_grids(fake_registries, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main(["run", "tiny", "--preset", "smoke", "--steps", "8", "--seeds", "2", "--curves", "0.5",
                 "--no-progress", "--log", "tensorboard", "--out", str(out)]) == 0
    rows = pd.read_csv(out / "results.csv")
    for seed in (0, 1):
        events = EventAccumulator(str(out / "tensorboard" / f"tiny-seed{seed}"), size_guidance={"images": 0})
        events.Reload()
        tags = events.Tags()
        assert [e.step for e in events.Scalars("train/loss")][-1] == 8
        fid = events.Scalars("default/fid")
        assert fid[0].step == 8
        assert fid[0].value == pytest.approx(rows[rows.seed == seed]["fid"].iloc[0], rel=1e-6)
        assert [e.step for e in events.Scalars("curve/default/fid")] == [4, 8]
        assert "samples/default" in tags["images"]


@pytest.mark.trackers
@_needs("mlflow")
def test_mlflow_gets_a_run_per_cell_in_a_local_file_store(fake_registries, tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "run"
    assert main(["run", "tiny", "tiny-k3", "--preset", "smoke", "--no-progress", "--log", "mlflow",
                 "--out", str(out)]) == 0
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("run")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"tiny seed 0", "tiny-k3 seed 0"}
    rows = pd.read_csv(out / "results.csv").set_index("model")
    run = runs["tiny seed 0"]
    assert run.data.params["identity.threads"] == "1"
    assert run.data.metrics["default_fid"] == pytest.approx(rows.loc["tiny", "fid"], rel=1e-6)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")][-1] == 3
    assert any(a.path.endswith(".png") for a in client.list_artifacts(run.info.run_id))


def test_the_documented_tracker_example_logs_every_row(tmp_path, monkeypatch):
    import json

    from test_contract import with_doc_example

    with_doc_example(monkeypatch, "register_trackers")
    out = tmp_path / "run"
    assert main(["run", "tiny", "tiny-k3", "--preset", "smoke", "--no-progress", "--log", "jsonl", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines()]
    rows = pd.read_csv(out / "results.csv")
    assert sorted(line["cell"] for line in lines) == ["tiny seed 0", "tiny-k3 seed 0"]
    assert sorted(line["fid"] for line in lines) == pytest.approx(sorted(rows["fid"]))
