"""The plugin contract: every hook documented, the docs' examples real, hooks called through pluggy."""

import inspect
import re
import subprocess
import sys
import types

import pandas as pd
import pytest
from helpers import REPO, cli_env, trilemma_cli, write_installed_plugin

import trilemma
from trilemma import hookspecs
from trilemma.cli import main
from trilemma.plugins import collect, get_plugin_manager

HOOKS_DOC = REPO / "docs" / "plugin-hooks.md"
TUTORIAL_DOC = REPO / "docs" / "writing-a-plugin.md"
EXAMPLE = REPO / "examples" / "trilemma-mymodel"


def hookspec_names() -> list[str]:
    return [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
            if hasattr(fn, f"{hookspecs.PROJECT}_spec")]


def doc_sections(text: str) -> dict[str, str]:
    """``## heading`` → the text under it."""
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_every_hookspec_is_documented_with_arguments_return_when_and_an_example():
    sections = doc_sections(HOOKS_DOC.read_text())
    names = hookspec_names()
    assert {"register_models", "register_metrics", "register_datasets", "register_executors",
            "register_trackers"} <= set(names)
    for name in names:
        section = sections.get(f"{name}(register)")
        assert section is not None, f"hookspec {name} has no '## {name}(register)' section in {HOOKS_DOC.name}"
        for part in ("Arguments:", "Returns:", "Called:"):
            assert part in section, f"{name}: the section says nothing under {part!r}"
        assert python_blocks(section), f"{name}: the section has no example"
        assert f"def {name}(" in python_blocks(section)[0], f"{name}: the example does not implement the hook"


def test_a_hookspec_without_documentation_is_caught(monkeypatch):
    @hookspecs.hookspec
    def register_widgets(register):
        """An undocumented hook."""

    monkeypatch.setattr(hookspecs, "register_widgets", register_widgets, raising=False)
    with pytest.raises(AssertionError, match="register_widgets has no"):
        test_every_hookspec_is_documented_with_arguments_return_when_and_an_example()


def test_the_hook_examples_register_what_they_say(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    sections = doc_sections(HOOKS_DOC.read_text())
    plugins = {}
    for name in hookspec_names():
        module = types.ModuleType(f"doc_example_{name}")
        exec(compile(python_blocks(sections[f"{name}(register)"])[0], module.__name__, "exec"), module.__dict__)
        plugins[module.__name__] = module
    registries = collect(get_plugin_manager(plugins))
    assert not registries.broken
    assert "mnist-again" in registries.datasets
    assert "brightness" in registries.metrics
    assert {"mymodel", "mymodel-again"} <= set(registries.models.names())
    assert "reversed" in registries.executors
    assert "jsonl" in registries.trackers


def with_doc_example(monkeypatch, hook: str) -> None:
    """Collect the fake models and the example of ``hook`` in plugin-hooks.md, as an installed plugin would be."""
    sections = doc_sections(HOOKS_DOC.read_text())
    module = types.ModuleType(f"doc_{hook}")
    exec(python_blocks(sections[f"{hook}(register)"])[0], module.__dict__)
    import fake_models

    import trilemma.plugins as plugins

    monkeypatch.setattr(plugins, "collect", lambda pm=None: collect(
        pm or get_plugin_manager({"fake-models": fake_models, f"doc-{hook}": module})))


def test_the_metric_example_fills_its_column_in_a_run(tmp_path, monkeypatch):
    """The example must work, not only register: a run's rows carry its column, its flag reaches it."""
    with_doc_example(monkeypatch, "register_metrics")
    assert main(["run", "tiny", "--preset", "smoke", "--no-progress", "--out", str(tmp_path / "a")]) == 0
    assert main(["run", "tiny", "--preset", "smoke", "--no-progress", "--out", str(tmp_path / "b"),
                 "--brightness-scale", "2"]) == 0
    a, b = (pd.read_csv(tmp_path / name / "results.csv").iloc[0] for name in ("a", "b"))
    assert a["status"] == "ok" and 0 < a["mean_brightness"] < 1
    assert b["mean_brightness"] == pytest.approx(2 * a["mean_brightness"])
    assert "brightness" in (tmp_path / "a" / "report.md").read_text()


def test_the_tutorial_shows_the_example_package_verbatim():
    text = TUTORIAL_DOC.read_text()
    shown = re.findall(r"<!-- example: (\S+) -->\n```\w+\n(.*?)```", text, flags=re.DOTALL)
    assert {path for path, _ in shown} >= {"examples/trilemma-mymodel/pyproject.toml",
                                           "examples/trilemma-mymodel/trilemma_mymodel.py",
                                           "examples/trilemma-mymodel/tests/test_mymodel.py"}
    for path, code in shown:
        assert code == (REPO / path).read_text(), f"{TUTORIAL_DOC.name} shows an outdated copy of {path}"


def test_the_tutorial_package_installs_passes_its_tests_and_runs(tmp_path):
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps",
                              "--target", str(site), str(EXAMPLE)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    env = cli_env(site)
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    listed = trilemma_cli("list", env=env)
    assert any(line.split()[:3] == ["mymodel", "trilemma-mymodel", "0.1.0"] for line in listed.stdout.splitlines())
    out = tmp_path / "run"
    ran = trilemma_cli("run", "mymodel", "--preset", "smoke", "--out", str(out), "--no-progress", env=env)
    assert ran.returncode == 0, ran.stderr + ran.stdout
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert row["status"] == "ok" and row["nfe"] == 1 and row["train_steps"] == 3


def test_hooks_go_through_pluggy_wrappers_and_tracing_one_plugin_at_a_time():
    import fake_models

    seen = []

    class Wrapped(fake_models.Tiny):
        name = "tiny-wrapped"

    class Wrapping:
        @trilemma.hookimpl(hookwrapper=True)
        def register_models(self, register):
            seen.append("before")
            register(Wrapped)
            outcome = yield
            seen.append(("after", outcome.get_result()))

    pm = get_plugin_manager({"fakes": fake_models, "wrapping": Wrapping()})
    traced = []
    pm.trace.root.setwriter(traced.append)
    pm.enable_tracing()
    registries = collect(pm)
    # The wrapper ran around its own plugin's call only: once, with no other plugin's results inside.
    assert seen == ["before", ("after", [])]
    assert not registries.broken
    assert registries.models.provider("tiny-wrapped").plugin == "wrapping"
    assert registries.models.provider("tiny").plugin == "fakes"
    assert any("register_models" in line for line in traced)


def test_a_third_party_executor_runs_the_same_rows(tmp_path, monkeypatch):
    with_doc_example(monkeypatch, "register_executors")
    args = ["tiny", "tiny-k3", "--preset", "smoke", "--no-progress"]
    assert main(["run", *args, "--out", str(tmp_path / "local")]) == 0
    assert main(["run", *args, "--out", str(tmp_path / "reversed"), "--executor", "reversed"]) == 0
    local = pd.read_csv(tmp_path / "local" / "results.csv").set_index("model")
    other = pd.read_csv(tmp_path / "reversed" / "results.csv").set_index("model")
    for column in ("fid", "nfe", "modes_covered", "train_steps", "params"):
        assert (local[column] == other.loc[local.index, column]).all(), column
    assert main(["run", *args, "--out", str(tmp_path / "x"), "--executor", "nope"]) == 2


def test_public_types_are_exported_with_type_hints():
    for name in ("GenerativeModel", "ModelConfig", "Metric", "EvalContext", "Dataset", "Split", "Executor", "Job",
                 "Cell", "CellOutcome", "ExecutionSettings", "Setting", "Preset", "Samples", "hookimpl"):
        assert name in trilemma.__all__ and hasattr(trilemma, name), name
    for function in (trilemma.GenerativeModel.sample, trilemma.GenerativeModel.training_step,
                     trilemma.Metric.compute, trilemma.Executor.run):
        hints = function.__annotations__
        assert "return" in hints and len(hints) >= 2, function.__qualname__


def test_list_shows_executors(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "executors:" in out and "local" in out.split("executors:")[1]



def test_a_missing_engine_is_one_line_and_exit_2_before_any_work(tmp_path):
    fake = tmp_path / "fake-site"
    for module in ("ray", "submitit"):
        (fake / module).mkdir(parents=True)
        (fake / module / "__init__.py").write_text(f"raise ImportError('no {module} here')\n")
    write_installed_plugin(fake, "trilemma-fakes", "fakes", "trilemma_fakes", (REPO / "tests" / "fake_models.py").read_text())
    env = cli_env(fake, allow="fakes")
    for executor, package in (("ray", "trilemma[ray]"), ("slurm", "trilemma[slurm]")):
        out = tmp_path / executor
        result = trilemma_cli("run", "tiny", "--executor", executor, "--out", str(out), env=env)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.count("\n") == 1 and package in result.stderr
        assert not out.exists()
