"""Progress bars that stay out of log files: shown when asked for and stderr is a terminal."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool, **options: Any) -> Any:
    """A tqdm bar over ``iterable`` when ``enabled`` and stderr is a terminal (``disable=None``:
    tqdm's own test), silent otherwise, so piped output and logs get no ``\\r`` frames."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=None if enabled else True, **options)
