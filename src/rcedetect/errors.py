"""The one exception type the CLI turns into a one-line error message.

Every message names the problem *and* the fix, e.g. "file X has md5 Y, expected Z:
delete it and run again to re-download". Library code raises subclasses; `rcedetect.cli`
catches `RceDetectError` and prints `error: <message>` with exit status 2.
"""


class RceDetectError(Exception):
    """Base class for errors caused by bad input, data or checkpoints (not by bugs)."""


class DataError(RceDetectError):
    """A data file is missing, truncated, tampered with, or cannot be downloaded."""


class CheckpointError(RceDetectError):
    """A checkpoint is missing, corrupted or incompatible with the requested model."""


class InputError(RceDetectError):
    """An input tensor or file has the wrong shape, dtype, range or contains NaN."""


class OutputError(RceDetectError):
    """An output file could not be written (disk full, I/O error, permissions)."""


def check_keywords(function, settings: dict, what: str, *, also=()) -> None:
    """Refuse keyword arguments that `function` does not take as keyword-only parameters, with one
    `InputError` listing the accepted ones (foolbox style: a misspelt setting never goes unnoticed)."""
    import inspect

    accepted = [*also, *(name for name, p in inspect.signature(function).parameters.items() if p.kind is p.KEYWORD_ONLY)]
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise InputError(f"{what} does not take {', '.join(unknown)}: "
                         f"its settings are {', '.join(accepted) if accepted else '(none)'}")
