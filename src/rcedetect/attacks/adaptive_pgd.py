"""Detector-aware PGD: an adaptive attack on the whole defended system (beyond Pang et al. 2018).

The system is the classifier plus a thresholding detector (section 3.4) at its chosen threshold: it
answers the predicted class when `detector.decision_function > 0` (score > threshold) and NOT SURE
otherwise. An adversarial example defeats it when it lies in the eps-ball around x, inside the [0, 1]
box, is misclassified (argmax != y) AND is accepted. "Robust accuracy with rejection" is the fraction
of inputs for which no such example is found.

Four update rules (`method`, default "logit"), all per example on the margin m(x) = max_{j!=y} Z_j - Z_y (> 0:
misclassified) and the decision d(x) = score(x) - threshold (> 0: accepted):
  * "orthogonal" (Bryniarski et al., ICLR 2022, "Evading adversarial example detectors"): while the
    classifier is not fooled, step along grad m with its component along grad d projected out (so the
    step does not change the detector's verdict to first order); once misclassified but rejected, step
    along grad d with its component along grad m projected out.
  * "selective" (also Bryniarski et al.): the same switch without the projections. Projection hurts
    when the two gradients are nearly (anti-)parallel, as for the confidence metric, where lowering
    the true class's logit also lowers the confidence.
  * "sum" (Carlini & Wagner 2017b's first formulation, the sum of the two losses): maximise
    min(m(x), 0) + lam * min(d(x) / s, 0), i.e. minimise f + lam * g with the hinges f = max(-m, 0),
    g = max(-d / s, 0); the weight `lam` is a hyperparameter, so an evaluation sweeps a few values.
  * "logit" (Carlini & Wagner 2017b: the detector as an extra "adversarial" logit): maximise
    min(m(x), d(x) / s), whose gradient follows whichever condition is the bottleneck; s (the std of
    the detector's clean calibration scores, 1 if unknown) puts d on a logit-like scale. The default:
    on small MNIST models it broke at least as many inputs as the other two for all three metrics.
An evaluation should take the worst case over several rules and restarts
(`rcedetect.evaluation.threat_models.adaptive_curve` does).

Steps: L-inf: x <- Proj(x + alpha * sign(g)); L2: x <- Proj(x + alpha * g / ||g||_2); Proj is the
eps-ball then the box (clipping to the box never leaves the ball). Defaults: 100 steps, alpha =
2.5 * eps / steps, one random start per restart (uniform in the L-inf ball, uniform radius and
direction for L2), seeded per input: row i's start of restart r is drawn from a generator seeded by
(seed, row_ids[i], r), so an input gets the same starts whatever batch or chunk it is attacked in.
`start` replaces the first restart's random start by given points (projected into the ball), e.g.
the nearest accepted image of another class (`evaluation.worst_case`'s natural start). The clean input itself is checked first. Per-example early stop: an
example leaves the batch as soon as one successful point is found, and later restarts only run the
examples not yet broken. Works for any metric with a differentiable `score_samples` (confidence,
non-ME, K-density); the detector's threshold is used as is.
"""

import math
from typing import NamedTuple

import torch

from ..errors import InputError
from ..names import Norm, PGDMethod
from .cw import logit_margin
from .result import check_images, check_labels, check_positive, eval_mode, num_classes_of

NORMS = (Norm.LINF, Norm.L2)  # the balls PGD projects onto (no L0 projection)
TINY = 1e-12


class DetectorAwareResult(NamedTuple):
    """x_adv (N, C, H, W): a successful example (misclassified and accepted), else the clean x;
    success (N,) bool, checked on the returned images; score (N,) detector scores of x_adv;
    prediction (N,) the classifier's classes for x_adv; restart (N,) long: the restart that found the
    example (1-based; 0: the clean input itself; -1: none found)."""

    x_adv: torch.Tensor
    success: torch.Tensor
    score: torch.Tensor
    prediction: torch.Tensor
    restart: torch.Tensor


class AcceptAll:
    """A detector that accepts everything: PGD against it attacks the undefended classifier (the
    baseline of the adaptive evaluations, and the detector-oblivious transfer attack)."""

    threshold_ = -1.0
    calibration_scores_ = None

    def score_samples(self, model_output):
        return torch.zeros(model_output.logits.shape[0], device=model_output.logits.device)


def decision_scale(detector) -> float:
    """s: the std of the detector's clean calibration scores (1 when unknown or degenerate), which puts
    the decision d = score - threshold on a logit-like scale in the attacks' objectives."""
    calib = getattr(detector, "calibration_scores_", None)
    scale = float(calib.double().std()) if calib is not None and calib.numel() > 1 else 1.0
    return scale if math.isfinite(scale) and scale > 0 else 1.0


def _flat_dot(a, b):
    return (a * b).flatten(1).sum(1)


def _expand(v, like):
    return v.view(-1, *([1] * (like.dim() - 1)))


def _project_out(g, h):
    """g minus its component along h, per example."""
    return g - _expand(_flat_dot(g, h) / (_flat_dot(h, h) + TINY), g) * h


def _direction_orthogonal(margin, grad_m, grad_d):
    """Bryniarski et al.: fix the violated condition without moving the other one (first order)."""
    fooled = margin > 0
    classifier_step = _project_out(grad_m, grad_d)
    detector_step = _project_out(grad_d, grad_m)
    return torch.where(_expand(fooled, grad_m), detector_step, classifier_step)


def _direction_selective(margin, grad_m, grad_d):
    """Bryniarski et al.'s selective PGD: step on the violated condition only, no projection."""
    return torch.where(_expand(margin > 0, grad_m), grad_d, grad_m)


# The rules that combine two gradients; PGDMethod.LOGIT ascends one objective.
TWO_GRADIENTS = {PGDMethod.ORTHOGONAL: _direction_orthogonal, PGDMethod.SELECTIVE: _direction_selective}


# Strides of an input's start seed: seed * _SEED_STRIDE + input id * _ID_STRIDE + restart (both prime).
_SEED_STRIDE, _ID_STRIDE = 1_000_003, 7_919


def _row_noise(shape, eps, norm, generator):
    """One input's start offset (shape = (C, H, W)): uniform in the L-inf ball, or uniform radius and
    direction in the L2 ball."""
    if norm == Norm.LINF:
        return (torch.rand(shape, generator=generator) * 2 - 1) * eps
    direction = torch.randn(shape, generator=generator)
    return direction / direction.norm().clamp_min(TINY) * (torch.rand((), generator=generator) * eps)


def _random_start(x, eps, norm, seed: int, row_ids, restart: int):
    # One generator per input: its starts depend on (seed, its id, restart) only, not on its batch.
    noise = torch.stack([_row_noise(x.shape[1:], eps, norm, torch.Generator().manual_seed(
        int(seed) * _SEED_STRIDE + int(i) * _ID_STRIDE + restart)) for i in row_ids.tolist()])
    return (x + noise.to(device=x.device, dtype=x.dtype)).clamp(0.0, 1.0)


def _project(x_adv, x, eps, norm):
    delta = x_adv - x
    if norm == Norm.LINF:
        delta = delta.clamp(-eps, eps)
    else:
        norms = delta.flatten(1).norm(dim=1)
        delta = delta * _expand((eps / norms.clamp_min(TINY)).clamp(max=1.0), delta)
    return (x + delta).clamp(0.0, 1.0)


def _step(x_adv, g, alpha, norm):
    if norm == Norm.LINF:
        return x_adv + alpha * g.sign()
    return x_adv + alpha * g / _expand(g.flatten(1).norm(dim=1).clamp_min(TINY), g)


def detector_aware_pgd(model, x: torch.Tensor, y: torch.Tensor, detector, *, eps: float, steps: int = 100,
                       norm: str = Norm.LINF, restarts: int = 1, step_size=None, method: str = PGDMethod.LOGIT,
                       lam: float = 1.0, seed: int = 0, row_ids=None, start=None,
                       progress: bool = False) -> DetectorAwareResult:
    """PGD against classifier + `detector` (see the module docstring) on `x` (N, C, H, W) in [0, 1].

    Args:
        model: classifier with `forward_features(x) -> ModelOutput`.
        y: true labels (N,).
        detector: a fitted `ThresholdDetector` (differentiable `score_samples`, `threshold_`).
        eps: radius of the L-inf or L2 ball (pixel units in [0, 1]); 0 only checks the clean inputs.
        steps: updates per restart (default 100); restarts: random starts (default 1);
        step_size: default 2.5 * eps / steps; method: "logit" (default), "selective", "orthogonal" or
        "sum"; lam: the detector's weight in the "sum" rule (default 1); seed: of the random starts;
        row_ids: (N,) ids of the inputs for their per-input starts (default 0..N-1); start: (N, C, H, W)
        points the first restart starts from (projected into the ball) instead of a random one.
    Returns `DetectorAwareResult(x_adv, success, score, prediction, restart)`.
    """
    check_images(x)
    norm, method = Norm.coerce(norm, "norm"), PGDMethod.coerce(method, "PGD method")
    if norm not in NORMS:
        raise InputError(f"norm must be one of {', '.join(NORMS)}, got '{norm}'")
    check_positive(eps, "eps", allow_zero=True)
    check_positive(steps, "steps")
    check_positive(restarts, "restarts")
    check_positive(lam, "lam", allow_zero=True)
    if not hasattr(detector, "threshold_") or not hasattr(detector, "score_samples"):
        raise InputError("detector must be a fitted ThresholdDetector (score_samples and threshold_): "
                         "fit it with ThresholdDetector(metric).fit(..., calibration=clean_outputs)")
    alpha = 2.5 * eps / steps if step_size is None else step_size
    check_positive(alpha, "step_size", allow_zero=True)
    threshold = float(detector.threshold_)
    scale = decision_scale(detector)
    n = x.shape[0]
    x = x.detach()
    row_ids = torch.arange(n) if row_ids is None else torch.as_tensor(row_ids).cpu()
    if row_ids.shape != (n,):
        raise InputError(f"row_ids must hold one id per input ({n}), got shape {tuple(row_ids.shape)}")
    if start is not None and (not torch.is_tensor(start) or start.shape != x.shape):
        raise InputError(f"start must be images of x's shape {tuple(x.shape)}, got {getattr(start, 'shape', start)}")

    def evaluate(inp, labels):
        out = model.forward_features(inp)
        return logit_margin(out.logits, labels, False), detector.score_samples(out) - threshold

    with eval_mode(model):
        check_labels(y, n, "y", num_classes_of(model, x))
        y = y.to(x.device)
        best = x.clone()
        with torch.no_grad():
            margin, decision = evaluate(x, y)
        found = (margin > 0) & (decision > 0)  # the clean input may already defeat the system
        found_in = torch.where(found, 0, -1).long()
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=restarts * steps, desc=f"adaptive pgd ({method})", leave=False)
        for restart in range(1, restarts + 1 if eps > 0 else 1):
            idx = (~found).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            x0, lab = x[idx], y[idx]
            if restart == 1 and start is not None:
                xa = _project(start[idx].detach().to(x.dtype), x0, eps, norm)
            else:
                xa = _random_start(x0, eps, norm, seed, row_ids[idx.cpu()], restart)
            for it in range(steps + 1):  # `steps` updates; the last pass only checks the final point
                xa.requires_grad_(True)
                margin, decision = evaluate(xa, lab)
                ok = (margin > 0) & (decision > 0)
                with torch.no_grad():
                    rows = idx[ok]
                    best[rows] = xa.detach()[ok]
                    found[rows] = True
                    found_in[rows] = restart
                if it == steps or bool(ok.all()):
                    break
                if method in TWO_GRADIENTS:
                    grad_m = _grad(margin, xa, retain_graph=True)
                    grad_d = _grad(decision, xa)
                    g = TWO_GRADIENTS[method](margin.detach(), grad_m, grad_d)
                elif method == PGDMethod.SUM:
                    g = _grad(margin.clamp(max=0.0) + float(lam) * (decision / scale).clamp(max=0.0), xa)
                else:
                    g = _grad(torch.minimum(margin, decision / scale), xa)
                with torch.no_grad():
                    xa = _project(_step(xa.detach(), g, alpha, norm), x0, eps, norm)
                    if ok.any():  # per-example early stop: broken examples leave the batch
                        keep = ~ok
                        xa, idx, x0, lab = xa[keep], idx[keep], x0[keep], lab[keep]
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        with torch.no_grad():
            out = model.forward_features(best)
            score = detector.score_samples(out)
            prediction = out.logits.argmax(dim=1)
            success = found & (prediction != y) & (score > threshold)
    return DetectorAwareResult(best, success, score, prediction, torch.where(success, found_in.to(success.device), -1))



def _grad(objective, xa, retain_graph=False):
    """Per-example gradient of `objective` (N,) w.r.t. xa (rows are independent in eval mode); zeros
    when the objective does not depend on xa (e.g. a constant detector)."""
    if not objective.requires_grad:
        return torch.zeros_like(xa)
    (g,) = torch.autograd.grad(objective.sum(), xa, retain_graph=retain_graph, allow_unused=True)
    return torch.zeros_like(xa) if g is None else g
