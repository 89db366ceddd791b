"""Test helpers: writing plugin distributions that entry-point discovery finds."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: The fake models (tests/fake_models.py) as source, for tests that install them as a distribution.
FAKES_SOURCE = (REPO / "tests" / "fake_models.py").read_text()


def write_installed_plugin(site: Path, dist: str, entry_name: str, module: str, source: str, version: str = "0.0.1") -> None:
    """Write a module and its ``.dist-info`` (with a ``trilemma`` entry point) into ``site``."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[trilemma]\n{entry_name} = {module}\n")


def cli_env(site: Path | None = None, allow: str | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if allow is None:
        env.pop("TRILEMMA_LOAD_PLUGINS", None)
    else:
        env["TRILEMMA_LOAD_PLUGINS"] = allow
    env.update(extra)
    return env


def trilemma_cli(*args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 300,
                 process: bool = False) -> subprocess.CompletedProcess:
    """``trilemma ARGS`` under ``env`` (its ``PYTHONPATH`` entries, ``TRILEMMA_LOAD_PLUGINS``, ...).

    In this process by default, as pytest's ``runpytest_inprocess`` does: ``main()`` with the
    environment applied and output captured, and afterwards the environment, ``sys.path`` and the
    modules imported from the added paths put back, so the next call imports its plugins afresh.
    ``process=True`` starts ``python -m trilemma`` instead, where a process boundary is the point
    (workers of another executor, a kill, a lock held by another process)."""
    if process:
        return subprocess.run([sys.executable, "-m", "trilemma", *args], env=env, cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)
    return _in_process(list(args), env, cwd)


def _in_process(args: list[str], env: dict[str, str], cwd: Path | None) -> subprocess.CompletedProcess:
    import contextlib
    import importlib
    import io
    import traceback

    from trilemma.cli import main

    saved_env, saved_path, saved_cwd = dict(os.environ), list(sys.path), os.getcwd()
    added = [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry and entry not in sys.path]
    before = set(sys.modules)
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.clear()
        os.environ.update(env)
        sys.path[:0] = added
        importlib.invalidate_caches()
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(args)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # what would have been a traceback and exit 1
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.path[:] = saved_path
        roots = [str(Path(entry).resolve()) for entry in added]
        for name in set(sys.modules) - before:
            where = getattr(sys.modules[name], "__file__", None) or ""
            if any(str(Path(where).resolve()).startswith(root) for root in roots if where):
                del sys.modules[name]
        importlib.invalidate_caches()
    return subprocess.CompletedProcess(["trilemma", *args], code, out.getvalue(), err.getvalue())


def print_benchmark_table(benchmark, capsys, summary_rows) -> list[str]:
    """The summary table of a benchmark module, printed past pytest's capture; timed itself only so that
    ``--benchmark-only`` runs it."""
    rows = benchmark.pedantic(summary_rows, rounds=1)
    with capsys.disabled():
        print("\n" + "\n".join(rows))
    return rows


def run_and_kill_first_worker(args: list[str], env: dict[str, str], pids: Path, cwd: Path,
                              timeout: float = 900) -> tuple[int, str, int]:
    """``trilemma ARGS`` in a process; SIGKILL the first worker that writes its pid to ``pids`` (the
    victim model does, each training step). Returns (exit code, output, the killed pid)."""
    import signal
    import time

    run = subprocess.Popen([sys.executable, "-m", "trilemma", *args], env=env, cwd=cwd,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (pids.exists() and pids.read_text().strip()):
            time.sleep(0.2)
        victim = int(pids.read_text().split()[0])
        os.kill(victim, signal.SIGKILL)
        output, _ = run.communicate(timeout=timeout)
    finally:
        if run.poll() is None:
            run.kill()
    return run.returncode, output, victim


# A model that says which process trains it, so a test can kill that worker mid-cell.
VICTIM_SOURCE = textwrap.dedent('''
    import os, time
    import trilemma
    from trilemma_fakes import Tiny

    class Victim(Tiny):
        name = "victim"

        def training_step(self, batch, step):
            with open(os.environ["TRILEMMA_TEST_PIDS"], "a") as f:
                f.write(f"{os.getpid()}\\n")
            time.sleep(0.4)
            return super().training_step(batch, step)

    @trilemma.hookimpl
    def register_models(register):
        register(Victim)
''')
