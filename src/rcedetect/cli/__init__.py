"""`rcedetect` command line. Each sub-command lives in its own module of this package and
exposes `register(subparsers)`, which adds its parser and sets `func=<callable(args) -> int>`.
Modules are discovered, so adding a sub-command never edits this file.
"""

import argparse
import importlib
import pkgutil
import sys

from .. import __version__
from ..errors import RceDetectError


class _Parser(argparse.ArgumentParser):
    """argparse with rcedetect's error style: one line `error: ...` naming the problem and the fix, exit 2
    (argparse's default prints the usage block first). Sub-parsers inherit the class."""

    def error(self, message):
        message = message[0].lower() + message[1:] if message else message
        self.exit(2, f"error: {message}: see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rcedetect",
        description="Robust detection of adversarial examples with reverse cross-entropy (Pang et al. 2018).",
    )
    parser.add_argument("--version", action="version", version=f"rcedetect {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue  # helpers shared by sub-commands, not sub-commands themselves
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(subparsers)
    return parser


INTERRUPTED = ("error: interrupted (Ctrl-C): every file written so far is complete (atomic writes, no partial "
               "output); run the same command again to continue (reproduce and train --resume pick up where they "
               "stopped)")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv=None) -> int:
    """Run one sub-command: its exit status (0 ok, 2 bad input or a failed write, 130 interrupted). Every
    refusal is one line on stderr, `error: <problem>: <fix>`; no traceback for anything a user can cause."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or argparse's one-line refusal (printed by _Parser.error)
        return exc.code if isinstance(exc.code, int) else 2
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    try:
        return int(args.func(args) or 0)
    except RceDetectError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except OSError as exc:  # a file the user named that the OS refuses (permissions, a vanished path, ...)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{_one_line(exc.strerror or exc)}: check the path, its permissions and the free disk "
              f"space, then run again", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
