"""Worst-case adaptive evaluation of classifier + detector (beyond Pang et al. 2018).

The defended system answers the predicted class when the detector accepts the input (score above its
threshold, set on held-out clean data at a fixed FPR) and NOT SURE otherwise. Following Carlini &
Wagner 2017b and Tramèr et al. 2020 ("On adaptive attacks to adversarial example defenses"), it is
attacked end to end with every formulation that might work, and an input counts as robust at eps
only if *none* of them finds a point of the eps-ball that is misclassified and accepted:

    logit, selective, orthogonal   detector-aware PGD (`attacks.adaptive_pgd`), each with restarts
    sum                            PGD on f + lambda * g (Carlini & Wagner 2017b's sum form), per lambda
    cw-l2                          C&W-L2 with the detector's hinge in its c-weighted term
                                   (`attacks.cw_wb.cw_l2_detector`: C&W-wb generalised to any score)
    natural-start                  the first PGD formulation, one run started from the nearest image
                                   (L2) of the batch that is of another class, classified correctly and
                                   accepted, projected into the ball (`natural_starts`); at a radius
                                   covering the box that image is itself a point that breaks the input

Any detector with a differentiable `score_samples(model_output)` can be attacked; the supervised
baselines (LID, Mahalanobis-LR) score tapped layers and enter as `detectors.attackable.TappedScore`
metrics, whose hooks stay attached for the whole evaluation. PGD runs in the L-inf and the L2 ball of every eps of the grid; C&W-L2 runs once, unbounded, and its
smallest-L2 success breaks an input at every eps whose ball contains it (L2 and L-inf distance).

    worst_case_examples(model, detectors, x, y, budget=WorstCaseBudget(...))  -> per-example tensors
    summarize_worst_case(tensors, budget=..., thresholds=..., ...)            -> JSON-able results

The split makes the evaluation chunkable: every tensor has one row per input, so a reproduction cell
attacks its images in cached chunks and concatenates them before summarising (exact). Per detector
the summary holds the robust accuracy with rejection vs eps for both norms (the worst case; a point
found at a smaller eps also lies in every larger ball, so the curve takes the running minimum), the
curve of every single attack, which attack broke each input first, the minimum distortion needed to
fool classifier + detector (per input the smallest L-inf / L2 eps of the grid broken, or C&W-L2's
distance if smaller; median over inputs, as the independent re-evaluation of RCE measured it) and
the gradient-masking checks of Carlini et al. 2019 ("On evaluating adversarial robustness") and
AutoAttack's `checks.py`:

    gradient        fraction of inputs whose detector-score gradient is zero or non-finite (0 passes)
    eps             robust accuracy (each eps attacked independently) non-increasing in eps
    steps           the worst case at full steps no better for the defender than one rule at half steps
    restarts        robust accuracy after 1..R restarts non-increasing (and what the last one bought)
    transfer        white-box at least as strong as the detector-oblivious transfer attack (PGD on the
                    classifier alone, its examples judged by classifier + detector)
    large_eps       at L-inf `large_eps` (1 = the whole box) the attacks break >= 95 % of inputs

All tolerances are one input (1/n). Deterministic under `seed`.
"""

import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..attacks.adaptive_pgd import NORMS, AcceptAll, detector_aware_pgd
from ..attacks.cw_wb import cw_l2_detector
from ..detectors.attackable import TappedScore
from ..errors import InputError
from ..inference import eval_mode
from ..names import Formulation, Norm, PGDMethod

DEFAULT_LAMBDAS = (0.1, 1.0, 10.0)
MIN_LARGE_EPS_SUCCESS = 0.95
PASS, FAIL, NA = "pass", "FAIL", "n/a"
CHECKS = ("gradient", "eps", "steps", "restarts", "transfer", "large_eps")
CHECK_MEANING = {
    "gradient": "a zero or non-finite gradient of the detector's score gives gradient attacks nothing to follow "
                "(gradient masking, e.g. a rounding step): the white-box numbers would overstate robustness",
    "eps": "a larger ball contains the smaller one, so robust accuracy must not rise with eps; a rise means the "
           "attack fails to find what it found at a smaller budget",
    "steps": "halving the steps must not make the attack stronger: if it does, the full-step attack does not "
             "converge (step size, masking)",
    "restarts": "robust accuracy after r restarts must not rise with r; a large gain from the last restart means "
                "more restarts would still help",
    "transfer": "a black-box (transfer) attack beating the white-box one is the classic sign of gradient masking",
    "large_eps": "at a radius covering the whole box every input can be mapped to an accepted image of another "
                 "class; an attack that fails there is too weak for any number below it to mean much",
}
_SLACK = 1e-9
NATURAL_START = "natural-start"  # the label of the natural-start attack in `WorstCaseBudget.attacks`


@dataclass(frozen=True, kw_only=True)
class WorstCaseBudget:
    """Budget of one worst-case evaluation (all keyword-only, JSON data).

    eps: {norm: radii} in [0, 1] pixel units (0 = the clean inputs, always included in the report);
    formulations: the attacks (`Formulation`); lambdas: the weights of the sum form; steps, restarts:
    of every PGD run (step size 2.5 eps / steps); cw: `cw_l2_detector` settings; cascade: attack at
    each eps only the inputs earlier attacks (in `attack_labels` order, C&W-L2 first) left unbroken
    -- the same worst case for less work, but no per-attack curves; large_eps: the L-inf radius of the
    large-eps check (None: skipped); check_steps: run the steps check (one rule at half steps);
    natural_start: add the natural-start attack (module docstring).
    """

    eps: dict = field(default_factory=lambda: {Norm.LINF.value: (0.0, 0.1, 0.2, 0.3),
                                               Norm.L2.value: (0.0, 1.0, 2.0, 3.0)})
    formulations: tuple = tuple(f.value for f in Formulation)
    lambdas: tuple = DEFAULT_LAMBDAS
    steps: int = 100
    restarts: int = 5
    cw: dict = field(default_factory=lambda: {"binary_search_steps": 5, "max_iters": 1000, "lr": 0.01,
                                              "initial_const": 1.0})
    cascade: bool = False
    large_eps: float = 1.0
    check_steps: bool = True
    natural_start: bool = True

    def __post_init__(self):
        for norm, grid in self.eps.items():
            if Norm.coerce(norm, "norm") not in NORMS:
                raise InputError(f"worst-case eps norms must be {' or '.join(NORMS)}, got {norm!r}")
            if not grid or any(not isinstance(e, (int, float)) or e < 0 for e in grid) or list(grid) != sorted(grid):
                raise InputError(f"eps[{norm!r}] must be increasing radii >= 0, got {list(grid)}")
        for f in self.formulations:
            Formulation.coerce(f, "formulation")
        if not self.formulations:
            raise InputError("formulations is empty: pass at least one, e.g. logit")
        if Formulation.SUM in self.formulations and (not self.lambdas or any(lam <= 0 for lam in self.lambdas)):
            raise InputError(f"the sum formulation needs lambdas > 0, got {list(self.lambdas)}")
        for name in ("steps", "restarts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be an integer >= 1, got {value!r}")
        if self.large_eps is not None and not 0 < self.large_eps <= 1:
            raise InputError(f"large_eps must be in (0, 1] (L-inf, pixel units) or None, got {self.large_eps!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["eps"] = {str(k): [float(e) for e in v] for k, v in self.eps.items()}
        d["formulations"], d["lambdas"] = [str(f) for f in self.formulations], [float(v) for v in self.lambdas]
        return d

    @property
    def attacks(self) -> list:
        """[(label, formulation, lambda)] in run order: C&W-L2 first (it also measures the distortion),
        then the PGD rules, the sum form once per lambda."""
        out = []
        forms = [Formulation.coerce(f) for f in self.formulations]
        if Formulation.CW_L2 in forms:
            out.append((Formulation.CW_L2.value, Formulation.CW_L2, None))
        for f in forms:
            if f == Formulation.SUM:
                out += [(sum_label(lam), f, float(lam)) for lam in self.lambdas]
            elif f != Formulation.CW_L2:
                out.append((f.value, f, None))
        pgd = [a for a in out if a[1] != Formulation.CW_L2]
        if self.natural_start and pgd:
            out.append((NATURAL_START, pgd[0][1], pgd[0][2]))
        return out

    @property
    def pgd_labels(self) -> list:
        return [label for label, f, _ in self.attacks if f != Formulation.CW_L2]


def sum_label(lam: float) -> str:
    return f"sum(lam={lam:g})"


def _check_detectors(detectors):
    if not detectors:
        raise InputError("pass at least one detector: {metric name: fitted ThresholdDetector}")
    for name, det in detectors.items():
        if not hasattr(det, "threshold_") or not hasattr(det, "score_samples"):
            raise InputError(f"detector {name!r} must be a fitted ThresholdDetector (score_samples and threshold_)")


def _system_breaks(model, detector, x_adv, y) -> torch.Tensor:
    """(N,) bool: x_adv misclassified and accepted by `detector` (re-checked, independent of the attack)."""
    with torch.no_grad():
        out = model.forward_features(x_adv)
        return (out.logits.argmax(1) != y) & (detector.score_samples(out) > float(detector.threshold_))


def _gradient_bad(model, detector, x) -> torch.Tensor:
    """(N,) bool: the gradient of the detector's score w.r.t. the input is all zero or not finite."""
    xa = x.detach().clone().requires_grad_(True)
    score = detector.score_samples(model.forward_features(xa))
    if not score.requires_grad:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    (g,) = torch.autograd.grad(score.sum(), xa, allow_unused=True)
    if g is None:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    g = g.flatten(1)
    return (~torch.isfinite(g).all(1)) | (g.abs().amax(1) == 0)


def natural_starts(model, detector, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W): per input, the nearest (L2) image of the batch with another label that the
    classifier gets right and the detector accepts -- a point of the natural-image manifold where the
    system answers another class; the input itself where the batch holds none."""
    with torch.no_grad():
        out = model.forward_features(x)
        eligible = (out.logits.argmax(1) == y) & (detector.score_samples(out) > float(detector.threshold_))
    return _nearest_eligible(x, y, eligible)


def _nearest_eligible(x, y, eligible) -> torch.Tensor:
    """`natural_starts` given the (N,) bool mask of batch images classified correctly and accepted."""
    with torch.no_grad():
        flat = x.flatten(1).double()
        dist = torch.cdist(flat, flat)
        dist[~(eligible[None, :] & (y[None, :] != y[:, None]))] = float("inf")
        nearest, j = dist.min(1)
        return torch.where(torch.isfinite(nearest)[:, None, None, None], x[j], x)


def _attack_rows(rows, run, n: int, device):
    """`run(rows)` (a `DetectorAwareResult` for those rows) scattered into (n,) success / restart tensors."""
    success = torch.zeros(n, dtype=torch.long, device=device)
    restart = torch.full((n,), -1, dtype=torch.long, device=device)
    if rows.numel():
        res = run(rows)
        success[rows] = res.success.long()
        restart[rows] = res.restart.long()
    return success, restart


def worst_case_examples(model, detectors, x: torch.Tensor, y: torch.Tensor, *, budget: WorstCaseBudget,
                        seed: int = 0, row_ids=None) -> dict:
    """Attack classifier + each detector with every formulation of `budget`; per-example tensors.

    row_ids: (N,) the inputs' ids in their run (default 0..N-1): an input's random starts depend on
    (seed, its id) only, so a chunked run equals an unchunked one except for the natural starts, which
    are chosen within the batch.

    detectors: {metric name: fitted ThresholdDetector} at their operating points. Returns {key: tensor
    with one row per input} (CPU): "correct" (clean prediction right), undefended.<norm> (N, E) PGD on
    the classifier alone breaks it (E = len(eps grid)), and per detector m: m.accepted (clean input
    accepted), m.grad_bad, m.cw_l2 / m.cw_linf (C&W-L2's distances, inf where it failed), per norm
    m.broken.<norm> (N, E) some attack broke it at that eps, m.first.<norm> (N, E) index into
    `budget.attacks` of the first attack that did (-1: none), m.by.<norm>.<label> (N, E) that attack
    did (rows it skipped under `cascade` count 0), m.restart.<norm> (N, E) fewest restarts a PGD rule
    needed (-1: none; 0: the clean input), m.transfer.<norm> (N, E) the undefended PGD example breaks
    the system, m.half.<norm> (N,) the first PGD rule at half steps broke it at `check_index(grid)`;
    m.large (N,) an attack broke it at L-inf `large_eps` (C&W-L2 when its point lies in that ball).
    """
    _check_detectors(detectors)
    if not torch.is_tensor(x) or x.dim() != 4 or not torch.is_tensor(y) or y.shape != (x.shape[0],):
        raise InputError(f"expected images (N, C, H, W) and labels (N,), got {getattr(x, 'shape', x)} and "
                         f"{getattr(y, 'shape', y)}")
    with eval_mode(model), ExitStack() as hooks:
        for det in detectors.values():  # layer-tapping baselines keep their hooks on for the attacks
            metric = getattr(det, "metric_", det.metric)
            if isinstance(metric, TappedScore) and not metric.taps.attached:
                hooks.enter_context(metric)
        row_ids = torch.arange(x.shape[0]) if row_ids is None else torch.as_tensor(row_ids).cpu()
        return _worst_case_examples(model, detectors, x, y.to(x.device), budget=budget, seed=seed, row_ids=row_ids)


def _worst_case_examples(model, detectors, x, y, *, budget, seed, row_ids):
    n, device = x.shape[0], x.device
    attacks = budget.attacks
    pgd = [(label, f, lam) for label, f, lam in attacks if f != Formulation.CW_L2]
    everyone = torch.arange(n, device=device)
    starts = {}  # id(detector) -> its natural starts (N, C, H, W)

    def pgd_rows(det, eps, norm, f, lam, label=None, **over):
        natural = label == NATURAL_START
        return lambda r: detector_aware_pgd(model, x[r], y[r], det, eps=float(eps), norm=norm,
                                            method=PGDMethod(f.value), lam=1.0 if lam is None else lam,
                                            steps=over.get("steps", budget.steps),
                                            restarts=1 if natural else over.get("restarts", budget.restarts),
                                            seed=seed, row_ids=row_ids[r.cpu()],
                                            start=starts[id(det)][r] if natural else None)

    out = {}
    with torch.no_grad():
        out["correct"] = (model(x).argmax(1) == y).long()
    accept_all, undefended = AcceptAll(), {}
    for norm, grid in budget.eps.items():  # the baseline, and the transfer attack's examples
        results = [detector_aware_pgd(model, x, y, accept_all, eps=float(eps), norm=norm, method=PGDMethod.SELECTIVE,
                                      steps=budget.steps, restarts=budget.restarts, seed=seed, row_ids=row_ids)
                   for eps in grid]
        out[f"undefended.{norm}"] = torch.stack([r.success.long() for r in results], 1)
        undefended[norm] = [r.x_adv for r in results]
    for name, det in detectors.items():
        with torch.no_grad():
            out[f"{name}.accepted"] = (det.score_samples(model.forward_features(x)) > float(det.threshold_)).long()
        out[f"{name}.grad_bad"] = _gradient_bad(model, det, x).long()
        if budget.natural_start:  # the clean verdicts just computed: no second forward pass
            starts[id(det)] = _nearest_eligible(x, y, out["correct"].bool() & out[f"{name}.accepted"].bool())
        has_cw = any(f == Formulation.CW_L2 for _, f, _ in attacks)
        if has_cw:
            cw = cw_l2_detector(model, x, y, det, **budget.cw)
            cw_broken = _system_breaks(model, det, cw.x_adv, y) & cw.success
            inf = torch.full((n,), float("inf"), dtype=torch.float64, device=device)
            out[f"{name}.cw_l2"] = torch.where(cw_broken, cw.l2.double(), inf)
            out[f"{name}.cw_linf"] = torch.where(cw_broken, cw.linf.double(), inf)
        for norm, grid in budget.eps.items():
            E = len(grid)
            first = torch.full((n, E), -1, dtype=torch.long, device=device)
            restart = torch.full((n, E), -1, dtype=torch.long, device=device)
            by = {label: torch.zeros(n, E, dtype=torch.long, device=device) for label, _, _ in attacks}
            transfer = torch.zeros(n, E, dtype=torch.long, device=device)
            for j, eps in enumerate(grid):
                so_far = torch.zeros(n, dtype=torch.bool, device=device)
                if has_cw:
                    dist = out[f"{name}.cw_{'l2' if norm == Norm.L2 else 'linf'}"]
                    by[Formulation.CW_L2.value][:, j] = (dist <= float(eps) + 1e-6).long()
                    so_far |= by[Formulation.CW_L2.value][:, j].bool()
                for label, f, lam in pgd:
                    rows = (~so_far).nonzero().squeeze(1) if budget.cascade else everyone
                    success, found_in = _attack_rows(rows, pgd_rows(det, eps, norm, f, lam, label), n, device)
                    by[label][:, j] = success
                    better = (success == 1) & ((restart[:, j] < 0) | (found_in < restart[:, j]))
                    restart[:, j] = torch.where(better, found_in, restart[:, j])
                    so_far |= success.bool()
                for i, (label, _, _) in reversed(list(enumerate(attacks))):
                    first[:, j] = torch.where(by[label][:, j] == 1, i, first[:, j])
                transfer[:, j] = _system_breaks(model, det, undefended[norm][j], y).long()
            out[f"{name}.broken.{norm}"] = (first >= 0).long()
            out[f"{name}.first.{norm}"] = first
            out[f"{name}.restart.{norm}"] = restart
            out[f"{name}.transfer.{norm}"] = transfer
            for label, t in by.items():
                out[f"{name}.by.{norm}.{label}"] = t
            if budget.check_steps and pgd:
                label, f, lam = pgd[0]
                out[f"{name}.half.{norm}"] = _attack_rows(everyone, pgd_rows(
                    det, grid[check_index(grid)], norm, f, lam, steps=max(1, budget.steps // 2), restarts=1),
                    n, device)[0]
        if budget.large_eps is not None and (pgd or has_cw):
            # Every attack of the worst case: C&W-L2's points lie in the box, so in the L-inf ball of 1.
            large = torch.zeros(n, dtype=torch.long, device=device)
            if has_cw:
                large |= (out[f"{name}.cw_linf"] <= budget.large_eps + 1e-6).long()
            for label, f, lam in pgd:  # cascaded: each rule attacks what the earlier ones left
                large |= _attack_rows((large == 0).nonzero().squeeze(1),
                                      pgd_rows(det, budget.large_eps, Norm.LINF, f, lam, label), n, device)[0]
            out[f"{name}.large"] = large
    return {k: v.detach().cpu() for k, v in out.items()}


def check_index(grid) -> int:
    """The eps of the steps check: the middle positive radius of the grid."""
    positive = [j for j, e in enumerate(grid) if e > 0]
    return positive[len(positive) // 2] if positive else 0


# ---------------------------------------------------------------------------------- summary
def _curve(broken: np.ndarray) -> list:
    """Robust accuracy with rejection per eps column: the inputs no attack broke."""
    return [float(1.0 - broken[:, j].mean()) for j in range(broken.shape[1])]


def _median_distortion(values: np.ndarray):
    """Median over inputs, inf for the unbroken ones; None when more than half stay unbroken within
    the budget (the median is then only known to exceed the largest radius attacked)."""
    if values.size == 0:
        return None
    med = float(np.median(values))
    return med if np.isfinite(med) else None


def _check(status, detail, value=None) -> dict:
    return {"status": status, "detail": detail, "value": value}


def summarize_worst_case(tensors: dict, *, budget: WorstCaseBudget, thresholds: dict, fpr=None, dataset=None,
                         seconds=None) -> dict:
    """The JSON-able results of `worst_case_examples` tensors (possibly concatenated chunks).

    thresholds: {metric: threshold} (recorded); fpr: the operating point; dataset: for the Tramèr
    claim check (`published_robustness.tramer_check`), skipped when None.
    """
    from .published_robustness import tramer_check

    t = {k: v.numpy() if torch.is_tensor(v) else np.asarray(v) for k, v in tensors.items()}
    correct = t["correct"].astype(bool)
    n = int(correct.size)
    tol = 1.0 / max(n, 1)
    labels = [label for label, _, _ in budget.attacks]
    result = {"n": n, "clean_accuracy": float(correct.mean()) if n else None, "fpr": fpr,
              "budget": budget.to_dict(), "attacks": labels, "attack_seconds": seconds, "detectors": {}}
    undefended = {norm: _curve(t[f"undefended.{norm}"]) for norm in budget.eps if f"undefended.{norm}" in t}
    if undefended:
        result["undefended_robust_accuracy"] = undefended
    for name, threshold in thresholds.items():
        accepted = t[f"{name}.accepted"].astype(bool)
        entry = {"threshold": float(threshold), "clean_rejected": float(1 - accepted.mean()) if n else None,
                 "robust_accuracy_with_rejection": {}, "robust_accuracy_per_eps": {}, "by_attack": {},
                 "broken_by": {}, "transfer_robust_accuracy": {}, "restart_curve": {}, "tramer": {}}
        checks = {}
        min_eps = {}
        for norm, grid in budget.eps.items():
            broken = t[f"{name}.broken.{norm}"].astype(bool)
            raw = _curve(broken)
            cumulative = np.logical_or.accumulate(broken, axis=1)
            entry["robust_accuracy_with_rejection"][norm] = _curve(cumulative)
            entry["robust_accuracy_per_eps"][norm] = raw
            entry["by_attack"][norm] = None if budget.cascade else {
                label: _curve(t[f"{name}.by.{norm}.{label}"]) for label in labels}
            first = t[f"{name}.first.{norm}"]
            entry["broken_by"][norm] = [{label: int((first[:, j] == i).sum()) for i, label in enumerate(labels)}
                                        for j in range(len(grid))]
            transfer = t[f"{name}.transfer.{norm}"].astype(bool)
            entry["transfer_robust_accuracy"][norm] = _curve(transfer)
            # Smallest radius of the grid at which the input was broken (inf: never).
            grid_arr = np.asarray(grid, dtype=np.float64)
            idx = np.where(cumulative.any(1), cumulative.argmax(1), -1)
            per_input = np.where(idx >= 0, grid_arr[np.maximum(idx, 0)], np.inf)
            cw_key = f"{name}.cw_{'l2' if norm == Norm.L2 else 'linf'}"
            if cw_key in t:
                per_input = np.minimum(per_input, t[cw_key])
            min_eps[norm] = per_input
            entry["tramer"][norm] = [tramer_check(dataset, norm, e, r) if dataset is not None and e > 0 else None
                                     for e, r in zip(grid, entry["robust_accuracy_with_rejection"][norm])]
            # Checks along this norm's grid.
            rises = [f"{grid[j]:g} -> {grid[j + 1]:g}: {raw[j]:.3f} -> {raw[j + 1]:.3f}"
                     for j in range(len(raw) - 1) if raw[j + 1] > raw[j] + tol + _SLACK]
            checks[f"eps.{norm}"] = _check(FAIL if rises else PASS, "; ".join(rises) or
                                           f"{len(grid)} radii, each attacked independently", raw)
            beaten = [f"eps {e:g}: white-box {w:.3f} > transfer {b:.3f}" for e, w, b in
                      zip(grid, raw, entry["transfer_robust_accuracy"][norm]) if w > b + tol + _SLACK]
            checks[f"transfer.{norm}"] = _check(FAIL if beaten else PASS, "; ".join(beaten) or
                                                "white-box at least as strong at every eps",
                                                entry["transfer_robust_accuracy"][norm])
            restart = t[f"{name}.restart.{norm}"]
            j = check_index(grid)
            cw_hit = t.get(f"{name}.by.{norm}.{Formulation.CW_L2.value}", np.zeros_like(broken, dtype=np.int64))
            curve_r = [float(1 - (cw_hit[:, j].astype(bool) | ((restart[:, j] >= 0) & (restart[:, j] <= r))).mean())
                       for r in range(1, budget.restarts + 1)]
            entry["restart_curve"][norm] = {"eps": float(grid[j]), "robust_accuracy": curve_r}
            rises = [f"{r} -> {r + 1}" for r in range(len(curve_r) - 1) if curve_r[r + 1] > curve_r[r] + _SLACK]
            gain = curve_r[-2] - curve_r[-1] if len(curve_r) > 1 else None
            if len(curve_r) < 2:
                checks[f"restarts.{norm}"] = _check(NA, "one restart: nothing to compare", curve_r)
            else:
                checks[f"restarts.{norm}"] = _check(
                    FAIL if rises else PASS, ("rises at restarts " + ", ".join(rises)) if rises else
                    f"eps {grid[j]:g}: the last restart lowered robust accuracy by {gain:.3f}", curve_r)
            half_key = f"{name}.half.{norm}"
            if half_key in t:
                half = float(1 - t[half_key].mean())
                worse = raw[j] > half + tol + _SLACK
                checks[f"steps.{norm}"] = _check(
                    FAIL if worse else PASS,
                    f"eps {grid[j]:g}: worst case {raw[j]:.3f} vs {budget.pgd_labels[0]} at {max(1, budget.steps // 2)} "
                    f"steps, 1 restart {half:.3f}", {"full": raw[j], "half_steps": half})
            else:
                checks[f"steps.{norm}"] = _check(NA, "not run", None)
        bad = t[f"{name}.grad_bad"].astype(bool)
        frac = float(bad.mean()) if n else None
        checks["gradient"] = _check(FAIL if bad.any() else PASS,
                                    f"{int(bad.sum())} of {n} inputs with a zero or non-finite detector gradient", frac)
        if f"{name}.large" in t:
            rate = float(t[f"{name}.large"].mean())
            checks["large_eps"] = _check(PASS if rate >= MIN_LARGE_EPS_SUCCESS - _SLACK else FAIL,
                                         f"L-inf eps {budget.large_eps:g}: the attacks broke {100 * rate:.1f} % "
                                         f"(need >= {100 * MIN_LARGE_EPS_SUCCESS:g} %)", rate)
        else:
            checks["large_eps"] = _check(NA, "not run", None)
        entry["checks"] = checks
        entry["min_distortion"] = {norm: {"median": _median_distortion(v),
                                          "broken_fraction": float(np.isfinite(v).mean()) if n else None}
                                   for norm, v in min_eps.items()}
        entry["per_example"] = {"min_distortion": {norm: [float(e) if np.isfinite(e) else None for e in v]
                                                   for norm, v in min_eps.items()},
                                "first_attack": {norm: t[f"{name}.first.{norm}"].tolist() for norm in budget.eps}}
        for key in (f"{name}.cw_l2", f"{name}.cw_linf"):
            if key in t:
                v = t[key]
                entry["min_distortion"][key.rsplit(".", 1)[1]] = {
                    "median": _median_distortion(v), "broken_fraction": float(np.isfinite(v).mean()) if n else None}
        result["detectors"][name] = entry
    return result


def worst_case_evaluation(model, detectors, x: torch.Tensor, y: torch.Tensor, *, budget: WorstCaseBudget = None,
                          seed: int = 0, dataset=None) -> dict:
    """`worst_case_examples` then `summarize_worst_case` on one batch (see the module docstring)."""
    budget = WorstCaseBudget() if budget is None else budget
    t0 = time.perf_counter()
    tensors = worst_case_examples(model, detectors, x, y, budget=budget, seed=seed)
    thresholds = {m: float(d.threshold_) for m, d in detectors.items()}
    fprs = {getattr(d, "fpr_", None) for d in detectors.values()}
    return summarize_worst_case(tensors, budget=budget, thresholds=thresholds, fpr=fprs.pop() if len(fprs) == 1 else None,
                                dataset=dataset, seconds=time.perf_counter() - t0)
