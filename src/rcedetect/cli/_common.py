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


# --------------------------------------------------------------------------- checks at the edge
# Whole-number options and their lower bounds, and positive real options, shared by several
# sub-commands: checked before anything is loaded (`check_options`). Options a parser lacks are skipped.
AT_LEAST = {"n": 1, "start": 0, "seed": 0, "batch_size": 1, "steps": 1, "max_iters": 1, "binary_search_steps": 1,
            "phase1_binary_search_steps": 1, "phase1_max_iters": 1, "attack_bank_size": 1, "restarts": 1,
            "pgd_steps": 1, "n_per_class": 1, "calibration_size": 1, "split_seed": 0, "depth": 8,
            "checkpoint_every": 1}
POSITIVE = ("step_size", "lr", "initial_const", "bandwidth_sq", "pixel_scale")
NON_NEGATIVE = ("kappa",)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_options(args) -> None:
    """Range checks of the numeric options every sub-command shares, then --device and --data-dir: one
    `InputError` for the first bad one, before any data or model is loaded."""
    from .. import validate
    from ..devices import resolve_device

    for name, low in AT_LEAST.items():
        validate.integer(getattr(args, name, None), _flag(name), low=low)
    for name in POSITIVE:
        validate.number(getattr(args, name, None), _flag(name), low=0.0, low_open=True)
    for name in NON_NEGATIVE:
        validate.number(getattr(args, name, None), _flag(name), low=0.0)
    if getattr(args, "fpr", None) is not None:
        validate.number(args.fpr, "--fpr", low=0.0, high=1.0, high_open=True,
                        meaning="the fraction of clean inputs rejected", example=0.05)
    if getattr(args, "gamma", None) is not None:
        validate.number(args.gamma, "--gamma", low=0.0, low_open=True, high=1.0,
                        meaning="the largest fraction of changed features")
    if getattr(args, "theta", None) is not None:
        validate.number(args.theta, "--theta", low=-1.0, high=1.0, meaning="a change of a [0, 1] feature")
        if args.theta == 0:
            raise validate.InputError("--theta 0 changes nothing: pass a feature change in [-1, 1], e.g. --theta 1")
    if hasattr(args, "device"):
        resolve_device(args.device)
    validate.data_folder(getattr(args, "data_dir", None))


def checkpoint_dataset(path, flag: str = "CHECKPOINT"):
    """The `TrainConfig` of a checkpoint from its sidecar alone (cheap: the weights are not read)."""
    from ..checkpoints import checkpoint_config
    from ..errors import CheckpointError

    try:
        return checkpoint_config(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{flag}: {exc}" if flag != "CHECKPOINT" else str(exc)) from None
