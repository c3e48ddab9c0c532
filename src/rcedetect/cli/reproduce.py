"""`rcedetect reproduce`: every table and figure of the paper, resumably, into one run folder."""

import argparse
import time

from ..names import Dataset, Preset
from ._common import add_data_dir_argument, add_device_argument


def add_reproduce_arguments(parser, *, out_default=None) -> None:
    parser.add_argument("--out", default=out_default,
                        help="run folder: models, cells/*.json, cache, report (default: runs/DATASET-PRESET)")
    parser.add_argument("--only", nargs="+", default=None, metavar="PREFIX",
                        help="run only the cells whose names start with these prefixes (e.g. train table2.cw)")
    parser.add_argument("--list", action="store_true",
                        help="print the cells with their estimated cost and whether they are done, then exit")
    parser.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                        help="render RUN/report.md and report.html at the end (default: yes)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show the progress display (default: yes)")
    add_device_argument(parser)
    add_data_dir_argument(parser)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "reproduce", help="reproduce every table and figure of the paper into a run folder (resumable)",
        description="Train (or reuse) the models, run every attack and detector of the paper, store each "
                    "result as RUN/cells/<name>.json and render RUN/report.md / report.html. Cells already "
                    "computed with the same settings are skipped: a killed run continues where it stopped.")
    parser.add_argument("--dataset", choices=Dataset.choices(), required=True)
    parser.add_argument("--preset", choices=Preset.choices(), default=Preset.QUICK.value,
                        help="quick: minutes on a CPU (MNIST ~15-30 min); paper: the paper's settings (GPU); "
                             "toy: a one-minute smoke test (default: quick)")
    add_reproduce_arguments(parser)
    parser.set_defaults(func=run)


def list_cells(rep) -> None:
    total = 0.0
    for cell in rep.cells():
        done = rep.store.is_done(cell.name, cell.config)
        total += cell.cost
        print(f"{'done' if done else '    '}  {cell.name:28s} ~{cell.cost:8.0f} s")
    print(f"estimated total on a quiet 2-core CPU: ~{total / 60:.0f} min")


def reproduce(dataset: str, preset: str, args) -> int:
    """Under torchrun every rank runs this; rank 0 prints, lists and renders the report (after the run's
    last barrier: every cell is stored by then)."""
    from .. import distributed, validate
    from ..reproduce import Reproduction, render_report
    from ._common import check_options

    check_options(args)
    out = args.out or f"runs/{dataset}-{preset}"
    validate.output_folder(out, "--out")
    world = distributed.setup(args.device)
    try:
        say = print if world.is_main else (lambda *a, **k: None)
        rep = Reproduction(dataset, preset, out, device=args.device, data_dir=args.data_dir, progress=args.progress)
        rep.check_run_folder()
        rep.select(args.only)  # refuses a prefix that matches no cell
        if args.list:
            if world.is_main:
                list_cells(rep)
            return 0
        ranks = f" on {world.size} ranks ({world.device.type})" if world.active else ""
        say(f"reproducing Pang et al. 2018 on {dataset} (preset {preset}) into {out}{ranks}; "
            f"estimated ~{rep.estimate_seconds() / 60:.0f} min on a quiet 2-core CPU (cells already done are skipped)")
        t0 = time.perf_counter()
        results = rep.run(only=args.only)
        say(f"{len(results)} cells in {(time.perf_counter() - t0) / 60:.1f} min -> {out}/cells/")
        if args.report and world.is_main:
            paths = render_report(out)
            print(f"report: {paths['markdown']} and {paths['html']} ({len(paths['figures'])} figures)")
        return 0
    finally:
        distributed.shutdown()


def run(args) -> int:
    return reproduce(args.dataset, args.preset, args)
