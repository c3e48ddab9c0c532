"""The threat-model attacks inside `rcedetect attack` (not a sub-command of their own), and the detector
options shared with `rcedetect threat-models`.

    rcedetect attack CKPT --attack cw-wb --n 100 --out adv/cwwb.safetensors          # Table 3 (kappa 0)
    rcedetect attack CKPT --attack cw-wb-hc --n 100 --out adv/cwwb_hc.safetensors    # appendix B.4 (kappa 5)
    rcedetect attack TARGET56 --attack cw-wb --substitute SUB32 --out adv/transfer   # Table 4 cell
    rcedetect attack CKPT --attack adaptive-pgd --detector non-me --eps 0.1 --out adv/pgd

`cli/attack.py` calls `add_arguments(parser)` when it builds its parser and hands runs whose
`--attack` is in `THREAT_MODEL_ATTACKS` to `run_threat_model_attack(args)`, which only turns the
options into a call of `rcedetect.evaluation.threat_models.attack_checkpoint`, saves and prints. The
detectors are the ones `rcedetect detect` fits and saves beside each checkpoint (reused when their
settings match): K-density bank of `--n-per-class` training images per class, threshold rejecting
`--fpr` of the first `--calibration-size` images of a seeded permutation of the test set
(`--split-seed`). As the other attacks of `rcedetect attack`, the attacked images are
test[--start : --start + --n] in file order, so they may include calibration images (harmless for
crafting; `rcedetect threat-models` uses held-out ones).
"""

from types import MappingProxyType

from ..names import PAPER_METRICS, Attack, Metric, Norm, PGDMethod
from ._common import print_notes

# CLI option -> (keyword, attacks it applies to); unset options keep the attack's defaults.
_CW_WB = (Attack.CW_WB, Attack.CW_WB_HC)
SETTINGS = MappingProxyType({
    "max_iters": ("max_iters", _CW_WB),
    "binary_search_steps": ("binary_search_steps", _CW_WB),
    "lr": ("lr", _CW_WB),
    "initial_const": ("initial_const", _CW_WB),
    "abort_early": ("abort_early", _CW_WB),
    "abort_rule": ("abort_rule", _CW_WB),
    "kappa": ("kappa", _CW_WB),
    "attack_bank_size": ("attack_bank_size", _CW_WB),
    "l2_from": ("l2_from", _CW_WB),
    "phase1_binary_search_steps": ("phase1_binary_search_steps", _CW_WB),
    "phase1_max_iters": ("phase1_max_iters", _CW_WB),
    "steps": ("steps", (Attack.ADAPTIVE_PGD,)),
    "step_size": ("step_size", (Attack.ADAPTIVE_PGD,)),
    "norm": ("norm", (Attack.ADAPTIVE_PGD,)),
    "restarts": ("restarts", (Attack.ADAPTIVE_PGD,)),
    "pgd_method": ("method", (Attack.ADAPTIVE_PGD,)),
})


def add_detector_arguments(parser) -> None:
    """Options of the detectors fitted beside checkpoints (same meaning as in `rcedetect detect`)."""
    group = parser.add_argument_group("detectors (fitted on first use, saved beside each checkpoint)")
    group.add_argument("--fpr", type=float, default=0.05, help="clean rejection rate setting the threshold (0.05)")
    group.add_argument("--n-per-class", type=int, default=1000, help="K-density bank per class (default 1000)")
    group.add_argument("--calibration-size", type=int, default=5000,
                       help="clean test images setting the threshold: the first of a seeded permutation "
                            "(default 5000)")
    group.add_argument("--split-seed", type=int, default=0, help="seed of that test-set permutation (default 0)")
    group.add_argument("--refit", action="store_true", help="refit the detectors even if saved ones match")


def detector_settings(args):
    """The `DetectorSettings` of the options added by `add_detector_arguments` (and --data-dir)."""
    from ..detectors.session import DetectorSettings

    return DetectorSettings(fpr=args.fpr, n_per_class=args.n_per_class, calibration_size=args.calibration_size,
                            split_seed=args.split_seed, refit=args.refit, data_dir=args.data_dir)


def _fmt(value, spec: str, unit: str = "") -> str:
    """A number for a summary line; n/a when there was nothing to average over (None)."""
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def add_arguments(parser) -> None:
    """Add the options of cw-wb, cw-wb-hc and adaptive-pgd to the `rcedetect attack` parser.

    Reuses attack.py's --eps, --n, --start, --seed, --out, --batch-size, --steps, --step-size,
    --max-iters, --binary-search-steps, --lr, --initial-const, --kappa, --no-abort-early.
    """
    from ..attacks.cw_wb import L2_REFERENCES

    group = parser.add_argument_group("threat models: cw-wb, cw-wb-hc (C&W-wb, kappa 0 / 5), adaptive-pgd")
    group.add_argument("--detector", choices=[m.value for m in PAPER_METRICS], default=None,
                       help="detector attacked/judging (cw-wb: kd only; adaptive-pgd: any; default kd)")
    group.add_argument("--substitute", default=None, metavar="CHECKPOINT",
                       help="black-box transfer: craft on this checkpoint (with its own detector) and evaluate "
                            "on the positional checkpoint with ITS detector (Table 4)")
    group.add_argument("--attack-bank-size", type=int, help="cw-wb: training points per class in the attack's "
                                                            "K-density (default 100)")
    group.add_argument("--l2-from", choices=L2_REFERENCES,
                       help="cw-wb phase 2 measures L2 from the clean input (default) or the phase-1 image "
                            "(authors' code)")
    group.add_argument("--phase1-binary-search-steps", type=int, help="cw-wb phase 1 (default: as phase 2)")
    group.add_argument("--phase1-max-iters", type=int, help="cw-wb phase 1 (default: as phase 2)")
    group.add_argument("--norm", choices=(Norm.LINF.value, Norm.L2.value), help="adaptive-pgd ball (default linf)")
    group.add_argument("--restarts", type=int, help="adaptive-pgd random restarts (default 1)")
    group.add_argument("--pgd-method", choices=PGDMethod.choices(), help="adaptive-pgd update rule (default logit)")
    add_detector_arguments(parser)


def run_threat_model_attack(args, settings: dict) -> int:
    """`rcedetect attack --attack cw-wb|cw-wb-hc|adaptive-pgd ...`: craft, evaluate, save (safetensors + JSON).

    `settings`: the attack keywords the user set (`_common.chosen_settings`)."""
    from tqdm.auto import tqdm

    from ..attacks import save_adversarial
    from ..devices import resolve_device
    from ..errors import InputError
    from ..evaluation.threat_models import attack_checkpoint

    if args.split != "test":
        raise InputError(f"--attack {args.attack} attacks test images only: drop --split")
    bar = tqdm(total=args.n, desc=args.attack, unit="img", disable=not args.progress)
    succeeded = []

    def progress(done, part):
        succeeded.append(int(part.success.sum()))
        bar.update(done - bar.n)
        bar.set_postfix(success=f"{sum(succeeded) / done:.1%}")

    try:
        run = attack_checkpoint(args.checkpoint, args.attack, n=args.n, start=args.start, seed=args.seed,
                                eps=args.eps, metric=args.detector or Metric.KD, substitute=args.substitute,
                                detector_settings=detector_settings(args), batch_size=args.batch_size,
                                device=resolve_device(args.device), callback=progress, **settings)
    finally:
        bar.close()
    print_notes(run.notes)
    path = save_adversarial(args.out, run.tensors, run.info)
    info, summary = run.info, run.summary
    line = f"{args.attack} on {info['objective'].upper()} ResNet-{info['depth']}: {args.n} examples"
    if args.attack == Attack.ADAPTIVE_PGD:
        line += (f", {info['detector']} detector, eps {args.eps:g}: robust accuracy with rejection "
                 f"{summary['robust_accuracy_with_rejection']:.1%}")
    else:
        line += (f", fooled the classifier {_fmt(summary['classifier_success_percent'], '.1f', ' %')}, f2 > 0 on "
                 f"{_fmt(summary['ratio_f2_positive_percent'], '.1f', ' %')}, distortion "
                 f"{_fmt(summary['mean_distortion'], '.2f')} (0-255)")
    if "transfer" in info:
        t = info["transfer"]
        line += (f"; transfer to {t['target_objective'].upper()} ResNet-{t['target_depth']}: "
                 f"{_fmt(t['transfer_rate_percent'], '.1f', ' %')} misclassified, AUC {_fmt(t['auc'], '.3f')}")
    print(f"{line}; {info['seconds_per_example']:.3g} s/example -> {path}")
    return 0
