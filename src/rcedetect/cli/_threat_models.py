"""The threat-model attacks of issue 5 inside `rcedetect attack` (not a sub-command of its own).

    rcedetect attack CKPT --attack cw-wb --n 100 --out adv/cwwb.safetensors          # Table 3 (kappa 0)
    rcedetect attack CKPT --attack cw-wb-hc --n 100 --out adv/cwwb_hc.safetensors    # appendix B.4 (kappa 5)
    rcedetect attack TARGET56 --attack cw-wb --substitute SUB32 --out adv/transfer   # Table 4 cell
    rcedetect attack CKPT --attack adaptive-pgd --detector non-me --eps 0.1 --out adv/pgd

`cli/attack.py` calls `add_arguments(parser)` when it builds its parser and hands runs whose
`--attack` is in `ATTACK_NAMES` to `run_threat_model_attack(args)`. The detectors are the ones
`rcedetect detect` fits and saves beside each checkpoint (reused when their settings match):
K-density bank of `--n-per-class` training images per class, threshold rejecting `--fpr` of the first
`--calibration-size` images of a seeded permutation of the test set (`--split-seed`). As the other
attacks of `rcedetect attack`, the attacked images are test[--start : --start + --n] in file order, so
they may include calibration images (harmless for crafting; `rcedetect threat-models` uses held-out ones).
"""

import sys
import time
from types import MappingProxyType, SimpleNamespace

DETECTOR_NAMES = ("kd", "non-me", "confidence")
ATTACK_NAMES = ("cw-wb", "cw-wb-hc", "adaptive-pgd")
# name -> (family, fixed defaults)
ATTACK_FAMILIES = MappingProxyType({
    "cw-wb": ("cw-wb", MappingProxyType({"kappa": 0.0})),
    "cw-wb-hc": ("cw-wb", MappingProxyType({"kappa": 5.0})),
    "adaptive-pgd": ("adaptive-pgd", MappingProxyType({})),
})
# CLI option -> (keyword, families it applies to); unset options keep the attack's defaults.
SETTINGS = MappingProxyType({
    "max_iters": ("max_iters", ("cw-wb",)),
    "binary_search_steps": ("binary_search_steps", ("cw-wb",)),
    "lr": ("lr", ("cw-wb",)),
    "initial_const": ("initial_const", ("cw-wb",)),
    "abort_early": ("abort_early", ("cw-wb",)),
    "kappa": ("kappa", ("cw-wb",)),
    "attack_bank_size": ("attack_bank_size", ("cw-wb",)),
    "l2_from": ("l2_from", ("cw-wb",)),
    "phase1_binary_search_steps": ("phase1_binary_search_steps", ("cw-wb",)),
    "phase1_max_iters": ("phase1_max_iters", ("cw-wb",)),
    "steps": ("steps", ("adaptive-pgd",)),
    "step_size": ("step_size", ("adaptive-pgd",)),
    "norm": ("norm", ("adaptive-pgd",)),
    "restarts": ("restarts", ("adaptive-pgd",)),
    "pgd_method": ("method", ("adaptive-pgd",)),
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


def add_arguments(parser) -> None:
    """Add the options of cw-wb, cw-wb-hc and adaptive-pgd to the `rcedetect attack` parser.

    Reuses attack.py's --eps, --n, --start, --seed, --out, --batch-size, --steps, --step-size,
    --max-iters, --binary-search-steps, --lr, --initial-const, --kappa, --no-abort-early.
    """
    group = parser.add_argument_group("threat models: cw-wb, cw-wb-hc (C&W-wb, kappa 0 / 5), adaptive-pgd")
    group.add_argument("--detector", choices=DETECTOR_NAMES, default=None,
                       help="detector attacked/judging (cw-wb: kd only; adaptive-pgd: any; default kd)")
    group.add_argument("--substitute", default=None, metavar="CHECKPOINT",
                       help="black-box transfer: craft on this checkpoint (with its own detector) and evaluate "
                            "on the positional checkpoint with ITS detector (Table 4)")
    group.add_argument("--attack-bank-size", type=int, help="cw-wb: training points per class in the attack's "
                                                            "K-density (default 100)")
    group.add_argument("--l2-from", choices=("clean", "phase1"),
                       help="cw-wb phase 2 measures L2 from the clean input (default) or the phase-1 image "
                            "(authors' code)")
    group.add_argument("--phase1-binary-search-steps", type=int, help="cw-wb phase 1 (default: as phase 2)")
    group.add_argument("--phase1-max-iters", type=int, help="cw-wb phase 1 (default: as phase 2)")
    group.add_argument("--norm", choices=("linf", "l2"), help="adaptive-pgd ball (default linf)")
    group.add_argument("--restarts", type=int, help="adaptive-pgd random restarts (default 1)")
    group.add_argument("--pgd-method", choices=("logit", "selective", "orthogonal"),
                       help="adaptive-pgd update rule (default logit)")
    add_detector_arguments(parser)


def threat_model_settings(args) -> dict:
    """Attack keywords set on the command line; options for another attack are an InputError."""
    from ..errors import InputError

    family, defaults = ATTACK_FAMILIES[args.attack]
    settings = dict(defaults)
    for option, (keyword, applies_to) in SETTINGS.items():
        value = getattr(args, option, None)
        if value is None:
            continue
        if family not in applies_to:
            flag = "--no-abort-early" if option == "abort_early" else "--" + option.replace("_", "-")
            raise InputError(f"{flag} does not apply to --attack {args.attack}: drop it")
        settings[keyword] = value
    for option in ("theta", "gamma", "jsma_output"):
        if getattr(args, option, None) is not None:
            raise InputError(f"--{option.replace('_', '-')} does not apply to --attack {args.attack}: drop it")
    return settings


def detector_for(loaded, metric: str, opts, device):
    """The fitted ThresholdDetector for `metric` beside checkpoint `loaded` (fitted and saved if missing).

    `opts` needs data_dir, fpr, n_per_class, calibration_size, split_seed, refit. Shares its saving and
    reuse rules with `rcedetect detect` (its `_Session`).
    """
    return _session(loaded, opts, device).detector(metric)


def _session(loaded, opts, device):
    from .detect import _Session

    session_args = SimpleNamespace(data_dir=opts.data_dir, refit=opts.refit, fpr=opts.fpr,
                                   n_per_class=opts.n_per_class, bandwidth_sq=None,
                                   calibration_size=opts.calibration_size, split_seed=opts.split_seed,
                                   batch_size=500)
    return _Session(session_args, loaded, device)


def heldout_test_index(loaded, opts, n: int, start=None):
    """Indices of `n` test images held out from the threshold calibration: positions [start, start + n)
    of the seeded test permutation that `rcedetect detect` calibrates on (its first
    `calibration_size`); `start` defaults to `calibration_size`."""
    import torch

    from ..errors import InputError

    order = _session(loaded, opts, torch.device("cpu")).test_order()
    start = opts.calibration_size if start is None else start
    if start < 0 or start + n > order.numel():
        raise InputError(f"test images [{start}, {start + n}) of the permutation are outside the {order.numel()} "
                         f"test images: lower --n or --start")
    if start < opts.calibration_size:
        print(f"note: permuted test images [{start}, {start + n}) overlap the detectors' calibration images "
              f"[0, {opts.calibration_size})", file=sys.stderr)
    return order[start:start + n]


def check_detector_options(opts) -> None:
    from ..errors import InputError

    if not 0 <= opts.fpr < 1:
        raise InputError(f"--fpr must be in [0, 1), got {opts.fpr}")
    if opts.n_per_class < 2:
        raise InputError(f"--n-per-class must be >= 2, got {opts.n_per_class}")
    if opts.calibration_size < 1:
        raise InputError(f"--calibration-size must be >= 1, got {opts.calibration_size}")


def _run_batches(args, family, model, detector, x_all, y_all, settings, batch_size, device):
    """Run the attack over the images in batches; returns {name: concatenated CPU tensors}."""
    import torch
    from tqdm.auto import tqdm

    from ..attacks.adaptive_pgd import detector_aware_pgd
    from ..attacks.cw_wb import cw_wb

    parts = {}
    bar = tqdm(total=x_all.shape[0], desc=args.attack, unit="img", disable=not getattr(args, "progress", True))
    for begin in range(0, x_all.shape[0], batch_size):
        x = x_all[begin:begin + batch_size].to(device)
        y = y_all[begin:begin + batch_size].to(device)
        seed = args.seed + args.start + begin  # per-batch seeds, as the other attacks of `rcedetect attack`
        if family == "cw-wb":
            result = cw_wb(model, x, y, detector, seed=seed, **settings)
            fields = {"x_adv": result.x_adv, "success": result.success, "targets": result.target,
                      "f2": result.f2, "f2_attack": result.f2_attack, "fooled": result.fooled,
                      "phase1_success": result.phase1_success}
        else:
            if args.eps is None:
                from ..errors import InputError
                raise InputError("--attack adaptive-pgd needs --eps (radius in [0, 1] pixel units), e.g. --eps 0.1")
            result = detector_aware_pgd(model, x, y, detector, eps=args.eps, seed=seed, **settings)
            fields = {"x_adv": result.x_adv, "success": result.success, "targets": torch.full_like(y, -1),
                      "score": result.score}
        for key, value in fields.items():
            parts.setdefault(key, []).append(value.detach().cpu())
        bar.update(x.shape[0])
        bar.set_postfix(success=f"{float(torch.cat(parts['success']).float().mean()):.1%}")
    bar.close()
    return {key: torch.cat(value) for key, value in parts.items()}


def run_threat_model_attack(args) -> int:
    """`rcedetect attack --attack cw-wb|cw-wb-hc|adaptive-pgd ...`: craft, evaluate, save (safetensors + JSON)."""
    import torch

    from .. import __version__
    from ..attacks import save_adversarial
    from ..checkpoints import load_checkpoint
    from ..data import load_dataset
    from ..devices import resolve_device
    from ..errors import InputError
    from ..evaluation import robust_accuracy_with_rejection
    from ..evaluation.threat_models import summarize_white_box, transfer_evaluation

    family, _ = ATTACK_FAMILIES[args.attack]
    settings = threat_model_settings(args)
    check_detector_options(args)
    metric = args.detector or "kd"
    if family == "cw-wb" and metric != "kd":
        raise InputError(f"--attack {args.attack} attacks the K-density detector: use --detector kd "
                         f"(adaptive-pgd attacks any metric)")
    if family == "cw-wb" and args.eps is not None:
        raise InputError(f"--eps does not apply to --attack {args.attack}: drop it")
    if args.n < 1 or args.start < 0:
        raise InputError(f"--n must be >= 1 and --start >= 0, got --n {args.n} --start {args.start}")
    if getattr(args, "split", "test") != "test":
        raise InputError(f"--attack {args.attack} attacks test images only: drop --split")
    device = resolve_device(args.device)
    target = load_checkpoint(args.checkpoint, device=device)
    crafting = load_checkpoint(args.substitute, device=device) if args.substitute else target
    if crafting.config.dataset != target.config.dataset:
        raise InputError(f"--substitute is a {crafting.config.dataset} model, the checkpoint a "
                         f"{target.config.dataset} model: use models of the same dataset")
    data = load_dataset(target.config.dataset, "test", args.data_dir)
    if args.start + args.n > len(data):
        raise InputError(f"--start {args.start} --n {args.n} runs past the {len(data)} test images: lower --n")
    batch_size = args.batch_size or (100 if family == "cw-wb" else 500)
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    index = torch.arange(args.start, args.start + args.n)
    x_all, y_all = data.float_images(index), data.labels[index]

    crafting_detector = detector_for(crafting, metric, args, device)
    started = time.perf_counter()
    tensors = _run_batches(args, family, crafting.model, crafting_detector, x_all, y_all, settings, batch_size, device)
    seconds = time.perf_counter() - started

    from ..inference import batched_outputs

    craft_clean = batched_outputs(crafting.model, x_all, device=device).logits.argmax(1)
    craft_adv = batched_outputs(crafting.model, tensors["x_adv"], device=device)
    tensors.update(x=x_all, labels=y_all, index=index, clean_pred=craft_clean, adv_pred=craft_adv.logits.argmax(1))
    if family == "cw-wb":
        result = SimpleNamespace(**{k: tensors[k] for k in ("x_adv", "f2", "f2_attack", "fooled", "success",
                                                            "phase1_success")})
        summary = summarize_white_box(result, x_all, y_all, craft_clean)
    else:
        with torch.no_grad():
            scores = crafting_detector.score_samples(craft_adv).cpu()
        summary = {"robust_accuracy_with_rejection": robust_accuracy_with_rejection(
            y_all, tensors["adv_pred"], scores, crafting_detector.threshold_),
            "success_rate": float(tensors["success"].float().mean())}
    info = {
        "attack": args.attack, "settings": settings, "eps": args.eps, "seed": args.seed, "detector": metric,
        "detector_threshold": float(crafting_detector.threshold_), "fpr": args.fpr,
        "checkpoint": str(crafting.directory), "dataset": crafting.config.dataset,
        "objective": crafting.config.objective, "depth": crafting.config.depth, "split": "test",
        "start": args.start, "n": args.n, "batch_size": batch_size, "device": str(device), "seconds": seconds,
        "seconds_per_example": seconds / args.n, "summary": summary, "rcedetect_version": __version__,
        "torch_version": torch.__version__,
    }
    if args.substitute:
        # Black box: the examples that fooled the substitute, judged by the target with its OWN detector.
        target_detector = detector_for(target, metric, args, device)
        fed = (craft_clean == y_all) & (tensors["fooled"] if family == "cw-wb" else tensors["success"])
        if fed.any():
            transfer = transfer_evaluation(target.model, target_detector, x_all[fed].to(device),
                                           y_all[fed].to(device), tensors["x_adv"][fed].to(device))
        else:
            transfer = {"n": 0, "transfer_rate_percent": None, "auc": None}
        transfer.update(n_fed=int(fed.sum()), target_checkpoint=str(target.directory),
                        target_objective=target.config.objective, target_depth=target.config.depth,
                        target_detector_threshold=float(target_detector.threshold_))
        info["transfer"] = transfer
        tensors["fed"] = fed
    path = save_adversarial(args.out, tensors, info)
    line = f"{args.attack} on {crafting.config.objective.upper()} ResNet-{crafting.config.depth}: {args.n} examples"
    if family == "cw-wb":
        ratio, dist = summary["ratio_f2_positive_percent"], summary["mean_distortion"]
        line += (f", fooled the classifier {summary['classifier_success_percent']:.1f} %, f2 > 0 on "
                 f"{'n/a' if ratio is None else f'{ratio:.1f} %'}, distortion "
                 f"{'n/a' if dist is None else f'{dist:.2f}'} (0-255)")
    else:
        line += (f", {metric} detector, eps {args.eps:g}: robust accuracy with rejection "
                 f"{summary['robust_accuracy_with_rejection']:.1%}")
    if args.substitute:
        t = info["transfer"]
        rate, auc = t["transfer_rate_percent"], t["auc"]
        line += (f"; transfer to {t['target_objective'].upper()} ResNet-{t['target_depth']}: "
                 f"{'n/a' if rate is None else f'{rate:.1f} %'} misclassified, AUC "
                 f"{'n/a' if auc is None else f'{auc:.3f}'}")
    print(f"{line}; {seconds / args.n:.3g} s/example -> {path}")
    return 0
