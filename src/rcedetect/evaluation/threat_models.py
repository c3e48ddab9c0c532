"""White-box, black-box and adaptive evaluations of Pang et al. 2018 (sections 2.2, 4.4, 4.5, appendix
B.4) as pure functions: models, detectors and a clean batch in, JSON-serialisable dicts out.

    white_box_row(model, kd, x, y, kappa=0)        Table 3 row (kappa=5: appendix Table 2 row)
    transfer_table({name: (substitute, kd)}, {name: (target, detector)}, x, y)   Table 4
    transfer_row(substitute, kd, target, detector, x, y)   one Table 4 cell
    transfer_evaluation(target, detector, x, y, x_adv)     evaluate given adversarial images on a target
    adaptive_curve(model, {metric: detector}, x, y, eps_values=...)   robust accuracy with rejection vs eps

Conventions: images (N, C, H, W) in [0, 1]; `y` true labels (N,); distortion is the paper's
sqrt(mean((x* - x)²)) on the 0-255 scale; AUC treats clean inputs as positive, higher score = more
normal, over the pairs that pass the counting filter (clean input correct, adversarial twin
misclassified). Percentages are in [0, 100]; quantities with nothing to average over are None.
"""

import time
from collections.abc import Mapping

import numpy as np
import torch

from ..attacks.adaptive_pgd import detector_aware_pgd
from ..attacks.cw_wb import cw_wb
from ..attacks.result import eval_mode
from ..errors import InputError
from .detection import auc_score, counting_mask, robust_accuracy_with_rejection
from .distortion import distortion


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if torch.is_tensor(t) else np.asarray(t)


def _percent(mask) -> float:
    mask = _np(mask)
    return float(100.0 * mask.mean()) if mask.size else None


def _mean(values):
    values = _np(values)
    return float(values.mean()) if values.size else None


@torch.no_grad()
def _outputs(model, x, batch_size: int = 500):
    """(logits, features) of `model` on `x` in eval mode, on x's device."""
    with eval_mode(model):
        outs = [model.forward_features(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return type(outs[0])(torch.cat([o.logits for o in outs]), torch.cat([o.features for o in outs]))


def _scores(detector, model_output) -> torch.Tensor:
    """Detector scores (higher = more normal) of a ThresholdDetector or a bare metric."""
    score = getattr(detector, "score_samples", None) or getattr(detector, "score", None)
    if score is None:
        raise InputError(f"{detector!r} has no score_samples/score: pass a fitted ThresholdDetector or metric")
    with torch.no_grad():
        return score(model_output)


def _check_batch(x, y):
    if not torch.is_tensor(x) or x.dim() != 4 or not torch.is_tensor(y) or y.shape != (x.shape[0],):
        raise InputError(f"expected images (N, C, H, W) and labels (N,), got {getattr(x, 'shape', x)} and "
                         f"{getattr(y, 'shape', y)}")


def run_cw_wb(model, detector, x, y, *, seed: int = 0, batch_size=None, **attack_settings):
    """`cw_wb` over `x` in batches of `batch_size` (all at once when None or >= N); the batch starting
    at row `begin` uses seed `seed + begin` (its random targets and attack bank), so results depend
    on the batch size. Returns one `CWWBResult` for the whole set."""
    if batch_size is None or batch_size >= x.shape[0]:
        return cw_wb(model, x, y, detector, seed=seed, **attack_settings)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    target = attack_settings.pop("target", None)
    parts = []
    for begin in range(0, x.shape[0], batch_size):
        stop = begin + batch_size
        parts.append(cw_wb(model, x[begin:stop], y[begin:stop], detector, seed=seed + begin,
                           target=None if target is None else target[begin:stop], **attack_settings))
    return type(parts[0])(*(torch.cat(field) for field in zip(*parts)))


# ------------------------------------------------------------------------------ Table 3 / Table 2
def summarize_white_box(result, x: torch.Tensor, y: torch.Tensor, clean_prediction: torch.Tensor) -> dict:
    """Table 3 numbers from a `CWWBResult` on clean images `x`, labels `y`.

    Counted examples (the paper's filter): clean input classified correctly AND the adversarial
    example classified as its target (so misclassified). Over them:
      ratio_f2_positive_percent   % with f2(x*) > 0 (detector's full bank, leave-one-out eta): the
                                  detector was *not* fooled in the sense of section 4.4;
      ratio_f2_positive_attack_bank_percent  the same with the 100-point attack bank and its eta
                                  (what the authors' evaluation script computed);
      mean_distortion             mean sqrt(mean((x*-x)²)) on the 0-255 scale;
    plus the distortion of the fully successful ones (f2 <= 0) and success rates over the clean-
    correct inputs.
    """
    y = y.to(x.device)
    correct = _np(clean_prediction.to(x.device) == y).astype(bool)
    fooled = _np(result.fooled).astype(bool)
    counted = correct & fooled
    f2, f2_attack = _np(result.f2), _np(result.f2_attack)
    dist = distortion(result.x_adv, x)
    full = counted & (f2 <= 0)
    return {
        "n": int(x.shape[0]),
        "n_clean_correct": int(correct.sum()),
        "n_counted": int(counted.sum()),
        "ratio_f2_positive_percent": _percent(f2[counted] > 0),
        "ratio_f2_positive_attack_bank_percent": _percent(f2_attack[counted] > 0),
        "mean_distortion": _mean(dist[counted]),
        "mean_distortion_f2_nonpositive": _mean(dist[full]),
        "mean_f2": _mean(f2[counted]),
        "classifier_success_percent": _percent(fooled[correct]),
        "success_percent": _percent(_np(result.success).astype(bool)[correct]),
        "phase1_success_percent": _percent(_np(result.phase1_success).astype(bool)[correct]),
    }


def white_box_row(model, detector, x: torch.Tensor, y: torch.Tensor, *, kappa: float = 0.0, seed: int = 0,
                  target=None, batch_size=None, return_result: bool = False, **attack_settings):
    """One row of Table 3 (kappa=0, C&W-wb) or appendix Table 2 (kappa=5, C&W-wb-hc).

    Runs `cw_wb(model, x, y, detector, kappa=kappa, seed=seed, target=target, **attack_settings)`
    (`detector`: fitted K-density, bare or in a ThresholdDetector) and returns
    `summarize_white_box(...)` plus `kappa`, the attack settings and the wall time; `batch_size`
    splits the attack as `run_cw_wb` does. With `return_result`, returns (row, CWWBResult) so the
    examples can be reused (e.g. as Table 4's `precomputed`).
    """
    _check_batch(x, y)
    clean_prediction = _outputs(model, x).logits.argmax(1)
    start = time.perf_counter()
    result = run_cw_wb(model, detector, x, y, kappa=kappa, seed=seed, target=target, batch_size=batch_size,
                       **attack_settings)
    seconds = time.perf_counter() - start
    row = summarize_white_box(result, x, y, clean_prediction)
    row.update({"kappa": float(kappa), "seed": int(seed), "attack_settings": dict(attack_settings),
                "seconds": seconds, "seconds_per_example": seconds / x.shape[0]})
    return (row, result) if return_result else row


# ----------------------------------------------------------------------------------------- Table 4
def transfer_evaluation(target_model, target_detector, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor,
                        *, batch_size: int = 500) -> dict:
    """Evaluate adversarial images crafted elsewhere on `target_model` with ITS OWN `target_detector`.

    transfer_rate_percent: of the inputs the target classifies correctly, % whose adversarial twin it
    misclassifies. auc: detection AUC of the target's detector (clean positive, higher = more normal)
    over the counting-filter pairs (clean correct, adversarial misclassified by the target); None
    when no pair passes.
    """
    _check_batch(x, y)
    if x_adv.shape != x.shape:
        raise InputError(f"x_adv {tuple(x_adv.shape)} must match x {tuple(x.shape)}")
    clean_out, adv_out = _outputs(target_model, x, batch_size), _outputs(target_model, x_adv, batch_size)
    clean_pred, adv_pred = clean_out.logits.argmax(1), adv_out.logits.argmax(1)
    clean_scores, adv_scores = _scores(target_detector, clean_out), _scores(target_detector, adv_out)
    y = y.to(clean_pred.device)
    mask = counting_mask(y, clean_pred, adv_pred)
    correct = _np(clean_pred == y).astype(bool)
    misclassified = _np(adv_pred != y).astype(bool)
    threshold = getattr(target_detector, "threshold_", None)
    return {
        "n": int(x.shape[0]),
        "n_target_clean_correct": int(correct.sum()),
        "n_counted": int(mask.sum()),
        "transfer_rate_percent": _percent(misclassified[correct]),
        "auc": auc_score(_np(clean_scores)[mask], _np(adv_scores)[mask]) if mask.any() else None,
        "adversarial_rejected_percent": (_percent(_np(adv_scores)[mask] <= threshold)
                                         if threshold is not None and mask.any() else None),
    }


def transfer_row(substitute, substitute_detector, target_model, target_detector, x: torch.Tensor,
                 y: torch.Tensor, *, kappa: float = 0.0, seed: int = 0, **attack_settings) -> dict:
    """One Table 4 cell: C&W-wb crafted on `substitute` against `substitute_detector` (its K-density),
    evaluated by `transfer_evaluation` on `target_model` with `target_detector` (never the substitute's)."""
    table = transfer_table({"substitute": (substitute, substitute_detector)},
                           {"target": (target_model, target_detector)}, x, y, kappa=kappa, seed=seed,
                           **attack_settings)
    return table["pairs"]["substitute"]["target"]


def transfer_table(substitutes: Mapping, targets: Mapping, x: torch.Tensor, y: torch.Tensor, *,
                   kappa: float = 0.0, seed: int = 0, batch_size=None, precomputed=None, **attack_settings) -> dict:
    """Table 4: every substitute x target pair (Pang et al. 2018, section 4.5).

    substitutes: {name: (model, fitted K-density detector)} the attacker's models; C&W-wb is run once
    per substitute. targets: {name: (model, detector)} the attacked models, each judged by its own
    detector. The adversarial images fed to the targets are those that fool their substitute
    (classified as the target class, clean input correct on the substitute).

    Returns {"substitutes": {name: white-box summary on the substitute}, "pairs": {sub: {target:
    transfer_evaluation + n_fed + fed_index (rows of x fed to the target)}}}.
    `precomputed`: optional {substitute name: CWWBResult} already crafted on these x, y with these
    settings (e.g. Table 3's), used instead of attacking again.
    """
    _check_batch(x, y)
    out = {"substitutes": {}, "pairs": {}, "kappa": float(kappa), "seed": int(seed),
           "attack_settings": dict(attack_settings), "batch_size": batch_size}
    for sub_name, (sub_model, sub_detector) in substitutes.items():
        clean_prediction = _outputs(sub_model, x).logits.argmax(1)
        start = time.perf_counter()
        result = (precomputed or {}).get(sub_name)
        if result is None:
            result = run_cw_wb(sub_model, sub_detector, x, y, kappa=kappa, seed=seed, batch_size=batch_size,
                               **attack_settings)
        elif result.x_adv.shape != x.shape:
            raise InputError(f"precomputed examples of {sub_name!r} have shape {tuple(result.x_adv.shape)}, "
                             f"x {tuple(x.shape)}: pass the examples crafted on these images")
        summary = summarize_white_box(result, x, y, clean_prediction)
        summary["seconds"] = time.perf_counter() - start
        summary["reused_precomputed"] = sub_name in (precomputed or {})
        out["substitutes"][sub_name] = summary
        fed = (clean_prediction == y.to(x.device)) & result.fooled
        out["pairs"][sub_name] = {}
        for target_name, (target_model, target_detector) in targets.items():
            if not fed.any():
                cell = {"n": 0, "n_target_clean_correct": 0, "n_counted": 0, "transfer_rate_percent": None,
                        "auc": None, "adversarial_rejected_percent": None}
            else:
                cell = transfer_evaluation(target_model, target_detector, x[fed], y[fed], result.x_adv[fed])
            cell["n_fed"] = int(fed.sum())
            cell["fed_index"] = [int(i) for i in fed.nonzero().squeeze(1).tolist()]
            out["pairs"][sub_name][target_name] = cell
    return out


# ----------------------------------------------------------------------------------- adaptive attack
class _AcceptAll:
    """A detector that accepts everything: the undefended classifier as a baseline."""

    threshold_ = -1.0
    calibration_scores_ = None

    def score_samples(self, model_output):
        return torch.zeros(model_output.logits.shape[0], device=model_output.logits.device)


def adaptive_curve(model, detectors: Mapping, x: torch.Tensor, y: torch.Tensor, *,
                   eps_values=(0.0, 0.1, 0.2, 0.3), norm: str = "linf", steps: int = 100, restarts: int = 1,
                   methods=("logit", "selective", "orthogonal"), step_size=None, seed: int = 0,
                   include_undefended: bool = True) -> dict:
    """Robust accuracy with rejection vs eps under `detector_aware_pgd` (beyond the paper).

    detectors: {metric name: fitted ThresholdDetector} at their thresholds (e.g. FPR 5 %). For each
    metric and eps, every method in `methods` is run and an input counts as broken when ANY of them
    finds a misclassified, accepted example in the eps-ball (the worst case over the attacks). The
    value is `robust_accuracy_with_rejection` on the chosen examples: rejected or correct. With
    `include_undefended`, the classifier alone (a detector accepting everything) under the same PGD
    gives the plain robust accuracy as a baseline.

    Returns {"norm", "eps", "steps", "restarts", "methods", "n", "clean_accuracy", "curves": {metric:
    {"robust_accuracy_with_rejection": [...], "by_method": {method: [...]}, "threshold", "fpr"}},
    "undefended": {"robust_accuracy": [...]} (if included), "seconds"}.
    """
    _check_batch(x, y)
    eps_values = [float(e) for e in eps_values]
    if not eps_values:
        raise InputError("eps_values is empty: pass at least one radius, e.g. 0 0.1 0.2 0.3")
    y_dev = y.to(x.device)
    clean_pred = _outputs(model, x).logits.argmax(1)
    start = time.perf_counter()
    curves = {}
    named = dict(detectors)
    if include_undefended:
        named["undefended"] = _AcceptAll()
    for name, detector in named.items():
        use = ("selective",) if name == "undefended" else tuple(methods)  # no detector: plain margin PGD
        curve = {"robust_accuracy_with_rejection": [], "by_method": {m: [] for m in use}}
        for eps in eps_values:
            broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
            chosen = x.clone()
            for method in use:
                res = detector_aware_pgd(model, x, y_dev, detector, eps=eps, norm=norm, steps=steps,
                                         restarts=restarts, step_size=step_size, method=method, seed=seed)
                curve["by_method"][method].append(1.0 - float(res.success.float().mean()))
                new = res.success & ~broken
                chosen[new] = res.x_adv[new]
                broken |= res.success
            # Independent re-check of the chosen examples (rejected or correct = robust).
            out = _outputs(model, chosen)
            scores = _scores(detector, out)
            value = robust_accuracy_with_rejection(_np(y), _np(out.logits.argmax(1)), _np(scores),
                                                   float(detector.threshold_))
            curve["robust_accuracy_with_rejection"].append(value)
        if name != "undefended":
            curve["threshold"] = float(detector.threshold_)
            curve["fpr"] = getattr(detector, "fpr_", None)
        curves[name] = curve
    undefended = curves.pop("undefended", None)
    result = {
        "norm": norm, "eps": eps_values, "steps": int(steps), "restarts": int(restarts), "methods": list(methods),
        "seed": int(seed), "n": int(x.shape[0]), "clean_accuracy": float((clean_pred == y_dev).float().mean()),
        "curves": curves, "seconds": time.perf_counter() - start,
    }
    if undefended is not None:
        result["undefended"] = {"robust_accuracy": undefended["robust_accuracy_with_rejection"]}
    return result
