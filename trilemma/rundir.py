"""The run directory: every path and file format of a run lives here, nowhere else.

```
<run>/results.csv            one row per (model, sampler, seed)
<run>/manifest.json          versions, device, protocol, configs, commands
<run>/report.md, report.html the rendered report
<run>/checkpoints/<model>-seed<seed>.pt
<run>/samples/<model>-<sampler>-seed<seed>.png
<run>/plots/<name>.png
```
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from trilemma.errors import TrilemmaError
from trilemma.results import ResultsTable, ordered_columns

RESULTS_NAME, MANIFEST_NAME = "results.csv", "manifest.json"
REPORT_MD, REPORT_HTML = "report.md", "report.html"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_results_csv(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"error": object, "status": object})
    if "error" in frame:
        frame["error"] = frame["error"].fillna("")
    return frame


class RunDirectory:
    """One run's directory and the files in it."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.root)!r})"

    # --- paths ----------------------------------------------------------------------------
    @property
    def results_path(self) -> Path:
        return self.root / RESULTS_NAME

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def report_md(self) -> Path:
        return self.root / REPORT_MD

    @property
    def report_html(self) -> Path:
        return self.root / REPORT_HTML

    @property
    def plots_dir(self) -> Path:
        return self.root / "plots"

    def plot(self, name: str) -> Path:
        return self.plots_dir / f"{name}.png"

    def checkpoint(self, model: str, seed: int) -> Path:
        return self.root / "checkpoints" / f"{model}-seed{seed}.pt"

    def sample_grid(self, model: str, sampler: str, seed: int) -> Path:
        return self.root / "samples" / f"{model}-{sampler}-seed{seed}.png"

    def sample_grids(self, model: str, sampler: str) -> list[Path]:
        """The sample grids of (model, sampler), every seed, sorted."""
        return sorted((self.root / "samples").glob(f"{model}-{sampler}-seed*.png"))

    def file(self, name: str) -> Path:
        """Another file at the top of the run directory (``summary.csv``, ``comparison.csv``)."""
        return self.root / name

    # --- files ----------------------------------------------------------------------------
    def ensure_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise TrilemmaError(f"cannot write to --out {self.root}: {exc.strerror or exc}") from exc

    def has_results(self) -> bool:
        return self.results_path.exists()

    def read_results(self) -> pd.DataFrame:
        if not self.results_path.exists():
            raise TrilemmaError(f"{self.root}: no {RESULTS_NAME}; is it a trilemma run directory?")
        return read_results_csv(self.results_path)

    def load_table(self) -> ResultsTable:
        """The rows already recorded here (none for a new directory)."""
        if not self.results_path.exists():
            return ResultsTable()
        return ResultsTable(read_results_csv(self.results_path).to_dict("records"))

    def write_results(self, frame: pd.DataFrame) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.results_path, frame[ordered_columns(frame.columns)].to_csv(index=False))

    def read_manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text()) if self.manifest_path.exists() else {}

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.manifest_path, manifest)

    def write_text(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)

