"""Exceptions the harness turns into one-line messages instead of tracebacks."""


class TrilemmaError(Exception):
    """A problem the user can fix: bad input, a missing or corrupt file."""


class DataError(TrilemmaError):
    """The dataset could not be found, converted or verified."""


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite during training."""


class BadSamples(RuntimeError):
    """A sampler returned images of the wrong shape, range or type."""
