"""Parallel cells on one machine (issue 27, item 2): `--jobs N` runs N cells at once in worker
processes, with the serial run's rows; a worker that dies fails only its own cell."""

import pandas as pd
import pytest
from helpers import cli_env, run_and_kill_first_worker, trilemma_cli
from test_dist import same_rows

from trilemma.executors import jobs_and_threads


def test_jobs_divide_the_threads_and_auto_follows_the_cores(monkeypatch):
    import trilemma.executors as executors

    monkeypatch.setattr(executors, "cores", lambda: 4)
    assert jobs_and_threads(1, 4, "cpu") == (1, 4)
    assert jobs_and_threads(2, 4, "cpu") == (2, 2)
    assert jobs_and_threads("auto", 4, "cpu") == (4, 1)
    assert jobs_and_threads(9, 4, "cpu") == (4, 1)  # never more cells than cores
    assert jobs_and_threads("auto", 4, "cuda") == (1, 4)


@pytest.mark.slow
def test_parallel_cells_give_the_serial_rows_and_say_they_shared_the_machine(site, tmp_path):
    env = cli_env(site, allow="fakes")
    args = ["run", "tiny", "tiny-k3", "--preset", "smoke", "--no-progress"]
    serial = trilemma_cli(*args, "--out", str(tmp_path / "serial"), env=env, process=True)
    assert serial.returncode == 0, serial.stderr
    parallel = trilemma_cli(*args, "--jobs", "2", "--out", str(tmp_path / "parallel"), env=env, process=True)
    assert parallel.returncode == 0, parallel.stderr + parallel.stdout
    assert "2 at once" in parallel.stdout and "recorded (2/2 cells, 0 failed rows)" in parallel.stdout
    same_rows(tmp_path / "serial" / "results.csv", tmp_path / "parallel" / "results.csv")
    rows = pd.read_csv(tmp_path / "parallel" / "results.csv")
    assert (rows["parallel_cells"] == 2).all()
    assert "cells ran at once" in (tmp_path / "parallel" / "report.md").read_text()


@pytest.mark.slow
def test_a_killed_worker_fails_its_own_cell_and_the_others_finish(site, tmp_path):
    pids = tmp_path / "pids"
    env = cli_env(site, allow="fakes,victim", TRILEMMA_TEST_PIDS=str(pids), PYTHONUNBUFFERED="1")
    out = tmp_path / "run"
    code, output, _ = run_and_kill_first_worker(
        ["run", "victim", "tiny", "--preset", "smoke", "--steps", "40", "--jobs", "2", "--out", str(out),
         "--no-progress"], env, pids, tmp_path, timeout=600)
    assert code == 1, output  # a failed row
    rows = pd.read_csv(out / "results.csv").set_index("model")
    assert rows.loc["tiny", "status"] == "ok"
    assert rows.loc["victim", "status"] == "failed" and "exited with code -9" in rows.loc["victim", "error"]
