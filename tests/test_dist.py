"""Executors on a real local Ray instance and submitit's local executor (``tox -e dist``): the same
rows as a local run, a killed worker's cell retried, resume after the driver dies."""

import re
import subprocess
import sys
import time

import pandas as pd
import pytest
from helpers import cli_env, run_and_kill_first_worker, trilemma_cli

# Columns that depend on time (speed_timed_on: which timing gave ms/sample depends on how long a batch took).
TIMING = {"ms_per_sample", "samples_per_s", "latency_ms_batch1", "train_seconds", "train_images_per_s", "train_gflops",
          "utilisation", "compile_seconds", "peak_gflops", "sample_gflops", "parallel_cells",
          "speed_timed_on", "teacher_train_seconds", "total_train_seconds"}


def same_rows(a, b):
    a = pd.read_csv(a).set_index(["model", "sampler", "seed"]).sort_index()
    b = pd.read_csv(b).set_index(["model", "sampler", "seed"]).sort_index()
    assert list(a.index) == list(b.index)
    for column in a.columns:
        if column in TIMING or column.startswith(("ms_per_sample_", "latency_ms", "seconds_")):
            continue
        left, right = a[column], b[column]
        if pd.api.types.is_numeric_dtype(left):
            assert ((left == right) | (left.isna() & right.isna())).all(), column
        else:
            assert (left.fillna("") == right.fillna("")).all(), column


@pytest.mark.dist
@pytest.mark.parametrize("executor", [["--executor", "ray"], ["--executor", "slurm", "--slurm-cluster", "local"]])
def test_the_same_cells_give_the_same_rows_on_any_executor(site, tmp_path, executor):
    pytest.importorskip("ray" if "ray" in executor else "submitit")
    env = cli_env(site, allow="fakes")
    args = ["run", "tiny", "tiny-k3", "--preset", "smoke", "--seeds", "2", "--no-progress"]
    local = trilemma_cli(*args, "--out", str(tmp_path / "local"), env=env, process=True)
    assert local.returncode == 0, local.stderr
    remote = trilemma_cli(*args, *executor, "--out", str(tmp_path / "remote"), env=env, timeout=900, process=True)
    assert remote.returncode == 0, remote.stderr + remote.stdout
    same_rows(tmp_path / "local" / "results.csv", tmp_path / "remote" / "results.csv")
    assert "recorded (4/4 cells, 0 failed rows)" in remote.stdout
    # Piped output is plain: every cell's own lines, printed by the driver, with no engine's colour
    # codes or "(pid=…)" prefixes.
    for model in ("tiny", "tiny-k3"):
        for seed in (0, 1):
            assert re.search(rf"^{model}/\S+ seed {seed}: ", remote.stdout, re.MULTILINE), (model, seed, remote.stdout)
    assert "\x1b[" not in remote.stdout and "pid=" not in remote.stdout
    assert "Token authentication" not in remote.stdout  # Ray's security notice goes to stderr, left there


@pytest.mark.dist
def test_a_ray_worker_killed_mid_cell_is_retried_and_every_row_arrives(site, tmp_path):
    pytest.importorskip("ray")
    pids = tmp_path / "pids"
    env = cli_env(site, allow="fakes,victim", TRILEMMA_TEST_PIDS=str(pids), PYTHONUNBUFFERED="1")
    out = tmp_path / "run"
    code, output, victim = run_and_kill_first_worker(
        ["run", "victim", "tiny", "--preset", "smoke", "--steps", "8", "--executor", "ray", "--out", str(out),
         "--no-progress"], env, pids, tmp_path)
    assert code == 0, output
    rows = pd.read_csv(out / "results.csv").set_index("model")
    assert set(rows.index) == {"victim", "tiny"} and (rows["status"] == "ok").all()
    assert rows.loc["victim", "train_steps"] == 8
    workers = {int(p) for p in pids.read_text().split()}
    assert len(workers) >= 2 and victim in workers  # the cell ran again in another worker


@pytest.mark.dist
def test_resume_after_the_driver_is_killed_finishes_only_what_is_missing(site, tmp_path):
    """The driver is killed (SIGKILL) after one cell's row landed and while another cell trains; the same
    command with --resume skips the finished cell and runs only the missing one."""
    pytest.importorskip("submitit")
    pids = tmp_path / "pids"
    env = cli_env(site, allow="fakes,victim", TRILEMMA_TEST_PIDS=str(pids), PYTHONUNBUFFERED="1")
    out = tmp_path / "run"
    args = ["run", "tiny", "victim", "--preset", "smoke", "--steps", "8", "--executor", "slurm", "--slurm-cluster",
            "local", "--out", str(out), "--no-progress"]
    driver = subprocess.Popen([sys.executable, "-m", "trilemma", *args], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.csv"
    try:
        deadline = time.time() + 600
        while time.time() < deadline and not (results.exists() and "tiny," in results.read_text()
                                              and pids.exists() and pids.read_text().strip()):
            time.sleep(0.1)
        assert driver.poll() is None, "the driver finished before it could be killed"
        driver.kill()
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    before = pd.read_csv(results)
    assert set(before["model"]) == {"tiny"}  # the victim's row never landed
    resumed = trilemma_cli(*args, "--resume", env=env, timeout=900, process=True)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert "tiny seed 0: already finished, skipped (--resume)" in resumed.stdout
    assert "recorded (1/1 cells" in resumed.stdout
    rows = pd.read_csv(results)
    assert sorted(rows["model"]) == ["tiny", "victim"] and (rows["status"] == "ok").all()
    assert rows.set_index("model").loc["victim", "train_steps"] == 8


@pytest.mark.dist
@pytest.mark.parametrize("executor", [["--executor", "ray"], ["--executor", "slurm", "--slurm-cluster", "local"]])
def test_a_student_runs_after_its_teacher_on_any_executor_with_the_local_rows(tmp_path, executor):
    """The graph on an engine: the student's task (Ray: a dependency on the teacher's; Slurm: submitted
    when the teacher's job finished) reads its teacher's finished checkpoint; started at the same time
    it would find none and fail."""
    pytest.importorskip("ray" if "ray" in executor else "submitit")
    from helpers import FAKES_SOURCE, write_installed_plugin
    from test_teachers import STUDENTS_SOURCE

    site = tmp_path / "site"
    write_installed_plugin(site, "trilemma-fakes", "fakes", "trilemma_fakes", FAKES_SOURCE)
    write_installed_plugin(site, "trilemma-students", "students", "trilemma_students", STUDENTS_SOURCE)
    env = cli_env(site, allow="fakes,students")
    args = ["run", "grand-student", "tiny-k3", "--preset", "smoke", "--no-progress"]
    local = trilemma_cli(*args, "--jobs", "1", "--out", str(tmp_path / "local"), env=env, process=True)
    assert local.returncode == 0, local.stderr
    remote = trilemma_cli(*args, *executor, "--out", str(tmp_path / "remote"), env=env, timeout=900, process=True)
    assert remote.returncode == 0, remote.stderr + remote.stdout
    same_rows(tmp_path / "local" / "results.csv", tmp_path / "remote" / "results.csv")
    order = [line.split(":")[0] for line in remote.stdout.splitlines() if ": recorded (" in line]
    assert order.index("tiny seed 0") < order.index("student seed 0") < order.index("grand-student seed 0")
