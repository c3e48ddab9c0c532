"""`rcedetect threat-models`: Table 3, appendix Table 2, Table 4 and the adaptive curve as one JSON file.

    rcedetect threat-models RUN_CE RUN_RCE --n 50 --max-iters 1000                   # Table 3 + Table 2 + adaptive
    rcedetect threat-models RUN_CE RUN_RCE --targets RUN56_CE RUN56_RCE --tables table4
    rcedetect threat-models RUN_CE --tables adaptive --eps 0 0.1 0.2 0.3 --metrics kd non-me

Every positional checkpoint is a model of Table 3 / Table 2 / the adaptive curve and a substitute of
Table 4; `--targets` are Table 4's target models (ResNet-56 in the paper), each judged by its own
detector. The images are `--n` clean test images held out from the thresholds: positions
[--start, --start + --n) of the seeded test permutation (`--split-seed`) whose first
`--calibration-size` images calibrate the detectors, as in `rcedetect detect`; --start defaults to
--calibration-size. The JSON (`--output`, default
threat-models.json in the first checkpoint's folder) is rewritten after each section, so a long
run keeps what it finished. Definitions: `rcedetect.evaluation.threat_models`.
"""

import json
from pathlib import Path

from ..names import PAPER_METRICS, PGD_RULES, Metric, Norm
from ._common import add_data_dir_argument, add_device_argument, print_notes
from ._threat_models import add_detector_arguments, detector_settings


def register(subparsers) -> None:
    from ..attacks.cw_wb import L2_REFERENCES
    from ..evaluation.threat_models import THREAT_MODEL_TABLES

    parser = subparsers.add_parser(
        "threat-models", help="white-box (Table 3 / appendix Table 2), black-box (Table 4) and adaptive evaluations",
        description="C&W-wb against the K-density detector (Table 3, kappa 0; appendix Table 2, kappa 5), its "
                    "transfer from substitutes to targets (Table 4), and detector-aware PGD (robust accuracy "
                    "with rejection vs eps, beyond the paper). Writes one JSON file.")
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                        help="models of Table 3 / Table 2 / the adaptive curve, and Table 4's substitutes")
    parser.add_argument("--targets", nargs="+", default=[], metavar="CHECKPOINT",
                        help="Table 4 target models (ResNet-56 in the paper), each judged by its own K-density")
    parser.add_argument("--tables", nargs="+", choices=THREAT_MODEL_TABLES, default=None,
                        help="sections to compute (default: table3 table2 adaptive, plus table4 with --targets)")
    parser.add_argument("--output", default=None, help="JSON file (default: CHECKPOINT/threat-models.json)")
    parser.add_argument("--n", type=int, default=100, help="clean test images attacked (default 100)")
    parser.add_argument("--start", type=int, default=None,
                        help="first position in the seeded test permutation (--split-seed) whose first "
                             "--calibration-size images set the thresholds (default: --calibration-size, "
                             "i.e. held-out images)")
    parser.add_argument("--seed", type=int, default=0, help="targets, attack banks, PGD starts (default 0)")
    parser.add_argument("--batch-size", type=int, default=100, help="images per attack batch (default 100)")
    cw = parser.add_argument_group("C&W-wb (defaults: the paper's budget, appendix B.2)")
    cw.add_argument("--binary-search-steps", type=int, default=9)
    cw.add_argument("--max-iters", type=int, default=10000)
    cw.add_argument("--phase1-binary-search-steps", type=int, default=None, help="default: as phase 2")
    cw.add_argument("--phase1-max-iters", type=int, default=None, help="default: as phase 2")
    cw.add_argument("--lr", type=float, default=1e-2)
    cw.add_argument("--initial-const", type=float, default=1.0)
    cw.add_argument("--attack-bank-size", type=int, default=100)
    cw.add_argument("--l2-from", choices=L2_REFERENCES, default="clean")
    cw.add_argument("--no-abort-early", dest="abort_early", action="store_false")
    pgd = parser.add_argument_group("adaptive PGD (beyond the paper)")
    pgd.add_argument("--eps", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3],
                     help="radii in [0, 1] pixel units (default: 0 0.1 0.2 0.3)")
    pgd.add_argument("--norm", choices=(Norm.LINF.value, Norm.L2.value), default=Norm.LINF.value)
    pgd.add_argument("--metrics", nargs="+", choices=[m.value for m in PAPER_METRICS], default=[m.value for m in PAPER_METRICS])
    pgd.add_argument("--pgd-steps", type=int, default=100)
    pgd.add_argument("--restarts", type=int, default=1)
    pgd.add_argument("--methods", nargs="+", choices=[m.value for m in PGD_RULES], default=[m.value for m in PGD_RULES],
                     help="update rules; an input counts as broken when any of them breaks it")
    add_detector_arguments(parser)
    parser.add_argument("--json", dest="json_stdout", action="store_true", help="also print the report as JSON")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    add_device_argument(parser)
    add_data_dir_argument(parser)
    parser.set_defaults(func=run)


def _cw_settings(args) -> dict:
    return {"binary_search_steps": args.binary_search_steps, "max_iters": args.max_iters, "lr": args.lr,
            "initial_const": args.initial_const, "attack_bank_size": args.attack_bank_size, "l2_from": args.l2_from,
            "abort_early": args.abort_early, "phase1_binary_search_steps": args.phase1_binary_search_steps,
            "phase1_max_iters": args.phase1_max_iters}


def check_arguments(args) -> None:
    """Every option and checkpoint of `rcedetect threat-models`, before any weights or data are read."""
    from .. import validate
    from ..data import DATASETS, split_size
    from ..errors import InputError
    from ._common import check_options, checkpoint_dataset
    from ._threat_models import detector_settings

    from ..evaluation.threat_models import check_cw_wb_detector_settings

    check_options(args)
    check_cw_wb_detector_settings(detector_settings(args))  # DetectorSettings validates its ranges
    if args.tables and "table4" in args.tables and not args.targets:
        raise InputError("--tables table4 needs --targets CHECKPOINT [...] (the attacked models, ResNet-56 in the "
                         "paper): add them or drop table4")
    configs = [checkpoint_dataset(p) for p in args.checkpoints]
    configs += [checkpoint_dataset(p, "--targets") for p in args.targets]
    datasets = sorted({c.dataset.value for c in configs})
    if len(datasets) != 1:
        raise InputError(f"all checkpoints must be of one dataset, got {', '.join(datasets)}: pass models of the "
                         f"same dataset")
    info = DATASETS[configs[0].dataset]
    for eps in args.eps:
        validate.budget(eps, args.norm, "--eps", dimension=info.in_channels * info.image_size ** 2, allow_zero=True)
    n_test = split_size(info.name, "test")
    validate.integer(args.calibration_size, "--calibration-size", high=n_test - 1)
    start = args.calibration_size if args.start is None else args.start
    validate.rows(start, args.n, n_test, what="positions of the permuted test set")
    if args.output is not None:
        validate.output_file(args.output, "--output", suffixes=(".json",))


def run(args) -> int:
    from ..devices import resolve_device
    from ..evaluation.threat_models import threat_model_report
    from ..files import atomic_write_json

    check_arguments(args)
    updates = threat_model_report(
        args.checkpoints, targets=args.targets, tables=args.tables, n=args.n, start=args.start, seed=args.seed,
        batch_size=args.batch_size, cw_settings=_cw_settings(args), eps_values=args.eps, norm=args.norm,
        metrics=args.metrics, pgd_steps=args.pgd_steps, restarts=args.restarts, methods=args.methods,
        detector_settings=detector_settings(args), device=resolve_device(args.device))
    output = None if args.output is None else Path(args.output)
    report = None
    for update in updates:
        report = update.report
        if output is None:  # default: beside the first checkpoint (the loaded folder, as the report names it)
            output = Path(next(iter(report["checkpoints"].values()))) / "threat-models.json"
        if update.section == "note":
            print_notes([update.value])
            continue
        atomic_write_json(output, report)  # after each entry, so a long run keeps what it finished
        _print_update(update)
    atomic_write_json(output, report)
    print(f"-> {output}")
    if args.json_stdout:
        print(json.dumps(report, indent=2))
    return 0


def _print_update(update) -> None:
    if update.section in ("table3", "table2"):
        _print_white_box(update.section, update.label, update.value, update.seconds)
    elif update.section == "table4":
        for sub, row in update.value["pairs"].items():
            for tgt, cell in row.items():
                rate, auc = cell["transfer_rate_percent"], cell["auc"]
                print(f"table4 {sub} -> {tgt}: fed {cell['n_fed']}, transfer "
                      f"{'n/a' if rate is None else f'{rate:.1f} %'}, AUC {'n/a' if auc is None else f'{auc:.3f}'} "
                      f"(n={cell['n_counted']})")
    else:
        curve = update.value
        eps = " ".join(f"{e:g}" for e in curve["eps"])
        print(f"adaptive {update.label} ({curve['norm']}, eps {eps}): robust accuracy with rejection")
        for metric, c in curve["curves"].items():
            print(f"  {metric:<11}" + " ".join(f"{v:6.1%}" for v in c["robust_accuracy_with_rejection"]))
        if "undefended" in curve:
            print(f"  {'undefended':<11}" + " ".join(f"{v:6.1%}" for v in curve["undefended"]["robust_accuracy"]))


def _print_white_box(table, label, row, seconds) -> None:
    ratio, dist = row["ratio_f2_positive_percent"], row["mean_distortion"]
    print(f"{table} {label} (kappa {row['kappa']:g}): counted {row['n_counted']}/{row['n']}, f2 > 0 "
          f"{'n/a' if ratio is None else f'{ratio:.1f} %'}, distortion {'n/a' if dist is None else f'{dist:.2f}'}, "
          f"{seconds / row['n']:.3g} s/example")
