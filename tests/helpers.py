"""Test helpers: writing plugin distributions that entry-point discovery finds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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


def trilemma_cli(*args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trilemma", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
