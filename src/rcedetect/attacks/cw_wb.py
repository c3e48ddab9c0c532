"""C&W-wb: the white-box C&W-L2 attack on a classifier *and* its K-density detector.

Carlini & Wagner 2017b ("Adversarial examples are not easily detected"), as adopted by Pang et al.
2018, section 4.4 (Table 3) and appendix B.4 (C&W-wb-hc, kappa=5, appendix Table 2). Distance: L2 in
[0, 1] pixel units. Targeted: towards `target` (default: a seeded random class != y, the paper's
protocol).

Two phases (Carlini's two-phase procedure):
  1. ordinary C&W-L2 towards the target t (`cw_l2_search`), giving x1;
  2. C&W-L2 again, starting from x1, with the detector term added inside the c-weighted part,

        minimise  ||x* - x_ref||²  +  c * ( max(max_{i!=t} Z_i - Z_t, -kappa) + f2(x*) )
        f2(x*) = max( -log KD_t(x*) - eta_t, 0 )

     where KD_t is the kernel density (Gaussian kernel exp(-||z - z_i||²/σ²), σ² of the detector) of
     the 64-d features z(x*) against an *attack bank*: `attack_bank_size` (paper: 100) training
     features of class t drawn (seeded) from the detector's own bank.

An example succeeds when it is classified as t with logit margin > kappa AND f2 <= 0, i.e. its
K-density is above the median density of the training points of class t ("greater than half of the
values on the training data", section 4.4). Note: f2 <= 0 is stricter than passing the detector's
FPR-5 % threshold.

eta (documented precisely, since the paper only says "the median of -log KD on the training set"):
  * attack eta_t: the median, over the training features of class t in the *detector's* bank (1 000
    random training points per class), of -log KD_t computed against the attack bank, self-kernels
    kept -- the authors' MATLAB `median_for_attack.m` (which takes all training points of class t;
    the detector's 1 000 are a random subset of them, so the two medians estimate the same value);
  * evaluation eta_t (for `f2`, `success`): the same median with the detector's full bank, leave-
    one-out (every point of the bank leaves its own kernel out, else each would count exp(0) = 1).
The authors' Table 3 ratio is computed with the attack bank and its eta (`f2_attack`); the full-bank
`f2` is the stricter check of the detector an evaluator actually deploys.

L2 reference of phase 2 (`l2_from`): "clean" (default) measures ||x* - x|| from the clean input, so
the binary search minimises the distortion the paper reports; "phase1" measures it from x1, as the
authors' code (`CarliniL2_specific`: the L2 term is taken to the image it is given, which is the
phase-1 result), which lets phase 2 drift further from x.

Examples that never reach f2 <= 0 come back as the phase-2 point that fooled the classifier (margin
> kappa) with the smallest attack f2 (as the authors' code returns), else the phase-1 result, else
the clean input; `fooled` / `f2` tell these cases apart (Table 3 counts the ratio of f2 > 0 among
the examples that fool the classifier).

Defaults: the paper's C&W budget (appendix B.2) for both phases: 9 binary-search steps x 10 000 Adam
iterations, lr 1e-2; initial c = 1.0 as the authors' C&W-wb code (their phase 1 ran 3 x 5 000 and
phase 2 8 x 10 000 iterations; pass `phase1_*` to reproduce that). Both phases run batched with
`cw_l2_search`'s per-example early abort.
"""

from typing import NamedTuple

import torch

from ..detectors.kernel_density import DEFAULT_CHUNK_SIZE, KernelDensity
from ..errors import InputError
from ..names import AbortRule
from .cw import DEFAULT_ABORT_RULE, cw_l2_search, logit_margin
from .result import check_images, check_labels, check_positive, eval_mode, num_classes_of, random_targets

L2_REFERENCES = ("clean", "phase1")


class CWWBResult(NamedTuple):
    """Result of `cw_wb`; the first two fields are those of `AttackResult`.

    x_adv (N, C, H, W) in [0, 1]; success (N,) bool: classified as `target` with margin > kappa AND
    f2 <= 0 (detector's full bank); f2 (N,): f2(x_adv) with the detector's full bank and its leave-
    one-out eta; fooled (N,) bool: classified as `target` with margin > kappa (classifier alone);
    phase1_success (N,) bool: phase 1 reached the target; f2_attack (N,): f2(x_adv) with the attack
    bank and attack eta (the quantity the attack minimised); target (N,) the classes aimed at.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    f2: torch.Tensor
    fooled: torch.Tensor
    phase1_success: torch.Tensor
    f2_attack: torch.Tensor
    target: torch.Tensor


def kernel_density_of(detector) -> KernelDensity:
    """The fitted `KernelDensity` of `detector`: itself, or the metric of a `ThresholdDetector`."""
    if isinstance(detector, KernelDensity):
        kd = detector
    else:  # a ThresholdDetector: the metric it scores with (fitted copy after fit, else as given)
        kd = getattr(detector, "metric_", getattr(detector, "metric", None))
    if not isinstance(kd, KernelDensity):
        raise InputError(f"C&W-wb attacks the K-density detector: pass a fitted KernelDensity or a "
                         f"ThresholdDetector with the 'kd' metric, got {detector!r}")
    if not hasattr(kd, "bank_"):
        raise InputError("the K-density detector is not fitted: call fit(train_output, train_labels) first")
    return kd


def attack_bank(detector, size: int = 100, *, seed: int = 0):
    """A seeded random subset of `size` points per class of the detector's bank.

    Returns (KernelDensity over the subset with the detector's σ², membership (M,) long: for every
    point of the detector's bank its row in the subset bank, or -1).
    """
    kd = kernel_density_of(detector)
    if not isinstance(size, int) or isinstance(size, bool) or size < 2:
        raise InputError(f"attack_bank_size must be an integer >= 2, got {size!r}")
    gen = torch.Generator().manual_seed(int(seed))
    rows = []
    for part in kd.class_slices():
        n = part.stop - part.start
        rows.append(torch.randperm(n, generator=gen)[:size].sort().values + part.start)
    rows = torch.cat(rows)
    member = torch.full((kd.bank_.shape[0],), -1, dtype=torch.long)
    member[rows] = torch.arange(rows.numel())
    # The attack's own K-density: the detector's σ²; default chunking, as the attack always used.
    sub = kd.subset(rows, n_per_class=size, seed=int(seed), chunk_size=DEFAULT_CHUNK_SIZE)
    return sub, member


def _median_neg_log_kd(queries, bank, same, bandwidth_sq: float, chunk: int = 1024) -> float:
    """median_j of -log mean_i exp(-||q_j - b_i||²/σ²) in float64, leaving out b_{same[j]} (same[j] >= 0)."""
    q, b = queries.double(), bank.double()
    center = b.mean(0)
    q, b = q - center, b - center  # translation invariant; keeps the ||q||²+||b||²-2qb expansion accurate
    b_sq = (b * b).sum(1)
    values = []
    for start in range(0, q.shape[0], chunk):
        qc, sc = q[start:start + chunk], same[start:start + chunk]
        d2 = ((qc * qc).sum(1, keepdim=True) + b_sq - 2.0 * qc @ b.T).clamp_min(0.0)
        s = -d2 / bandwidth_sq
        own = sc >= 0
        count = torch.full((qc.shape[0],), float(b.shape[0]), dtype=torch.float64)
        if own.any():
            s[own.nonzero().squeeze(1), sc[own]] = float("-inf")
            count[own] -= 1
        values.append(-(torch.logsumexp(s, 1) - count.log()))
    return float(torch.quantile(torch.cat(values), 0.5))  # quantile 0.5 = median, even counts averaged


def attack_eta(detector, attack_kd: KernelDensity, member: torch.Tensor, *, leave_one_out: bool = False) -> torch.Tensor:
    """Per-class eta (C,) float64 for the attack bank (see the module docstring).

    eta_c = median over the class-c training points of the detector's bank of -log KD_c against the
    attack bank. `leave_one_out=False` (default) keeps the self-kernel exp(0) of the points that are
    also in the attack bank, as the authors' `median_for_attack.m` does; True leaves it out.
    """
    kd = kernel_density_of(detector)
    bank = kd.bank_.detach().cpu()
    sub = attack_kd.bank_.detach().cpu()
    out = []
    for part, sub_part in zip(kd.class_slices(), attack_kd.class_slices()):
        if leave_one_out:
            same = member[part].clone()
            same[same >= 0] -= sub_part.start  # row inside this class's attack bank
        else:
            same = torch.full((part.stop - part.start,), -1, dtype=torch.long)
        out.append(_median_neg_log_kd(bank[part], sub[sub_part], same, kd.bandwidth_sq))
    return torch.tensor(out, dtype=torch.float64)


def detector_eta(detector) -> torch.Tensor:
    """Per-class eta (C,) float64 of the detector's full bank: leave-one-out median of -log KD_c
    over the bank's own class-c points (the evaluation eta of `cw_wb`)."""
    kd = kernel_density_of(detector)
    bank = kd.bank_.detach().cpu()
    out = []
    for part in kd.class_slices():
        n = part.stop - part.start
        if n < 2:
            raise InputError(f"the K-density bank has {n} point(s) in a class: leave-one-out needs 2 or more")
        out.append(_median_neg_log_kd(bank[part], bank[part], torch.arange(n), kd.bandwidth_sq))
    return torch.tensor(out, dtype=torch.float64)


def f2_loss(kd: KernelDensity, features: torch.Tensor, classes: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """f2 = max(-log KD_class(features) - eta[class], 0), (N,), differentiable w.r.t. features."""
    eta_rows = eta.to(device=features.device, dtype=features.dtype)[classes]
    return (-kd.log_density_for_class(features, classes) - eta_rows).clamp(min=0.0)


def _as_eta(eta, num_classes: int) -> torch.Tensor:
    eta = torch.as_tensor(eta, dtype=torch.float64).cpu()
    if eta.dim() == 0:
        eta = eta.expand(num_classes).clone()
    if eta.shape != (num_classes,) or not torch.isfinite(eta).all():
        raise InputError(f"eta must be a finite number or one value per class ({num_classes},), got {tuple(eta.shape)}")
    return eta


def cw_wb(model, x: torch.Tensor, y: torch.Tensor, detector, *, target=None, kappa: float = 0.0,
          attack_bank_size: int = 100, eta=None, l2_from: str = "clean", binary_search_steps: int = 9,
          max_iters: int = 10000, lr: float = 1e-2, initial_const: float = 1.0, phase1_binary_search_steps=None,
          phase1_max_iters=None, phase1_initial_const=None, abort_early: bool = True,
          abort_rule=DEFAULT_ABORT_RULE, attack_eta_leave_one_out: bool = False, seed: int = 0, start: int = 0,
          progress: bool = False) -> CWWBResult:
    """C&W-wb (Carlini & Wagner 2017b; Pang et al. 2018 section 4.4) on images `x` (N, C, H, W) in [0, 1].

    Args:
        model: classifier with `forward_features(x) -> ModelOutput(logits, features)`.
        y: true labels (N,); targets are drawn from them when `target` is None.
        detector: fitted `KernelDensity` or `ThresholdDetector` over one (the K-density detector).
        target: classes to reach (N,), != y. Default: `random_targets(y, L, seed, start=start)`, `start`
            being the global index of row 0 (the same targets in any chunking).
        kappa: logit margin (0: C&W-wb; 5: the high-confidence C&W-wb-hc of appendix B.4).
        attack_bank_size: training points per class in the attack's KD (paper: 100), seeded by `seed`.
        eta: override the attack's eta (a float or (C,) per class); the evaluation eta is always
            `detector_eta(detector)`.
        l2_from: "clean" (default) or "phase1" (the authors' code): where phase 2 measures L2 from.
        binary_search_steps, max_iters, lr, initial_const: C&W settings of phase 2 (and of phase 1
            unless `phase1_*` are given).
        abort_early, abort_rule: per-example early abort of `cw_l2_search` (both phases).
        attack_eta_leave_one_out: leave the self-kernel of attack-bank members out of the attack eta
            (default False: kept, as the authors' `median_for_attack.m`).
    Returns `CWWBResult` (x_adv, success, f2, fooled, phase1_success, f2_attack, target).
    """
    check_images(x)
    check_positive(kappa, "kappa", allow_zero=True)
    for name, value in (("binary_search_steps", binary_search_steps), ("max_iters", max_iters), ("lr", lr),
                        ("initial_const", initial_const)):
        check_positive(value, name)
    abort_rule = AbortRule.coerce(abort_rule, "abort rule")
    if l2_from not in L2_REFERENCES:
        raise InputError(f"l2_from must be one of {', '.join(L2_REFERENCES)}, got {l2_from!r}")
    phase1 = {
        "binary_search_steps": int(binary_search_steps if phase1_binary_search_steps is None
                                   else phase1_binary_search_steps),
        "max_iters": int(max_iters if phase1_max_iters is None else phase1_max_iters),
        "initial_const": float(initial_const if phase1_initial_const is None else phase1_initial_const),
    }
    for name, value in phase1.items():
        check_positive(value, f"phase1_{name}")
    kd = kernel_density_of(detector)
    n, device = x.shape[0], x.device
    with eval_mode(model):
        num_classes = num_classes_of(model, x)
        check_labels(y, n, "y", num_classes)
        if kd.num_classes != num_classes:
            raise InputError(f"the K-density bank has {kd.num_classes} classes, the model {num_classes}: "
                             f"fit the detector on this model's training features")
        if target is None:
            target = random_targets(y, num_classes, seed, start=start)
        check_labels(target, n, "target", num_classes)
        y, target = y.to(device), target.to(device)
        if (target == y).any():
            raise InputError("target equals the true label for some inputs: pick targets != y "
                             "(e.g. random_targets(y, num_classes, seed))")

        sub_kd, member = attack_bank(kd, attack_bank_size, seed=seed)
        eta_attack = attack_eta(kd, sub_kd, member, leave_one_out=attack_eta_leave_one_out) if eta is None else _as_eta(eta, num_classes)
        sub_kd.to(device)
        eta_device = eta_attack.to(device=device, dtype=x.dtype)  # once, not in every iteration's f2_loss

        # Phase 1: ordinary C&W-L2 to the target.
        p1 = cw_l2_search(model, x, target, targeted=True, kappa=float(kappa), lr=float(lr),
                          abort_early=abort_early, abort_rule=abort_rule, progress=progress, **phase1)

        # Phase 2, from x1 with the K-density term. The loss callback stores its f2 so the success
        # callback of the same iteration (same points, same rows `idx`) need not recompute it; the
        # success callback also keeps, per example, the classifier-fooling point with the smallest f2
        # (returned when f2 <= 0 is never reached, as the authors' code does).
        fallback_x = p1.x_adv.clone()
        fallback_f2 = torch.full((n,), float("inf"), device=device, dtype=x.dtype)
        last = {}

        def extra_loss(x_adv, logits, features, idx):
            f2 = f2_loss(sub_kd, features, target[idx], eta_device)
            last["idx"], last["f2"] = idx, f2.detach()
            return f2

        def extra_success(x_adv, logits, features, idx):
            if last.get("idx") is idx:
                f2 = last["f2"]
            else:
                f2 = f2_loss(sub_kd, features, target[idx], eta_device)
            fooled = logit_margin(logits, target[idx], True) > kappa
            better = fooled & (f2 < fallback_f2[idx])
            rows = idx[better]
            fallback_f2[rows] = f2[better]
            fallback_x[rows] = x_adv[better]
            return f2 <= 0

        p2 = cw_l2_search(model, x, target, targeted=True, kappa=float(kappa),
                          binary_search_steps=int(binary_search_steps), max_iters=int(max_iters), lr=float(lr),
                          initial_const=float(initial_const), abort_early=abort_early, abort_rule=abort_rule,
                          x_start=p1.x_adv,
                          x_ref=x if l2_from == "clean" else p1.x_adv, extra_loss=extra_loss,
                          extra_success=extra_success, progress=progress)
        x_adv = torch.where(p2.found.view(-1, *([1] * (x.dim() - 1))), p2.x_adv, fallback_x)

        # Evaluation on the returned images: the classifier, and the detector's full bank.
        with torch.no_grad():
            out = model.forward_features(x_adv)
            fooled = logit_margin(out.logits, target, True) > kappa
            f2 = f2_loss(kd, out.features, target, detector_eta(kd))
            f2_attack = f2_loss(sub_kd, out.features, target, eta_attack)
            phase1_success = p1.found & (logit_margin(model(p1.x_adv), target, True) > kappa)
    return CWWBResult(x_adv, fooled & (f2 <= 0), f2, fooled, phase1_success, f2_attack, target)


class CWDetectorResult(NamedTuple):
    """Result of `cw_l2_detector`. x_adv (N, C, H, W): the smallest-L2 point found that is misclassified
    and accepted, else the clean x; success (N,) bool, re-checked on x_adv; l2, linf (N,): its distances
    from x in [0, 1] pixel units (inf where none was found); score (N,) detector scores of x_adv."""

    x_adv: torch.Tensor
    success: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor
    score: torch.Tensor


def cw_l2_detector(model, x: torch.Tensor, y: torch.Tensor, detector, *, kappa: float = 0.0,
                   binary_search_steps: int = 9, max_iters: int = 10000, lr: float = 1e-2,
                   initial_const: float = 1.0, abort_early: bool = True, abort_rule=DEFAULT_ABORT_RULE,
                   progress: bool = False) -> CWDetectorResult:
    """C&W-wb generalised to any differentiable detector score: untargeted C&W-L2 with the detector's
    hinge inside the c-weighted term (Carlini & Wagner 2017b's loss; Pang et al. 2018's C&W-wb is the
    K-density case with a target class),

        minimise ||x* - x||²  +  c * ( max(Z_y - max_{i!=y} Z_i, -kappa) + max(-(score(x*) - T) / s, 0) )

    T the detector's threshold, s `decision_scale(detector)`. An iterate counts when it is misclassified
    with margin > kappa AND accepted (score > T); the binary search over c keeps the smallest L2, so
    `l2` is the distortion this formulation needs to fool classifier + detector (the measure of the
    minimum-distortion tables). `detector`: a fitted `ThresholdDetector` whose `score_samples` takes
    a `ModelOutput(logits, features)`.
    """
    from ..models import ModelOutput
    from .adaptive_pgd import decision_scale

    check_images(x)
    check_positive(kappa, "kappa", allow_zero=True)
    for name, value in (("binary_search_steps", binary_search_steps), ("max_iters", max_iters), ("lr", lr),
                        ("initial_const", initial_const)):
        check_positive(value, name)
    abort_rule = AbortRule.coerce(abort_rule, "abort rule")
    if not hasattr(detector, "threshold_") or not hasattr(detector, "score_samples"):
        raise InputError("detector must be a fitted ThresholdDetector (score_samples and threshold_): "
                         "fit it with ThresholdDetector(metric).fit(..., calibration=clean_outputs)")
    threshold, scale = float(detector.threshold_), decision_scale(detector)
    n = x.shape[0]
    with eval_mode(model):
        check_labels(y, n, "y", num_classes_of(model, x))
        y = y.to(x.device)

        def extra_loss(x_adv, logits, features, idx):
            return (-(detector.score_samples(ModelOutput(logits, features)) - threshold) / scale).clamp(min=0.0)

        def extra_success(x_adv, logits, features, idx):
            return detector.score_samples(ModelOutput(logits, features)) > threshold

        out = cw_l2_search(model, x, y, targeted=False, kappa=float(kappa), binary_search_steps=int(binary_search_steps),
                           max_iters=int(max_iters), lr=float(lr), initial_const=float(initial_const),
                           abort_early=abort_early, abort_rule=abort_rule, extra_loss=extra_loss,
                           extra_success=extra_success, progress=progress)
        with torch.no_grad():
            res = model.forward_features(out.x_adv)
            score = detector.score_samples(res)
            success = out.found & (res.logits.argmax(1) != y) & (score > threshold)
            delta = (out.x_adv - x).flatten(1)
            inf = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
            l2 = torch.where(success, delta.norm(dim=1), inf)
            linf = torch.where(success, delta.abs().max(dim=1).values, inf)
            x_adv = torch.where(success.view(-1, 1, 1, 1), out.x_adv, x)
            score = detector.score_samples(model.forward_features(x_adv))
    return CWDetectorResult(x_adv, success, l2, linf, score)
