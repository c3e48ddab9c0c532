"""Checks of user-supplied values at the API edge, before any data is loaded or work is started.

Every check raises one `InputError` whose message names the option, the value, what is allowed and
the fix, e.g. "--eps 3 is outside (0, 1] (an L-inf budget in [0, 1] pixel units): e.g. --eps 0.1".
The command line calls these on its arguments first (`rcedetect.cli`), the library on its own
parameters where a bad value would otherwise surface late (after data loading, inside a loop).

    number(value, "--fpr", low=0, high=1, low_open=True, high_open=True)
    integer(value, "--n", low=1)
    rows(start, n, available, "--start/--n", what="test images")
    budget(eps, norm, "--eps", dimension=784)        # L-inf on [0, 1] images: (0, 1]; L2: (0, sqrt(d)]
    output_file(path, "--out")                       # creatable + writable, not a folder
    output_folder(path, "--out")                     # creatable + writable, not a regular file
    input_file(path, "--input") / input_folder(path, "RUN")
"""

import math
import os
from pathlib import Path

from .errors import InputError
from .names import Norm


def _interval(low, high, low_open, high_open) -> str:
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    return f"{left}{lo}, {hi}{right}"


def number(value, flag: str, *, low=None, high=None, low_open=False, high_open=False, meaning: str = "",
           example=None):
    """`value` as a float, refused unless finite and inside the interval (open ends where asked)."""
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{flag} must be a number, got {value!r}") from None
    ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        what = f" ({meaning})" if meaning else ""
        if example is not None:
            fix = f"e.g. {flag} {example:g}"
        elif low == 0 and high is None:
            fix = "pass a positive value" if low_open else "pass a value >= 0"
        else:
            fix = f"pass a value in {_interval(low, high, low_open, high_open)}"
        raise InputError(f"{flag} {value:g} is outside {_interval(low, high, low_open, high_open)}{what}: {fix}")
    return value


def integer(value, flag: str, *, low=None, high=None, meaning: str = ""):
    """`value` as an int, refused unless a whole number inside [low, high]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InputError(f"{flag} must be a whole number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        what = f" ({meaning})" if meaning else ""
        rng = (f">= {low}" if high is None else f"<= {high}" if low is None else f"between {low} and {high}")
        raise InputError(f"{flag} must be {rng}{what}, got {value}: pass a value {rng}")
    return value


def rows(start: int, n: int, available: int, flags: str = "--start/--n", *, what: str = "images") -> None:
    """Refuse a range [start, start + n) that does not fit into `available` rows."""
    integer(start, flags.split("/")[0], low=0)
    integer(n, flags.split("/")[-1], low=1)
    if start + n > available:
        raise InputError(f"{flags} ask for {what} [{start}, {start + n}) but there are only {available}: "
                         f"lower {flags.split('/')[-1]} to at most {max(available - start, 0)}")


def budget(eps, norm, flag: str = "--eps", *, dimension: int = None, allow_zero: bool = False):
    """An attack radius on [0, 1] images: L-inf in (0, 1] (a radius above 1 constrains nothing), L2 in
    (0, sqrt(dimension)] (the diameter of the image cube); `allow_zero` admits 0 (the clean baseline)."""
    if eps is None:
        return None
    norm = Norm.coerce(norm, "norm")
    if norm == Norm.L2:
        high = math.sqrt(dimension) if dimension else None
        meaning = "an L2 radius on [0, 1] images" + (f" of {dimension} values" if dimension else "")
        example = 1.0
    else:
        high, meaning, example = 1.0, "an L-inf budget in [0, 1] pixel units", 0.1
    if allow_zero:
        return number(eps, flag, low=0.0, high=high, meaning=meaning, example=example)
    return number(eps, flag, low=0.0, low_open=True, high=high, meaning=meaning, example=example)


# ------------------------------------------------------------------------------------------ paths
def _nearest_existing(path: Path) -> Path:
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _creatable_folder(folder: Path, flag: str, shown: Path) -> None:
    """`folder` exists as a writable folder, or can be created (every existing ancestor is a folder and
    the nearest one is writable)."""
    for parent in [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            raise InputError(f"{flag} {shown}: {parent} is a file, not a folder: choose a path outside it")
        if parent.exists():
            break
    existing = _nearest_existing(folder)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {shown}: cannot write in {existing} (permission denied): choose a writable "
                         f"location or fix its permissions")


def output_folder(path, flag: str = "--out") -> Path:
    """A folder rcedetect will create or write into: refused when it (or a parent) is a regular file or
    when it cannot be created / written."""
    if path is None or str(path) == "":
        raise InputError(f"{flag} needs a folder path: pass e.g. {flag} runs/my-run")
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path} is a file, not a folder: choose another {flag} or move that file")
    _creatable_folder(path, flag, path)
    return path


def output_file(path, flag: str = "--out", *, suffixes=None) -> Path:
    """A file rcedetect will (re)write atomically: refused when it is a folder, when a parent is a file
    or not writable, or (with `suffixes`) when its extension is not one of them."""
    if path is None or str(path) == "":
        raise InputError(f"{flag} needs a file path: pass e.g. {flag} results.json")
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder, not a file: pass a file path inside it, e.g. "
                         f"{path / ('out' + (suffixes[0] if suffixes else '.json'))}")
    if suffixes and path.suffix and path.suffix not in suffixes:
        raise InputError(f"{flag} {path} has extension {path.suffix}: use {' or '.join(suffixes)}")
    _creatable_folder(path.parent, flag, path)
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{flag} {path} exists and is read-only: choose another path or fix its permissions")
    return path


def input_file(path, flag: str, *, suffixes=None) -> Path:
    """An existing, readable regular file (with one of `suffixes`, when given)."""
    path = Path(path).expanduser()
    if suffixes and path.suffix.lower() not in suffixes:
        raise InputError(f"{flag} {path}: unsupported file type {path.suffix or '(none)'}: pass a "
                         f"{', '.join(suffixes)} file")
    if not path.exists():
        raise InputError(f"{flag} {path} does not exist: check the path")
    if not path.is_file():
        raise InputError(f"{flag} {path} is a folder, not a file: pass a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{flag} {path} is not readable (permission denied): fix its permissions")
    return path


def input_folder(path, flag: str, *, what: str = "folder") -> Path:
    """An existing, readable folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{flag} {path} does not exist: pass the {what}")
    if not path.is_dir():
        raise InputError(f"{flag} {path} is a file, not a folder: pass the {what}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise InputError(f"{flag} {path} is not readable (permission denied): fix its permissions")
    return path


def data_folder(path, flag: str = "--data-dir"):
    """A dataset folder: it may not exist yet (files are downloaded into it) but must not be a file."""
    if path is None:
        return None
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path} is a file, not a folder: pass the folder holding mnist/ and cifar10/")
    return path


__all__ = ["budget", "data_folder", "input_file", "input_folder", "integer", "number", "output_file",
           "output_folder", "rows"]
