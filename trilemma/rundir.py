"""The run directory: every path and file format of a run lives here, nowhere else.

```
<run>/results.csv            one row per (model, sampler, seed)
<run>/manifest.json          versions, device, protocol, configs, commands
<run>/report.md, report.html the rendered report
<run>/checkpoints/<model>-seed<seed>.pt
<run>/samples/<model>-<sampler>-seed<seed>.png
<run>/plots/<name>.png
<run>/curves/<model>-seed<seed>.csv       learning-curve rows of one cell, written as training goes
<run>/curves/samples/<model>-<sampler>-seed<seed>-step<step>.png
<run>/.trilemma.lock         who is running into this directory (pid, host, start, command)
```

Files are replaced atomically (written beside, flushed to disk, renamed), so a crash at any
instant leaves either the old or the new file. Readers validate what they read and name the file
and line of any damage. One process at a time holds the run lock; rows are merged into
``results.csv`` under a short lock, re-reading the file each time, so no finished row is lost even
when several processes record into one directory.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from trilemma.columns import Column, from_dicts
from trilemma.errors import TrilemmaError
from trilemma.files import atomic_write_json, atomic_write_text
from trilemma.results import FAILED, HARNESS_COLUMNS, KEY, OK, TEXT_COLUMNS, ResultsTable, rows_frame, text_columns

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

RESULTS_NAME, MANIFEST_NAME, LOCK_NAME = "results.csv", "manifest.json", ".trilemma.lock"
REPORT_MD, REPORT_HTML = "report.md", "report.html"
_ROWS_LOCK_NAME = ".results.lock"


def _damaged(path: Path, line: int | None, what: str) -> TrilemmaError:
    where = f"{path}, line {line}" if line else str(path)
    fix = (f"delete line {line} (that cell runs again with --resume), " if line else "") + \
        "restore the file from a copy, or move it aside to start over"
    return TrilemmaError(f"{where}: {what}; the file is damaged (a torn write or an edit): {fix}")


def read_results_csv(path: Path, text: Sequence[str] = TEXT_COLUMNS) -> pd.DataFrame:
    """Read ``results.csv``, checking every line before pandas sees it. Text columns keep their
    exact text (a model named ``nan`` or ``null`` stays a name); only empty cells are missing."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise _damaged(path, None, f"not text ({exc.reason})") from exc
    if not text.strip():
        raise _damaged(path, 1, "empty, no header")
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
        missing = [c for c in (*KEY, "status") if c not in header]
        if missing:
            raise _damaged(path, 1, f"the header lacks {', '.join(missing)}")
        status_at, seed_at = header.index("status"), header.index("seed")
        for record in reader:
            line = reader.line_num
            if len(record) != len(header):
                raise _damaged(path, line, f"{len(record)} fields where the header has {len(header)}")
            if record[status_at] not in (OK, FAILED):
                raise _damaged(path, line, f"status {record[status_at]!r} is neither {OK!r} nor {FAILED!r}")
            if not record[seed_at].lstrip("-").isdigit():
                raise _damaged(path, line, f"seed {record[seed_at]!r} is not a whole number")
    except csv.Error as exc:
        raise _damaged(path, reader.line_num, str(exc)) from exc
    if not text.endswith("\n"):
        raise _damaged(path, reader.line_num, "the last line is cut short (no line end)")
    text_columns = {c: str for c in text if c in header}
    frame = pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""], dtype=text_columns)
    for column in text_columns:
        frame[column] = frame[column].fillna("")
    return frame


def read_curve_file(path: Path) -> pd.DataFrame | None:
    """One cell's learning-curve rows, or None when the file is missing or torn (a curve is an extra:
    a damaged one is skipped by the report and rewritten by the cell's next point)."""
    if not path.exists():
        return None
    try:
        return pd.read_csv(path, dtype={"model": str, "sampler": str, "error": str})
    except Exception:  # noqa: BLE001
        return None


def read_manifest_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TrilemmaError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg}); the file is damaged: restore it "
                            "from a copy, or move it aside (the next run writes a new one)") from exc
    except UnicodeDecodeError as exc:
        raise TrilemmaError(f"{path}: not text ({exc.reason}); restore it or move it aside") from exc
    if not isinstance(data, dict):
        raise TrilemmaError(f"{path}: expected a JSON object, found {type(data).__name__}; restore it or move it aside")
    return data


class RunLock:
    """The run directory's lock: one ``trilemma run`` at a time writes into a directory.

    The holder keeps an exclusive ``flock`` on ``.trilemma.lock`` for the run's lifetime, and the
    file says who it is (pid, host, start time, command). The kernel drops the lock when the holder
    dies however it dies, so a lock file left by a killed process is recognised as stale and taken
    over."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self.took_over: dict[str, Any] | None = None

    def _holder(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text() or "{}")
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self, command: str) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                holder = self._holder()
                raise TrilemmaError(
                    f"{self.path.parent} is in use by another trilemma run (pid {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')}, since {holder.get('started', '?')}: {holder.get('command', '?')}); "
                    "wait for it to finish, or give this run another --out") from None
        previous = self._holder()
        self.took_over = previous or None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # an empty lock file means the last holder finished cleanly
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


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

    def curve_file(self, model: str, seed: int) -> Path:
        return self.root / "curves" / f"{model}-seed{seed}.csv"

    def curve_grid(self, model: str, sampler: str, seed: int, step: int) -> Path:
        return self.root / "curves" / "samples" / f"{model}-{sampler}-seed{seed}-step{step}.png"

    def read_curves(self) -> pd.DataFrame:
        """Every cell's learning-curve rows (empty when the run has none); a damaged file is skipped."""
        frames = [read_curve_file(path) for path in sorted((self.root / "curves").glob("*.csv"))]
        frames = [frame for frame in frames if frame is not None]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def sample_grids(self, model: str, sampler: str) -> list[Path]:
        """The sample grids of (model, sampler), every seed, sorted."""
        return sorted((self.root / "samples").glob(glob.escape(f"{model}-{sampler}-seed") + "*.png"))

    def file(self, name: str) -> Path:
        """Another file at the top of the run directory (``summary.csv``, ``comparison.csv``)."""
        return self.root / name

    def relative(self, path: Path | str) -> str:
        """``path`` as a report may show it: relative to this directory when inside it, else its name."""
        resolved, root = Path(path).resolve(), self.root.resolve()
        if resolved == root:
            return root.name
        return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else resolved.name

    # --- files ----------------------------------------------------------------------------
    def ensure_writable(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise TrilemmaError(f"--out {self.root} is a file; give a directory (the run directory is made there)")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test.{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise TrilemmaError(f"cannot write to --out {self.root}: {exc.strerror or exc}") from exc

    @contextmanager
    def locked(self, command: str) -> Iterator[RunLock]:
        """Hold the run lock for the duration of the block (see ``RunLock``)."""
        lock = RunLock(self.root / LOCK_NAME)
        lock.acquire(command)
        try:
            yield lock
        finally:
            lock.release()

    @contextmanager
    def _rows_lock(self) -> Iterator[None]:
        fd = os.open(self.root / _ROWS_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def has_results(self) -> bool:
        return self.results_path.exists()

    def read_results(self) -> pd.DataFrame:
        if not self.results_path.exists():
            raise TrilemmaError(f"{self.root}: no {RESULTS_NAME}; is it a trilemma run directory?")
        return read_results_csv(self.results_path, self._text_columns())

    def load_table(self) -> ResultsTable:
        """The rows already recorded here (none for a new directory)."""
        if not self.results_path.exists():
            return ResultsTable()
        return ResultsTable(read_results_csv(self.results_path, self._text_columns()).to_dict("records"))

    def _text_columns(self) -> tuple[str, ...]:
        """The text columns this run declared (its manifest), else the harness's own."""
        try:
            recorded = self.read_manifest().get("columns", [])
        except TrilemmaError:
            recorded = []
        return text_columns(from_dicts(r for r in recorded if isinstance(r, dict)))

    def write_results(self, frame: pd.DataFrame, declared: Sequence[Column] = HARNESS_COLUMNS) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.results_path, rows_frame(frame.to_dict("records"), declared).to_csv(index=False))

    def update_results(self, change: Callable[[ResultsTable], None],
                       declared: Sequence[Column] = HARNESS_COLUMNS) -> ResultsTable:
        """Re-read ``results.csv`` under a short lock, apply ``change`` and write it back atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._rows_lock():
            table = self.load_table()
            change(table)
            atomic_write_text(self.results_path, table.frame(declared).to_csv(index=False))
        return table

    def read_manifest(self) -> dict[str, Any]:
        return read_manifest_json(self.manifest_path) if self.manifest_path.exists() else {}

    def update_manifest(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Re-read ``manifest.json`` under the rows lock, apply ``change`` and write it back atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._rows_lock():
            manifest = self.read_manifest()
            change(manifest)
            atomic_write_json(self.manifest_path, manifest)
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.manifest_path, manifest)

    def write_text(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
