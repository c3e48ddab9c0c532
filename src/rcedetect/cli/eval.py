"""`rcedetect eval`: test error of a checkpoint (a Table 1 row), printed and written as JSON."""

import json
import time
from pathlib import Path

from ._common import add_checkpoint_argument, add_data_dir_argument, add_device_argument


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="test error of a trained checkpoint (Table 1 row)")
    add_checkpoint_argument(parser)
    parser.add_argument("--json", dest="json_out", default=None,
                        help="where to write the result (default: CHECKPOINT/eval.json)")
    add_device_argument(parser)
    add_data_dir_argument(parser)
    parser.set_defaults(func=run)


def print_row(checkpoint_dir) -> None:
    from ..checkpoints import SIDECAR_FILE

    meta = json.loads((Path(checkpoint_dir) / SIDECAR_FILE).read_text())
    c, m = meta["config"], meta["metrics"]
    split = "held-out error" if "holdout_error" in m else "test error"
    error = m.get("holdout_error", m.get("test_error"))
    print(f"ResNet-{c['depth']} + {c['objective'].upper()} on {c['dataset']}: {split} {100 * error:.2f} % "
          f"({c['steps']} steps, {m['train_seconds']:.0f} s on {m['device']})  -> {checkpoint_dir}")


def check_arguments(args) -> None:
    """The checkpoint (sidecar), --json, --device and --data-dir, before the weights or the data are read."""
    from .. import validate
    from ._common import check_options, checkpoint_dataset

    check_options(args)
    checkpoint_dataset(args.checkpoint)
    if args.json_out is not None:
        validate.output_file(args.json_out, "--json", suffixes=(".json",))


def run(args) -> int:
    from .. import __version__
    from ..checkpoints import load_checkpoint
    from ..data import load_dataset
    from ..devices import resolve_device
    from ..files import atomic_write_json
    from ..inference import accuracy

    check_arguments(args)
    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint, device=device)
    test = load_dataset(ckpt.config.dataset, "test", args.data_dir)
    t0 = time.perf_counter()
    acc = accuracy(ckpt.model, test.images, test.labels, device=device)
    result = {"dataset": ckpt.config.dataset, "depth": ckpt.config.depth, "objective": ckpt.config.objective,
              "test_error": 1.0 - acc, "test_accuracy": acc, "n_test": len(test), "device": str(device),
              "seconds": time.perf_counter() - t0, "rcedetect_version": __version__,
              "checkpoint": str(ckpt.directory)}
    out = Path(args.json_out) if args.json_out else ckpt.directory / "eval.json"
    atomic_write_json(out, result)
    print(f"ResNet-{result['depth']} + {result['objective'].upper()} on {result['dataset']}: "
          f"test error {100 * result['test_error']:.2f} % on {len(test)} images  -> {out}")
    return 0
