"""Progress bars that stay out of log files: shown when asked for and stderr is a terminal."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any


def plain_output() -> bool:
    """Whether console output must be plain text: stdout is not a terminal (a pipe, a log file) or
    ``NO_COLOR`` is set (https://no-color.org): no colour codes, no engine's decorations."""
    return bool(os.environ.get("NO_COLOR")) or not sys.stdout.isatty()


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool, **options: Any) -> Any:
    """A tqdm bar over ``iterable`` when ``enabled`` and stderr is a terminal (``disable=None``:
    tqdm's own test), silent otherwise, so piped output and logs get no ``\\r`` frames."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=None if enabled else True, **options)
