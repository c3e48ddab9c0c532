"""Arguments shared by several sub-commands."""

import argparse
import sys

from ..devices import DEVICE_CHOICES


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                        help="where to run: auto picks CUDA when available (default: auto)")


def add_data_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None,
                        help="dataset folder (default: $RCEDETECT_DATA_DIR, else ~/.cache/rcedetect/data); "
                             "missing files are downloaded and md5-verified")


def add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint folder written by 'rcedetect train' (weights + JSON sidecar)")


def print_notes(notes) -> None:
    """Remarks of the library (e.g. why a detector was refitted) on stderr, one per line."""
    for note in notes:
        print(note if note.startswith("warning:") else f"note: {note}", file=sys.stderr)


def chosen_settings(args, attack, tables) -> dict:
    """The attack keywords the user set, from option tables {option: (keyword, attacks it applies to)}.

    All tables are consulted together, so an option of another attack (a C&W-wb option with
    --attack cw, a JSMA option with --attack cw-wb) is refused instead of silently ignored.
    """
    from ..errors import InputError

    users, keywords = {}, {}
    for table in tables:
        for option, (keyword, applies_to) in table.items():
            users.setdefault(option, set()).update(map(str, applies_to))
            if attack in applies_to:
                keywords[option] = keyword
    settings = {}
    for option, attacks in users.items():
        value = getattr(args, option, None)
        if value is None:
            continue
        if option not in keywords:
            flag = "--no-abort-early" if option == "abort_early" else "--" + option.replace("_", "-")
            raise InputError(f"{flag} does not apply to --attack {attack} (only to {', '.join(sorted(attacks))}): "
                             f"drop it")
        settings[keywords[option]] = value
    return settings
