"""Exceptions the harness turns into one-line messages instead of tracebacks."""

from collections.abc import Iterable


class TrilemmaError(Exception):
    """A problem the user can fix: bad input, a missing or corrupt file."""


class DataError(TrilemmaError):
    """The dataset could not be found, converted or verified."""


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite during training."""


class BadSamples(RuntimeError):
    """A sampler returned images of the wrong shape, range or type."""


def did_you_mean(names: Iterable[str], valid: Iterable[object]) -> str:
    """`` (did you mean 'x'?)`` for the given names' closest valid matches (difflib), or ''."""
    import difflib

    choices = [str(v) for v in valid]
    close = dict.fromkeys(m for name in names for m in difflib.get_close_matches(str(name), choices, n=1, cutoff=0.6))
    return f" (did you mean {', '.join(repr(m) for m in close)}?)" if close else ""
