"""Parallel cells on one machine (issue 27, item 2): `--jobs N` runs N cells at once in worker
processes, with the serial run's rows; a worker that dies fails only its own cell."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import cli_env, run_and_kill_first_worker, trilemma_cli
from test_dist import same_rows

from trilemma.executors import cells_at_once


def test_auto_runs_as_many_cells_as_the_cores_hold_at_the_cells_threads(monkeypatch):
    import trilemma.executors as executors

    monkeypatch.setattr(executors, "cores", lambda: 4)
    monkeypatch.setattr(executors, "memory_bytes", lambda: 64 * 2**30)
    assert cells_at_once("auto", 1, "cpu") == 4
    assert cells_at_once("auto", 2, "cpu") == 2
    assert cells_at_once("auto", 8, "cpu") == 1
    assert cells_at_once(3, 1, "cpu") == 3  # asked for: as asked (oversubscription is warned about)
    assert cells_at_once("auto", None, "cuda") == 1  # cells would share the one device
    monkeypatch.setattr(executors, "memory_bytes", lambda: 7 * 2**30)
    assert cells_at_once("auto", 1, "cpu") == 2  # and the memory holds


def test_a_cell_trains_with_its_own_threads_and_leaves_the_process_as_it_was(fake_registries, tmp_path):
    import torch

    from trilemma.plan import RunRequest
    from trilemma.runner import run

    seen = []
    model = fake_registries.models["tiny"]
    original = model.training_step

    def training_step(self, batch, step):
        seen.append(torch.get_num_threads())
        return original(self, batch, step)

    before = torch.get_num_threads()
    model.training_step = training_step
    try:
        run(RunRequest(models=["tiny"], preset="smoke", out_dir=tmp_path / "run", progress=False, threads=2),
            fake_registries)
    finally:
        model.training_step = original
    assert seen and set(seen) == {2}
    assert torch.get_num_threads() == before


def test_the_thread_count_is_part_of_a_cells_identity(fake_registries, tmp_path):
    from trilemma.errors import TrilemmaError
    from trilemma.plan import RunRequest
    from trilemma.runner import run

    out = tmp_path / "run"
    run(RunRequest(models=["tiny"], preset="smoke", out_dir=out, progress=False), fake_registries)
    with pytest.raises(TrilemmaError, match="threads"):
        run(RunRequest(models=["tiny"], preset="smoke", out_dir=out, progress=False, resume=True, threads=2),
            fake_registries)


@pytest.mark.slow
def test_parallel_cells_give_the_serial_rows_and_say_they_shared_the_machine(site, tmp_path):
    env = cli_env(site, allow="fakes")
    # three cells on two workers: one worker runs two cells in turn, as the serial run does
    args = ["run", "tiny", "tiny-k3", "tiny-steps", "--preset", "smoke", "--no-progress"]
    serial = trilemma_cli(*args, "--jobs", "1", "--out", str(tmp_path / "serial"), env=env, process=True)
    assert serial.returncode == 0, serial.stderr
    parallel = trilemma_cli(*args, "--jobs", "2", "--out", str(tmp_path / "parallel"), env=env, process=True)
    assert parallel.returncode == 0, parallel.stderr + parallel.stdout
    assert "2 at once" in parallel.stdout and "recorded (3/3 cells, 0 failed rows)" in parallel.stdout
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


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # exited; only its reaping is left


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_workers_stop_when_their_driver_is_killed(site, tmp_path):
    """A driver killed outright runs no clean-up; its workers must not train on (measured: two orphaned
    workers of a killed quick run trained on for 25 minutes beside the next run, five processes on two cores)."""
    pids = tmp_path / "pids"
    env = cli_env(site, allow="fakes,victim", TRILEMMA_TEST_PIDS=str(pids), PYTHONUNBUFFERED="1")
    workers: list[int] = []
    run = subprocess.Popen([sys.executable, "-m", "trilemma", "run", "victim", "tiny", "--preset", "smoke", "--steps", "500",
                            "--jobs", "2", "--out", str(tmp_path / "run"), "--no-progress"],
                           env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (pids.exists() and pids.read_text().strip()):
            time.sleep(0.2)
        workers = _children(run.pid)
        assert int(pids.read_text().split()[0]) in workers and len(workers) == 2
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        deadline = time.time() + 20
        while time.time() < deadline and not all(map(_gone, workers)):
            time.sleep(0.2)
        assert all(map(_gone, workers)), "workers train on after their driver was killed"
    finally:
        if run.poll() is None:
            run.kill()
        for pid in workers:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


def _children(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` (the driver's workers; multiprocessing's resource
    tracker is one too, and leaves with its pipe)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().split(")")[-1].split()
        except OSError:
            continue
        if int(fields[1]) == parent and "spawn_main" in Path(stat.parent, "cmdline").read_text(errors="replace"):
            found.append(int(stat.parent.name))
    return found
