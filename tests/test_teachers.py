"""Cells that depend on cells (issue 26, item 1): a student declares a teacher; the teacher's cell
trains first (or is reused by identity), the student receives it trained and frozen, a failed
teacher fails its students with a clear error and the rest of the run goes on, and a student's
row shows its teacher's cost beside its own. Written as a stranger's plugin would be."""

from __future__ import annotations

import math
import sys
import textwrap
import types

import pandas as pd
import pytest
import torch
from helpers import FAKES_SOURCE, cli_env, trilemma_cli, write_installed_plugin

from trilemma.errors import TrilemmaError
from trilemma.plan import RunRequest, plan_run
from trilemma.runner import run

STUDENTS_SOURCE = textwrap.dedent('''
    """A stranger's students of the fake ``tiny`` model: each regresses its teacher's samples."""
    import os
    from dataclasses import dataclass

    import torch
    import torch.nn.functional as F
    from torch import nn

    import trilemma


    @dataclass
    class StudentConfig(trilemma.ModelConfig):
        hidden: int = 8
        teacher: str = "tiny"


    class Student(trilemma.GenerativeModel):
        name = "student"
        Config = StudentConfig

        def __init__(self, config=None, channels=1):
            super().__init__(config, channels)
            self.net = nn.Linear(4, 784 * channels)

        def configure_optimizers(self):
            return {"adam": torch.optim.Adam(self.net.parameters(), lr=1e-2)}

        def training_step(self, batch, step):
            teacher = self.teacher_model
            assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
            record = os.environ.get("STUDENT_RECORD")
            if record and step == 0:
                total = sum(float(v.double().sum()) for v in teacher.state_dict().values())
                with open(record, "a") as f:
                    f.write(f"{self.name} {total!r}\\n")
            with torch.no_grad():
                target = teacher.sample(len(batch))
            z = torch.randn(len(batch), 4, device=batch.device)
            loss = F.mse_loss(torch.sigmoid(self.net(z)).view_as(target), target)
            self.optimizers["adam"].zero_grad()
            loss.backward()
            self.optimizers["adam"].step()
            return {"loss": loss}

        def sample(self, n, generator=None):
            z = torch.randn(n, 4, generator=generator, device=self.device)
            return torch.sigmoid(self.net(z)).view(n, self.channels, 28, 28)

        def sampling_networks(self):
            return [self.net]


    class GrandStudent(Student):
        """Learns from a student: a chain of two teachers."""
        name = "grand-student"

        @dataclass
        class Config(StudentConfig):
            teacher: str = "student"


    class WideStudent(Student):
        """Learns from a variant of tiny that only it asks for."""
        name = "wide-student"
        teacher_config = {"hidden": 16}


    class PeekingStudent(Student):
        """Samples with its teacher's help, which would hide the teacher's work from its row."""
        name = "peeking-student"

        def sample(self, n, generator=None):
            return self.teacher_model.sample(n, generator)


    class Ouroboros(Student):
        name = "ouroboros"

        @dataclass
        class Config(StudentConfig):
            teacher: str = "ouroboros"


    @trilemma.hookimpl
    def register_models(register):
        for cls in (Student, GrandStudent, WideStudent, PeekingStudent, Ouroboros):
            register(cls)
''')


@pytest.fixture
def registries(monkeypatch):
    """The fake models and the students, registered in this process (the CLI sees them too)."""
    import fake_models

    import trilemma.plugins as plugins

    students = types.ModuleType("trilemma_students")
    monkeypatch.setitem(sys.modules, "trilemma_students", students)
    exec(compile(STUDENTS_SOURCE, "trilemma_students.py", "exec"), students.__dict__)
    real_collect = plugins.collect

    def collect(pm=None):
        return real_collect(pm or plugins.get_plugin_manager({"fake-models": fake_models,
                                                              "trilemma-students": students}))

    monkeypatch.setattr(plugins, "collect", collect)
    return collect()

def request(tmp_path, *models, **kwargs):
    return RunRequest(models=list(models), preset="smoke", out_dir=tmp_path / "run", progress=False, **kwargs)


def checkpoint_total(path) -> float:
    state = torch.load(path, weights_only=True)
    return sum(float(v.double().sum()) for v in state["model"].values())


def test_a_students_teacher_is_planned_first_and_is_part_of_its_identity(registries, tmp_path):
    plan = plan_run(request(tmp_path, "grand-student"), registries)
    assert [cell.row_model for cell in plan.cells] == ["tiny", "student", "grand-student"]
    grand = plan.cells[-1]
    assert grand.teacher.row_model == "student" and grand.teacher.teacher.row_model == "tiny"
    assert grand.identity["teacher"] == grand.teacher.identity_hash
    assert "teacher" not in plan.cells[0].identity  # a model without a teacher keeps its identity
    # The run's own cell of the teacher is the one learned from: --set on it changes the student too.
    changed = plan_run(request(tmp_path, "student", "tiny", overrides={"tiny": {"hidden": "16"}}), registries)
    student = next(cell for cell in changed.cells if cell.model == "student")
    assert student.teacher.config["hidden"] == 16
    assert student.identity_hash != next(c for c in plan.cells if c.model == "student").identity_hash


def test_a_teacher_config_makes_the_teacher_a_variant_that_a_sweep_of_the_run_shares(registries, tmp_path):
    plan = plan_run(request(tmp_path, "wide-student", "tiny"), registries)
    assert [cell.row_model for cell in plan.cells] == ["tiny[hidden=16]", "wide-student", "tiny"]
    teacher = plan.cells[1].teacher
    assert teacher.variant == "hidden=16" and teacher.config["hidden"] == 16
    swept = plan_run(request(tmp_path, "wide-student", "tiny", sweeps={"tiny": {"hidden": ["8", "16"]}}), registries)
    assert [cell.row_model for cell in swept.cells] == ["tiny[hidden=16]", "wide-student", "tiny[hidden=8]"]
    assert swept.cells[1].teacher == swept.cells[0]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"student": {"teacher": "tinny"}}, r"learns from 'tinny', which is not installed \(did you mean 'tiny'\?\)"),
    ({"student": {"teacher": "student"}}, "form a cycle"),
])
def test_a_teacher_that_cannot_be_is_refused_before_any_work(registries, tmp_path, overrides, message):
    with pytest.raises(TrilemmaError, match=message):
        plan_run(request(tmp_path, "student", overrides=overrides), registries)
    with pytest.raises(TrilemmaError, match="cycle"):
        plan_run(request(tmp_path, "ouroboros"), registries)
    assert not (tmp_path / "run").exists()


def test_the_student_learns_from_its_trained_teacher_and_shows_its_cost(registries, tmp_path, monkeypatch):
    record = tmp_path / "record.txt"
    monkeypatch.setenv("STUDENT_RECORD", str(record))
    assert run(request(tmp_path, "grand-student"), registries, log=lambda _: None) == 0
    rows = pd.read_csv(tmp_path / "run" / "results.csv").set_index("model")
    assert list(rows.index) == ["tiny", "student", "grand-student"]
    checkpoints = tmp_path / "run" / "checkpoints"
    seen = dict(line.split() for line in record.read_text().splitlines())
    # each student saw its teacher's trained weights (those of the teacher's finished checkpoint)
    assert float(seen["student"]) == pytest.approx(checkpoint_total(checkpoints / "tiny-seed0.pt"), rel=1e-9)
    assert float(seen["grand-student"]) == pytest.approx(checkpoint_total(checkpoints / "student-seed0.pt"), rel=1e-9)
    # ... and its weights never joined the student's checkpoint
    state = torch.load(checkpoints / "student-seed0.pt", weights_only=True)
    assert set(state["model"]) == {"net.weight", "net.bias"}
    assert rows.loc["student", "teacher"] == "tiny" and rows.loc["grand-student", "teacher"] == "student"
    assert pd.isna(rows.loc["tiny", "teacher"])
    assert rows.loc["student", "teacher_train_pflop"] == pytest.approx(rows.loc["tiny", "train_pflop"])
    assert rows.loc["grand-student", "teacher_train_pflop"] == pytest.approx(
        rows.loc["tiny", "train_pflop"] + rows.loc["student", "train_pflop"])
    for model in rows.index:
        assert rows.loc[model, "total_train_pflop"] == pytest.approx(
            rows.loc[model, "train_pflop"] + (0 if model == "tiny" else rows.loc[model, "teacher_train_pflop"]))
    # The student's own training includes its calls of the teacher (sampling it for targets): its own
    # linear layer costs 2 × 2·B·4·784 FLOPs a step (forward, and the weights' gradient: its input
    # needs none), the teacher's forward 2·B·(4·8 + 8·784) more.
    batch = rows.loc["student", "images_seen"] / rows.loc["student", "train_steps"]
    own, teacher_calls = 2 * 2 * batch * 4 * 784, 2 * batch * (4 * 8 + 8 * 784)
    assert rows.loc["student", "train_gflop_per_step"] * 1e9 == pytest.approx(own + teacher_calls, rel=0.05)
    manifest = (tmp_path / "run" / "manifest.json").read_text()
    assert '"teacher": "tiny"' in manifest


def test_a_failed_teacher_fails_its_students_with_the_reason_and_the_rest_goes_on(registries, tmp_path):
    out = tmp_path / "run"
    failed = run(RunRequest(models=["tiny", "student", "tiny-steps"], preset="smoke", out_dir=out, progress=False,
                            overrides={"tiny": {"fail_at_step": "1"}}), registries, log=lambda _: None)
    rows = pd.read_csv(out / "results.csv").set_index("model")
    assert failed == 2
    assert rows.loc["tiny", "status"] == "failed" and (rows.loc["tiny-steps", "status"] == "ok").all()
    assert rows.loc["student", "status"] == "failed"
    assert "its teacher tiny seed 0 has no finished checkpoint" in rows.loc["student", "error"]


def test_a_student_samples_without_its_teacher(registries, tmp_path):
    """The teacher is there in training only: a student that would sample through it (its teacher's
    network calls and time would be in its row, uncounted) fails its rows instead."""
    run(request(tmp_path, "peeking-student", curves=(0.5,)), registries, log=lambda _: None)
    rows = pd.read_csv(tmp_path / "run" / "results.csv").set_index("model")
    assert rows.loc["tiny", "status"] == "ok"
    assert rows.loc["peeking-student", "status"] == "failed"
    assert "no teacher attached" in rows.loc["peeking-student", "error"]


def test_resume_reuses_a_finished_teacher_by_identity_and_eval_rebuilds_the_graph(registries, tmp_path):
    out = tmp_path / "run"
    assert run(request(tmp_path, "tiny"), registries, log=lambda _: None) == 0
    teacher_checkpoint = out / "checkpoints" / "tiny-seed0.pt"
    trained = teacher_checkpoint.stat().st_mtime_ns
    lines: list[str] = []
    assert run(request(tmp_path, "student", resume=True), registries, log=lines.append) == 0
    assert any("tiny seed 0: already finished, skipped" in line for line in lines)
    assert teacher_checkpoint.stat().st_mtime_ns == trained  # reused, not retrained
    rows = pd.read_csv(out / "results.csv").set_index("model")
    assert rows.loc["student", "status"] == "ok" and rows.loc["student", "teacher_train_pflop"] > 0

    from trilemma.cli import main

    assert main(["eval", str(out), "student", "--no-progress"]) == 0
    evaluated = pd.read_csv(out / "results.csv").set_index("model")
    assert evaluated.loc["student", "status"] == "ok"
    assert evaluated.loc["student", "teacher_train_pflop"] == pytest.approx(rows.loc["student", "teacher_train_pflop"])


@pytest.mark.slow
def test_worker_processes_start_a_student_only_after_its_teacher(tmp_path):
    site = tmp_path / "site"
    write_installed_plugin(site, "trilemma-fakes", "fakes", "trilemma_fakes", FAKES_SOURCE)
    write_installed_plugin(site, "trilemma-students", "students", "trilemma_students", STUDENTS_SOURCE)
    env = cli_env(site, allow="fakes,students")
    out = tmp_path / "run"
    result = trilemma_cli("run", "grand-student", "tiny-steps", "--preset", "smoke", "--jobs", "2", "--out", str(out),
                          "--no-progress", env=env, process=True)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = pd.read_csv(out / "results.csv").set_index("model")
    assert (rows["status"] == "ok").all()
    order = [line.split(":")[0] for line in result.stdout.splitlines() if ": recorded (" in line]
    assert order.index("tiny seed 0") < order.index("student seed 0") < order.index("grand-student seed 0")
    assert not math.isnan(rows.loc["grand-student", "teacher_train_pflop"])
