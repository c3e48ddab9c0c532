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
