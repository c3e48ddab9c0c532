"""`rcedetect threat-models`: Table 3, appendix Table 2, Table 4 and the adaptive curve as one JSON file.

    rcedetect threat-models RUN_CE RUN_RCE --n 50 --max-iters 1000                   # Table 3 + Table 2 + adaptive
    rcedetect threat-models RUN_CE RUN_RCE --targets RUN56_CE RUN56_RCE --tables table4
    rcedetect threat-models RUN_CE --tables adaptive --eps 0 0.1 0.2 0.3 --metrics kd non-me
    rcedetect threat-models RUN_CE RUN_RCE --tables worstcase --eps 0 0.1 0.2 --eps-l2 0 1 2 --restarts 5

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

from ..names import PAPER_METRICS, PGD_RULES, SUPERVISED_METRICS, Formulation, Metric, Norm
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
    pgd.add_argument("--metrics", nargs="+", choices=[*PAPER_METRICS, Metric.MAHALANOBIS, *SUPERVISED_METRICS],
                     default=[m.value for m in PAPER_METRICS],
                     help="detectors of the adaptive curve and the worst case (mahalanobis: the unsupervised baseline; "
                          "lid, mahalanobis-lr: worst case only, fitted first by 'rcedetect detect ... --fit-adversarial')")
    pgd.add_argument("--pgd-steps", type=int, default=100)
    pgd.add_argument("--restarts", type=int, default=1)
    pgd.add_argument("--methods", nargs="+", choices=[m.value for m in PGD_RULES], default=[m.value for m in PGD_RULES],
                     help="update rules; an input counts as broken when any of them breaks it")
    wc = parser.add_argument_group("worst-case evaluation (--tables worstcase; --eps is its L-inf grid, --pgd-steps "
                                   "and --restarts its PGD budget)")
    wc.add_argument("--eps-l2", nargs="+", type=float, default=[0.0, 1.0, 2.0, 3.0], help="L2 radii (default: 0 1 2 3)")
    wc.add_argument("--formulations", nargs="+", choices=Formulation.choices(), default=list(Formulation.choices()),
                    help="attacks; an input counts as broken when any of them breaks it (default: all)")
    wc.add_argument("--lambdas", nargs="+", type=float, default=[0.1, 1.0, 10.0], help="weights of the sum form")
    wc.add_argument("--wc-cw-steps", type=int, default=5, help="C&W-L2 binary-search steps (default 5)")
    wc.add_argument("--wc-cw-iters", type=int, default=1000, help="C&W-L2 iterations per step (default 1000)")
    wc.add_argument("--wc-cw-lr", type=float, default=0.01, help="C&W-L2 Adam learning rate (default 0.01)")
    wc.add_argument("--cascade", action="store_true",
                    help="attack each input only until one formulation breaks it (same worst case, less work)")
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


def _worst_case_budget(args):
    from ..evaluation.worst_case import WorstCaseBudget

    return WorstCaseBudget(eps={Norm.LINF.value: sorted(args.eps), Norm.L2.value: sorted(args.eps_l2)},
                           formulations=tuple(args.formulations), lambdas=tuple(args.lambdas), steps=args.pgd_steps,
                           restarts=args.restarts, cascade=args.cascade,
                           cw={"binary_search_steps": args.wc_cw_steps, "max_iters": args.wc_cw_iters,
                               "lr": args.wc_cw_lr, "initial_const": 1.0})


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
    supervised = [m for m in args.metrics if Metric.coerce(m) in SUPERVISED_METRICS]
    if supervised and not (args.tables and "worstcase" in args.tables and "adaptive" not in args.tables):
        raise InputError(f"--metrics {' '.join(supervised)}: the supervised baselines are attacked only by the worst-case "
                         f"evaluation: pass --tables worstcase (without adaptive), after fitting them with "
                         f"'rcedetect detect CHECKPOINT --metric {supervised[0]} --fit-adversarial'")
    configs = [checkpoint_dataset(p) for p in args.checkpoints]
    configs += [checkpoint_dataset(p, "--targets") for p in args.targets]
    datasets = sorted({c.dataset.value for c in configs})
    if len(datasets) != 1:
        raise InputError(f"all checkpoints must be of one dataset, got {', '.join(datasets)}: pass models of the "
                         f"same dataset")
    info = DATASETS[configs[0].dataset]
    for eps in args.eps:
        validate.budget(eps, args.norm, "--eps", dimension=info.in_channels * info.image_size ** 2, allow_zero=True)
    if args.tables and "worstcase" in args.tables:
        for eps in args.eps_l2:
            validate.budget(eps, Norm.L2, "--eps-l2", dimension=info.in_channels * info.image_size ** 2, allow_zero=True)
        for name in ("wc_cw_steps", "wc_cw_iters"):
            validate.integer(getattr(args, name), "--" + name.replace("_", "-"), low=1)
        _worst_case_budget(args)  # its own checks (grids, lambdas)
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
        worst_case=_worst_case_budget(args) if args.tables and "worstcase" in args.tables else None,
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
    elif update.section == "worstcase":
        result = update.value
        for norm, grid in result["budget"]["eps"].items():
            print(f"worstcase {update.label} ({norm}, eps {' '.join(f'{e:g}' for e in grid)}): robust accuracy "
                  f"with rejection, worst case over {len(result['attacks'])} attacks")
            for metric, entry in result["detectors"].items():
                failed = [c for c, v in entry["checks"].items() if v["status"] == "FAIL"]
                print(f"  {metric:<11}" + " ".join(f"{v:6.1%}" for v in entry["robust_accuracy_with_rejection"][norm])
                      + (f"   checks FAIL: {', '.join(failed)}" if failed else ""))
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
