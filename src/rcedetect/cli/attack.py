"""`rcedetect attack`: craft adversarial examples for test images against a trained checkpoint.

    rcedetect attack runs/mnist_rce --attack cw --n 1000 --out adv/cw.safetensors

Writes a safetensors file (readable without unpickling: `rcedetect.attacks.load_adversarial`) with
the tensors x (clean, float [0, 1]), x_adv, labels, success, clean_pred, adv_pred, index (rows of the
split) and, for targeted attacks, targets; plus a JSON sidecar (same name, .json) holding the attack
name, its settings, the seed, the checkpoint, timing and summary statistics. Random targets are drawn
from --seed and each row's global index, so --batch-size never changes them.
"""

import time

from ..names import AbortRule, Attack, TargetRule
from . import _threat_models
from ._common import chosen_settings

# CLI option -> (attack keyword, attacks it applies to). Options left unset keep the attack's defaults.
_CW = (Attack.CW, Attack.CW_HC)
SETTINGS = {
    "steps": ("steps", (Attack.BIM, Attack.ILCM)),
    "step_size": ("step_size", (Attack.BIM, Attack.ILCM)),
    "theta": ("theta", (Attack.JSMA,)),
    "gamma": ("gamma", (Attack.JSMA,)),
    "max_iters": ("max_iters", (Attack.JSMA, *_CW)),
    "kappa": ("kappa", _CW),
    "binary_search_steps": ("binary_search_steps", _CW),
    "lr": ("lr", _CW),
    "initial_const": ("initial_const", _CW),
    "abort_early": ("abort_early", _CW),
    "abort_rule": ("abort_rule", _CW),
    "jsma_output": ("output", (Attack.JSMA,)),
    "jsma_mode": ("mode", (Attack.JSMA,)),
    "jsma_targets": ("targets", (Attack.JSMA,)),
}


def register(subparsers) -> None:
    from ..attacks import ATTACKS
    from ._common import add_checkpoint_argument, add_data_dir_argument, add_device_argument

    parser = subparsers.add_parser(
        "attack", help="craft adversarial examples against a checkpoint",
        description="Run one of the paper's attacks (section 2.3, appendix B.2-B.3) on test images and save "
                    "the adversarial examples with clean inputs, labels, targets and success flags.")
    add_checkpoint_argument(parser)
    parser.add_argument("--attack", required=True, choices=Attack.choices(),
                        help="; ".join(f"{name}: {spec.description}" for name, spec in ATTACKS.items())
                        + "; cw-wb / cw-wb-hc: white-box C&W against the K-density detector (kappa 0 / 5); "
                          "adaptive-pgd: PGD against classifier + --detector")
    parser.add_argument("--eps", type=float, default=None,
                        help="L-inf budget in [0, 1] pixel units (fgsm, bim, ilcm, adaptive-pgd), noise amplitude "
                             "(rand) or jsma's per-feature change theta")
    parser.add_argument("--n", type=int, default=1000, help="number of test images to attack (default: 1000)")
    parser.add_argument("--start", type=int, default=0, help="first test image (default: 0)")
    parser.add_argument("--split", choices=("test", "train"), default="test")
    parser.add_argument("--out", required=True, help="output file (.safetensors; a .json sidecar is written beside it)")
    parser.add_argument("--seed", type=int, default=0, help="seed for random targets and noise (default: 0)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per batch (default: 500 for fgsm/bim/ilcm/rand, 100 for jsma/cw)")
    group = parser.add_argument_group("attack settings (default: the paper's)")
    group.add_argument("--steps", type=int, help="bim/ilcm iterations (default 10)")
    group.add_argument("--step-size", type=float, help="bim/ilcm step (default eps/steps)")
    group.add_argument("--theta", type=float, help="jsma feature change (default +1)")
    group.add_argument("--gamma", type=float, help="jsma largest fraction of changed features (default: no cap)")
    group.add_argument("--jsma-mode", choices=("single", "pair"),
                       help="jsma: the authors' single-feature map (default) or Papernot's pairwise map")
    group.add_argument("--jsma-targets", choices=TargetRule.choices(),
                       help="jsma: aim at the least-likely class (default, the authors') or a random class")
    group.add_argument("--jsma-output", choices=("probs", "logits"), help="jsma saliency on softmax (default) or logits")
    group.add_argument("--max-iters", type=int, help="jsma iterations (100) or C&W steps per binary step (10000)")
    group.add_argument("--kappa", type=float, help="C&W confidence margin (cw 0, cw-hc 10)")
    group.add_argument("--binary-search-steps", type=int, help="C&W binary search steps over c (default 9)")
    group.add_argument("--lr", type=float, help="C&W Adam learning rate (default 0.01)")
    group.add_argument("--initial-const", type=float, help="C&W initial c (default 0.001, Carlini's; the presets use the authors' 1.0)")
    group.add_argument("--no-abort-early", dest="abort_early", action="store_const", const=False, default=None,
                       help="C&W: run every iteration even when the loss has stopped improving")
    group.add_argument("--abort-rule", choices=AbortRule.choices(),
                       help="C&W family (cw, cw-hc, cw-wb, cw-wb-hc): when a binary step ends early, per example: window (default: the best loss since the last "
                            "check, checks >= 50 iterations apart), example (the loss at the check, as Carlini; fewer "
                            "iterations, a few %% more L2 at large lr), none")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    add_device_argument(parser)
    add_data_dir_argument(parser)
    _threat_models.add_arguments(parser)
    parser.set_defaults(func=run)


def check_arguments(args, attack) -> None:
    """Every option and input of `rcedetect attack`, before the checkpoint's weights or any data are
    loaded (ranges per attack and norm, the image range against the split, the output paths)."""
    from .. import validate
    from ..attacks import ATTACKS
    from ..data import DATASETS, split_size
    from ..errors import InputError
    from ..evaluation.threat_models import THREAT_MODEL_ATTACKS
    from ..names import Metric, Norm
    from ._common import check_options, checkpoint_dataset

    check_options(args)
    threat = attack in THREAT_MODEL_ATTACKS
    if not threat:
        for option in ("detector", "substitute"):
            if getattr(args, option, None) is not None:
                raise InputError(f"--{option} applies only to --attack {', '.join(map(str, THREAT_MODEL_ATTACKS))}"
                                 f" (the threat models), not to --attack {attack}: drop it")
    elif args.split != "test":
        raise InputError(f"--attack {attack} attacks test images only: drop --split")
    if attack in (Attack.CW_WB, Attack.CW_WB_HC) and args.detector not in (None, Metric.KD):
        raise InputError(f"--attack {attack} attacks the K-density detector: use --detector kd "
                         f"(adaptive-pgd attacks any metric)")
    config = checkpoint_dataset(args.checkpoint)
    info = DATASETS[config.dataset]
    if attack == Attack.ADAPTIVE_PGD:
        if args.eps is None:
            raise InputError(f"--attack {attack} needs --eps (radius in [0, 1] pixel units): e.g. --eps 0.1")
        validate.budget(args.eps, args.norm or Norm.LINF, "--eps",
                        dimension=info.in_channels * info.image_size ** 2, allow_zero=True)
    elif threat:
        if args.eps is not None:
            raise InputError(f"--eps does not apply to --attack {attack}: drop it")
    else:
        ATTACKS[attack].check_eps(args.eps, "--eps")
    validate.rows(args.start, args.n, split_size(config.dataset, args.split), what=f"{config.dataset} "
                  f"{args.split} images")
    if getattr(args, "substitute", None) is not None:
        sub = checkpoint_dataset(args.substitute, "--substitute")
        if sub.dataset != config.dataset:
            raise InputError(f"--substitute is a {sub.dataset} model, the checkpoint a {config.dataset} model: "
                             f"use models of the same dataset")
    out = validate.output_file(args.out, "--out", suffixes=(".safetensors",))
    validate.output_file(out.with_suffix(".json"), "--out (its .json sidecar)")


def run(args) -> int:
    from ..evaluation.threat_models import THREAT_MODEL_ATTACKS

    attack = Attack.coerce(args.attack)
    settings = chosen_settings(args, attack, (SETTINGS, _threat_models.SETTINGS))
    check_arguments(args, attack)
    if attack in THREAT_MODEL_ATTACKS:
        return _threat_models.run_threat_model_attack(args, settings)
    return _run_attack(args, settings)


def _run_attack(args, settings: dict) -> int:
    import torch
    from tqdm.auto import tqdm

    from .. import __version__
    from ..attacks import ATTACKS, save_adversarial
    from ..checkpoints import load_checkpoint
    from ..data import load_dataset
    from ..devices import resolve_device
    from ..errors import InputError

    attack = Attack.coerce(args.attack)
    spec = ATTACKS[attack]
    device = resolve_device(args.device)
    loaded = load_checkpoint(args.checkpoint, device=device)
    model = loaded.model
    data = load_dataset(loaded.config.dataset, args.split, args.data_dir)
    if args.start + args.n > len(data):
        raise InputError(f"--start {args.start} --n {args.n} runs past the {len(data)} {args.split} images: lower --n")
    batch_size = args.batch_size or (500 if spec.uses_eps else 100)
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")

    index = torch.arange(args.start, args.start + args.n)
    x_all = data.float_images(index)
    y_all = data.labels[index]
    keys = ("x_adv", "success", "clean_pred", "adv_pred") + (("targets",) if spec.targeted else ())
    chunks = {key: [] for key in keys}
    eps = {} if args.eps is None else {"eps": args.eps}
    bar = tqdm(total=args.n, desc=str(attack), unit="img", disable=not args.progress)
    started = time.perf_counter()
    done = succeeded = 0
    for begin in range(0, args.n, batch_size):
        x = x_all[begin:begin + batch_size].to(device)
        y = y_all[begin:begin + batch_size].to(device)
        # Random targets are functions of --seed and the rows' global indices (start), not of the
        # batch. RAND's noise takes no start: each batch keeps its own seed, as it always had.
        start = args.start + begin
        seed = {}
        if spec.uses_seed:
            seed = {"seed": args.seed if spec.draws_targets else args.seed + start}
        targets = spec.targets(model, x, y, seed=args.seed, start=start)
        result = spec(model, x, y, start=start, **eps, **seed, **settings)
        with torch.no_grad():
            chunks["clean_pred"].append(model(x).argmax(1).cpu())
            chunks["adv_pred"].append(model(result.x_adv).argmax(1).cpu())
        chunks["x_adv"].append(result.x_adv.detach().cpu())
        chunks["success"].append(result.success.cpu())
        if targets is not None:
            chunks["targets"].append(targets.cpu())
        done += x.shape[0]
        succeeded += int(result.success.sum())
        bar.update(x.shape[0])
        bar.set_postfix(success=f"{succeeded / done:.1%}")
    bar.close()
    seconds = time.perf_counter() - started

    tensors = {key: torch.cat(parts) for key, parts in chunks.items()}
    tensors.update(x=x_all, labels=y_all, index=index)
    diff = (tensors["x_adv"] - x_all).flatten(1)
    ok = tensors["success"]
    summary = {
        "success_rate": ok.float().mean().item(),
        "accuracy_on_adversarial": (tensors["adv_pred"] == y_all).float().mean().item(),
        "median_l2_successful": diff[ok].norm(dim=1).median().item() if ok.any() else None,
        "mean_linf_successful": diff[ok].abs().max(dim=1).values.mean().item() if ok.any() else None,
        "mean_changed_features_successful": (diff[ok] != 0).sum(1).float().mean().item() if ok.any() else None,
    }
    info = {
        "attack": attack, "settings": {**spec.defaults, **settings}, "eps": args.eps, "seed": args.seed,
        "targeted": spec.targeted, "checkpoint": str(loaded.directory), "dataset": loaded.config.dataset,
        "objective": loaded.config.objective, "split": args.split, "start": args.start, "n": args.n,
        "batch_size": batch_size, "device": str(device), "seconds": seconds, "seconds_per_example": seconds / args.n,
        "summary": summary, "rcedetect_version": __version__, "torch_version": torch.__version__,
    }
    path = save_adversarial(args.out, tensors, info)
    l2 = summary["median_l2_successful"]
    print(f"{attack}: {args.n} examples, success {summary['success_rate']:.1%}, "
          f"accuracy on adversarial {summary['accuracy_on_adversarial']:.1%}, "
          f"median L2 {'n/a' if l2 is None else f'{l2:.3f}'}, {seconds / args.n:.3g} s/example -> {path}")
    return 0
