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
import time
from pathlib import Path

from ..errors import InputError
from ._common import add_data_dir_argument, add_device_argument
from ._threat_models import add_detector_arguments, check_detector_options, detector_for, heldout_test_index

TABLES = ("table3", "table2", "table4", "adaptive")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "threat-models", help="white-box (Table 3 / appendix Table 2), black-box (Table 4) and adaptive evaluations",
        description="C&W-wb against the K-density detector (Table 3, kappa 0; appendix Table 2, kappa 5), its "
                    "transfer from substitutes to targets (Table 4), and detector-aware PGD (robust accuracy "
                    "with rejection vs eps, beyond the paper). Writes one JSON file.")
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                        help="models of Table 3 / Table 2 / the adaptive curve, and Table 4's substitutes")
    parser.add_argument("--targets", nargs="+", default=[], metavar="CHECKPOINT",
                        help="Table 4 target models (ResNet-56 in the paper), each judged by its own K-density")
    parser.add_argument("--tables", nargs="+", choices=TABLES, default=None,
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
    cw.add_argument("--l2-from", choices=("clean", "phase1"), default="clean")
    cw.add_argument("--no-abort-early", dest="abort_early", action="store_false")
    pgd = parser.add_argument_group("adaptive PGD (beyond the paper)")
    pgd.add_argument("--eps", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3],
                     help="radii in [0, 1] pixel units (default: 0 0.1 0.2 0.3)")
    pgd.add_argument("--norm", choices=("linf", "l2"), default="linf")
    pgd.add_argument("--metrics", nargs="+", choices=("confidence", "non-me", "kd"),
                     default=["confidence", "non-me", "kd"])
    pgd.add_argument("--pgd-steps", type=int, default=100)
    pgd.add_argument("--restarts", type=int, default=1)
    pgd.add_argument("--methods", nargs="+", choices=("logit", "selective", "orthogonal"),
                     default=["logit", "selective", "orthogonal"],
                     help="update rules; an input counts as broken when any of them breaks it")
    add_detector_arguments(parser)
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    add_device_argument(parser)
    add_data_dir_argument(parser)
    parser.set_defaults(func=run)


def _label(loaded, used) -> str:
    base = f"{loaded.config.dataset}-resnet{loaded.config.depth}-{loaded.config.objective}"
    label, i = base, 2
    while label in used:
        label, i = f"{base}-{i}", i + 1
    used.add(label)
    return label


def _check(args) -> None:
    check_detector_options(args)
    for name in ("n", "batch_size", "binary_search_steps", "max_iters", "pgd_steps", "restarts", "attack_bank_size"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if any(e < 0 for e in args.eps):
        raise InputError(f"--eps values must be >= 0, got {args.eps}")


def _cw_settings(args) -> dict:
    return {"binary_search_steps": args.binary_search_steps, "max_iters": args.max_iters, "lr": args.lr,
            "initial_const": args.initial_const, "attack_bank_size": args.attack_bank_size, "l2_from": args.l2_from,
            "abort_early": args.abort_early, "phase1_binary_search_steps": args.phase1_binary_search_steps,
            "phase1_max_iters": args.phase1_max_iters}


def run(args) -> int:
    import torch

    from .. import __version__
    from ..checkpoints import atomic_write_json, load_checkpoint
    from ..data import load_dataset
    from ..devices import resolve_device
    from ..evaluation.threat_models import adaptive_curve, transfer_table, white_box_row

    _check(args)
    tables = args.tables or (["table3", "table2", "adaptive"] + (["table4"] if args.targets else []))
    if "table4" in tables and not args.targets:
        raise InputError("--tables table4 needs --targets CHECKPOINT [...] "
                         "(the attacked models, ResNet-56 in the paper)")
    device = resolve_device(args.device)
    used = set()
    models = [(path, load_checkpoint(path, device=device)) for path in args.checkpoints]
    labels = {path: _label(loaded, used) for path, loaded in models}
    targets = [(path, load_checkpoint(path, device=device)) for path in args.targets]
    target_labels = {path: _label(loaded, used) for path, loaded in targets}
    datasets = {loaded.config.dataset for _, loaded in models + targets}
    if len(datasets) != 1:
        raise InputError(f"all checkpoints must be of one dataset, got {', '.join(sorted(datasets))}")
    data = load_dataset(datasets.pop(), "test", args.data_dir)
    start = args.calibration_size if args.start is None else args.start
    index = heldout_test_index(models[0][1], args, args.n, start)
    x, y = data.float_images(index).to(device), data.labels[index].to(device)
    output = Path(args.output) if args.output else models[0][1].directory / "threat-models.json"
    report = {
        "rcedetect_version": __version__, "torch_version": torch.__version__, "device": str(device),
        "images": {"split": "test", "permutation_seed": args.split_seed, "start": start, "n": args.n,
                   "index": [int(i) for i in index]},
        "seed": args.seed,
        "detectors": {"fpr": args.fpr, "n_per_class": args.n_per_class, "calibration_size": args.calibration_size,
                      "permutation_seed": args.split_seed},
        "cw_wb_settings": _cw_settings(args),
        "adaptive_settings": {"eps": args.eps, "norm": args.norm, "steps": args.pgd_steps,
                              "restarts": args.restarts, "methods": args.methods, "metrics": args.metrics},
        "checkpoints": {labels[p]: str(m.directory) for p, m in models},
        "targets": {target_labels[p]: str(m.directory) for p, m in targets},
    }

    def save():
        atomic_write_json(output, report)

    settings = _cw_settings(args)
    table3_examples = {}  # kappa-0 C&W-wb examples, reused as Table 4's (same images, seed and settings)
    for table, kappa in (("table3", 0.0), ("table2", 5.0)):
        if table not in tables:
            continue
        report[table] = {}
        for path, loaded in models:
            kd = detector_for(loaded, "kd", args, device)
            t0 = time.perf_counter()
            row, result = white_box_row(loaded.model, kd, x, y, kappa=kappa, seed=args.seed,
                                        batch_size=args.batch_size, return_result=True, **settings)
            if kappa == 0.0:
                table3_examples[labels[path]] = result
            row["objective"], row["depth"] = loaded.config.objective, loaded.config.depth
            report[table][labels[path]] = row
            save()
            _print_white_box(table, labels[path], row, time.perf_counter() - t0)
    if "table4" in tables:
        substitutes = {labels[p]: (m.model, detector_for(m, "kd", args, device)) for p, m in models}
        judged = {target_labels[p]: (m.model, detector_for(m, "kd", args, device)) for p, m in targets}
        report["table4"] = transfer_table(substitutes, judged, x, y, kappa=0.0, seed=args.seed,
                                           batch_size=args.batch_size, precomputed=table3_examples, **settings)
        save()
        for sub, row in report["table4"]["pairs"].items():
            for tgt, cell in row.items():
                rate, auc = cell["transfer_rate_percent"], cell["auc"]
                print(f"table4 {sub} -> {tgt}: fed {cell['n_fed']}, transfer "
                      f"{'n/a' if rate is None else f'{rate:.1f} %'}, AUC {'n/a' if auc is None else f'{auc:.3f}'} "
                      f"(n={cell['n_counted']})")
    if "adaptive" in tables:
        report["adaptive"] = {}
        for path, loaded in models:
            detectors = {m: detector_for(loaded, m, args, device) for m in args.metrics}
            curve = adaptive_curve(loaded.model, detectors, x, y, eps_values=args.eps, norm=args.norm,
                                   steps=args.pgd_steps, restarts=args.restarts, methods=tuple(args.methods),
                                   seed=args.seed)
            curve["objective"], curve["depth"] = loaded.config.objective, loaded.config.depth
            report["adaptive"][labels[path]] = curve
            save()
            eps = " ".join(f"{e:g}" for e in curve["eps"])
            print(f"adaptive {labels[path]} ({args.norm}, eps {eps}): robust accuracy with rejection")
            for metric, c in curve["curves"].items():
                print(f"  {metric:<11}" + " ".join(f"{v:6.1%}" for v in c["robust_accuracy_with_rejection"]))
            if "undefended" in curve:
                print(f"  {'undefended':<11}" + " ".join(f"{v:6.1%}" for v in curve["undefended"]["robust_accuracy"]))
    save()
    print(f"-> {output}")
    if getattr(args, "json_stdout", False):
        print(json.dumps(report, indent=2))
    return 0


def _print_white_box(table, label, row, seconds) -> None:
    ratio, dist = row["ratio_f2_positive_percent"], row["mean_distortion"]
    print(f"{table} {label} (kappa {row['kappa']:g}): counted {row['n_counted']}/{row['n']}, f2 > 0 "
          f"{'n/a' if ratio is None else f'{ratio:.1f} %'}, distortion {'n/a' if dist is None else f'{dist:.2f}'}, "
          f"{seconds / row['n']:.3g} s/example")
