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
