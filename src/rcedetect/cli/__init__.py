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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RceDetectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
