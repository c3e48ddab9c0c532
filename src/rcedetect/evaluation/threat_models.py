"""White-box, black-box and adaptive evaluations of Pang et al. 2018 (sections 2.2, 4.4, 4.5, appendix
B.4): models, detectors and a clean batch in, JSON-serialisable dicts out; plus the checkpoint-level
runs behind `rcedetect attack` (threat models) and `rcedetect threat-models`.

    run_cw_wb(model, kd, x, y, seed=0, start=0, batch_size=None)   THE batched C&W-wb runner
    run_adaptive_pgd(model, detector, x, y, eps=..., batch_size=None)   batched detector-aware PGD
    white_box_row(model, kd, x, y, kappa=0)        Table 3 row (kappa=5: appendix Table 2 row)
    transfer_table({name: (substitute, kd)}, {name: (target, detector)}, x, y)   Table 4
    transfer_row(substitute, kd, target, detector, x, y)   one Table 4 cell
    transfer_evaluation(target, detector, x, y, x_adv)     evaluate given adversarial images on a target
    adaptive_curve(model, {metric: detector}, x, y, eps_values=...)   robust accuracy with rejection vs eps
    attack_checkpoint(checkpoint, attack, n=...)   one `rcedetect attack --attack cw-wb|cw-wb-hc|adaptive-pgd` run
    threat_model_report(checkpoints, targets=...)  `rcedetect threat-models`, as a generator of updates

Conventions: images (N, C, H, W) in [0, 1]; `y` true labels (N,); distortion is the paper's
sqrt(mean((x* - x)²)) on the 0-255 scale; AUC treats clean inputs as positive, higher score = more
normal, over the pairs that pass the counting filter (clean input correct, adversarial twin
misclassified). Percentages are in [0, 100]; quantities with nothing to average over are None.
"""

import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import torch

from ..attacks.adaptive_pgd import AcceptAll, DetectorAwareResult, detector_aware_pgd
from ..attacks.cw_wb import CWWBResult, cw_wb
from ..attacks.result import num_classes_of, random_targets
from ..errors import InputError, check_keywords
from ..inference import batched_outputs
from ..names import PAPER_METRICS, PGD_RULES, Attack, Metric, Norm, PGDMethod
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


def _outputs(model, x, batch_size: int = 500):
    """(logits, features) of `model` on `x` in eval mode, on the model's device; x's own layout, with
    which these evaluations were always computed (channels_last may move the last float bit)."""
    return batched_outputs(model, x, batch_size=batch_size, to_cpu=False, memory_format=torch.contiguous_format)


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


def _model_device(model) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


def _check_settings(function, settings: Mapping, what: str, *, reserved=()) -> None:
    """InputError unless every key of `settings` is a keyword of `function` the caller may set
    (`reserved` ones are set by the runner itself)."""
    taken = sorted(set(settings) & set(reserved))
    if taken:
        raise InputError(f"{what}: {', '.join(taken)} {'is' if len(taken) == 1 else 'are'} set by the runner, "
                         f"not an attack setting: pass {'it' if len(taken) == 1 else 'them'} as the runner's own "
                         f"argument or drop {'it' if len(taken) == 1 else 'them'}")
    check_keywords(function, settings, what)


def _batches(n: int, batch_size):
    if batch_size is None:
        return [(0, n)]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be an integer >= 1 or None (all at once), got {batch_size!r}")
    return [(begin, min(begin + batch_size, n)) for begin in range(0, n, batch_size)]


def run_cw_wb(model, detector, x: torch.Tensor, y: torch.Tensor, *, kappa: float = 0.0, seed: int = 0,
              start: int = 0, batch_size=None, target=None, callback=None, **attack_settings) -> CWWBResult:
    """`cw_wb` over `x` in batches of `batch_size` rows (all at once when None), on the model's device.

    Results do not depend on the batch size: every batch draws its attack bank from `seed` alone
    (the same bank for all), and when `target` is None the target of row i is
    `random_targets(y, L, seed, start=start)[i]`, a function of its global index `start + i` alone.
    `start` is the global index of row 0 of `x`, so a caller attacking a set chunk by chunk passes
    each chunk's offset and gets exactly the examples of one run over the whole set.

    `target`: classes to reach (N,) instead of the random ones. `callback(done, batch_result)` is
    called after each batch (progress). `attack_settings` are `cw_wb`'s keywords (max_iters,
    binary_search_steps, lr, initial_const, attack_bank_size, l2_from, abort_early, abort_rule, phase1_*, eta);
    unknown ones are an InputError. Returns one `CWWBResult` for all of `x`, on x's device.
    """
    _check_batch(x, y)
    _check_settings(cw_wb, attack_settings, "cw-wb", reserved=("target", "kappa", "seed", "progress"))
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise InputError(f"start must be an integer >= 0 (the global index of x's first row), got {start!r}")
    if target is not None and (not torch.is_tensor(target) or target.shape != y.shape):
        raise InputError(f"target must be a tensor of classes shaped like y {tuple(y.shape)}, got "
                         f"{getattr(target, 'shape', target)}")
    device = _model_device(model)
    parts, done = [], 0
    for begin, stop in _batches(x.shape[0], batch_size):
        xb, yb = x[begin:stop].to(device), y[begin:stop].to(device)
        if target is None:
            tb = random_targets(yb, num_classes_of(model, xb), seed, start=start + begin)
        else:
            tb = target[begin:stop].to(device)
        part = cw_wb(model, xb, yb, detector, target=tb, kappa=kappa, seed=seed, **attack_settings)
        parts.append(part)
        done += stop - begin
        if callback is not None:
            callback(done, part)
    if len(parts) == 1:
        return CWWBResult(*(field.to(x.device) for field in parts[0]))
    return CWWBResult(*(torch.cat([f.to(x.device) for f in field]) for field in zip(*parts)))


def run_adaptive_pgd(model, detector, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int = 0,
                     start: int = 0, batch_size=None, callback=None, **attack_settings) -> DetectorAwareResult:
    """`detector_aware_pgd` over `x` in batches of `batch_size` rows (all at once when None).

    Row i of `x` is input `start + i` of its run: its random starts are drawn from (seed, start + i),
    so the examples do not depend on the batch size. `callback(done, batch_result)` follows each batch. Returns one `DetectorAwareResult`, on x's device.
    """
    _check_batch(x, y)
    _check_settings(detector_aware_pgd, attack_settings, "adaptive-pgd", reserved=("eps", "seed", "progress"))
    device = _model_device(model)
    parts, done = [], 0
    for begin, stop in _batches(x.shape[0], batch_size):
        part = detector_aware_pgd(model, x[begin:stop].to(device), y[begin:stop].to(device), detector, eps=eps,
                                  seed=seed, row_ids=torch.arange(start + begin, start + stop), **attack_settings)
        parts.append(part)
        done += stop - begin
        if callback is not None:
            callback(done, part)
    return DetectorAwareResult(*(torch.cat([f.to(x.device) for f in field]) for field in zip(*parts)))


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
    correct inputs. `success_percent` and `mean_distortion_official` follow the authors'
    test_adv.py: full success = target reached with margin > kappa AND f2 <= 0 on the *attack* bank,
    distortion averaged over the clean-correct full successes; `success_full_bank_percent` is the
    same success judged with the detector's full bank (the stricter check).
    """
    y = y.to(x.device)
    correct = _np(clean_prediction.to(x.device) == y).astype(bool)
    fooled = _np(result.fooled).astype(bool)
    counted = correct & fooled
    f2, f2_attack = _np(result.f2), _np(result.f2_attack)
    dist = distortion(result.x_adv, x)
    full = counted & (f2 <= 0)
    official = counted & (f2_attack <= 0)
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
        "mean_distortion_official": _mean(dist[official]),
        "success_percent": _percent(official[correct]),
        "success_full_bank_percent": _percent(_np(result.success).astype(bool)[correct]),
        "phase1_success_percent": _percent(_np(result.phase1_success).astype(bool)[correct]),
    }


def white_box_row(model, detector, x: torch.Tensor, y: torch.Tensor, *, kappa: float = 0.0, seed: int = 0,
                  start: int = 0, target=None, batch_size=None, return_result: bool = False, **attack_settings):
    """One row of Table 3 (kappa=0, C&W-wb) or appendix Table 2 (kappa=5, C&W-wb-hc).

    Runs `run_cw_wb(model, detector, x, y, kappa=kappa, seed=seed, start=start, target=target,
    batch_size=batch_size, **attack_settings)` (`detector`: fitted K-density, bare or in a
    ThresholdDetector) and returns `summarize_white_box(...)` plus `kappa`, the attack settings and
    the wall time. With `return_result`, returns (row, CWWBResult) so the examples can be reused
    (e.g. as Table 4's `precomputed`).
    """
    _check_batch(x, y)
    clean_prediction = _outputs(model, x).logits.argmax(1)
    t0 = time.perf_counter()
    result = run_cw_wb(model, detector, x, y, kappa=kappa, seed=seed, start=start, target=target,
                       batch_size=batch_size, **attack_settings)
    seconds = time.perf_counter() - t0
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
                 y: torch.Tensor, *, kappa: float = 0.0, seed: int = 0, start: int = 0, **attack_settings) -> dict:
    """One Table 4 cell: C&W-wb crafted on `substitute` against `substitute_detector` (its K-density),
    evaluated by `transfer_evaluation` on `target_model` with `target_detector` (never the substitute's)."""
    table = transfer_table({"substitute": (substitute, substitute_detector)},
                           {"target": (target_model, target_detector)}, x, y, kappa=kappa, seed=seed,
                           start=start, **attack_settings)
    return table["pairs"]["substitute"]["target"]


def transfer_table(substitutes: Mapping, targets: Mapping, x: torch.Tensor, y: torch.Tensor, *,
                   kappa: float = 0.0, seed: int = 0, start: int = 0, batch_size=None, precomputed=None,
                   **attack_settings) -> dict:
    """Table 4: every substitute x target pair (Pang et al. 2018, section 4.5).

    substitutes: {name: (model, fitted K-density detector)} the attacker's models; C&W-wb is run once
    per substitute. targets: {name: (model, detector)} the attacked models, each judged by its own
    detector. The adversarial images fed to the targets are those that fool their substitute
    (classified as the target class, clean input correct on the substitute).

    Returns {"substitutes": {name: white-box summary on the substitute}, "pairs": {sub: {target:
    transfer_evaluation + n_fed + fed_index (rows of x fed to the target)}}}.
    `precomputed`: optional {substitute name: CWWBResult} already crafted on these x, y with these
    settings (e.g. Table 3's), used instead of attacking again. `start`, `batch_size`: as `run_cw_wb`.
    """
    _check_batch(x, y)
    out = {"substitutes": {}, "pairs": {}, "kappa": float(kappa), "seed": int(seed),
           "attack_settings": dict(attack_settings), "batch_size": batch_size}
    for sub_name, (sub_model, sub_detector) in substitutes.items():
        clean_prediction = _outputs(sub_model, x).logits.argmax(1)
        t0 = time.perf_counter()
        result = (precomputed or {}).get(sub_name)
        if result is None:
            result = run_cw_wb(sub_model, sub_detector, x, y, kappa=kappa, seed=seed, start=start,
                               batch_size=batch_size, **attack_settings)
        elif result.x_adv.shape != x.shape:
            raise InputError(f"precomputed examples of {sub_name!r} have shape {tuple(result.x_adv.shape)}, "
                             f"x {tuple(x.shape)}: pass the examples crafted on these images")
        summary = summarize_white_box(result, x, y, clean_prediction)
        summary["seconds"] = time.perf_counter() - t0
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
def adaptive_curve(model, detectors: Mapping, x: torch.Tensor, y: torch.Tensor, *,
                   eps_values=(0.0, 0.1, 0.2, 0.3), norm: str = Norm.LINF, steps: int = 100, restarts: int = 1,
                   methods=PGD_RULES, step_size=None, seed: int = 0,
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
        named["undefended"] = AcceptAll()
    for name, detector in named.items():
        use = (PGDMethod.SELECTIVE,) if name == "undefended" else tuple(methods)  # no detector: plain margin PGD
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


# ------------------------------------------------------------------ one threat-model attack run
# The threat-model attacks and the settings they fix (C&W-wb-hc is C&W-wb with kappa 5, appendix B.4).
THREAT_MODEL_ATTACKS = MappingProxyType({
    Attack.CW_WB: MappingProxyType({"kappa": 0.0}),
    Attack.CW_WB_HC: MappingProxyType({"kappa": 5.0}),
    Attack.ADAPTIVE_PGD: MappingProxyType({}),
})


@dataclass(frozen=True)
class ThreatModelRun:
    """What `attack_checkpoint` crafted: `tensors` (CPU; the `rcedetect attack` file's contents),
    `info` (JSON-able: attack, settings, checkpoint, timing, `summary`, `transfer` with a substitute)
    and `notes` (remarks on the detectors, e.g. why one was refitted)."""

    tensors: dict
    info: dict
    notes: tuple = ()

    @property
    def summary(self) -> dict:
        return self.info["summary"]


def check_cw_wb_detector_settings(settings) -> None:
    """C&W-wb's evaluation eta leaves each bank point out of its own class's density: it needs
    n_per_class >= 2 (`settings`: a `DetectorSettings`)."""
    if settings.n_per_class < 2:
        raise InputError(f"n_per_class (--n-per-class) must be >= 2 for the threat models, got {settings.n_per_class}: "
                         f"pass --n-per-class 2 or more")


def attack_checkpoint(checkpoint, attack, *, n: int, start: int = 0, seed: int = 0, eps=None, metric=Metric.KD,
                      substitute=None, detector_settings=None, batch_size=None, device="cpu", callback=None,
                      **settings) -> ThreatModelRun:
    """Run C&W-wb, C&W-wb-hc or the detector-aware PGD on test images [start, start + n) (file order).

    checkpoint: the attacked model's folder. attack: an `Attack` of `THREAT_MODEL_ATTACKS`. metric: the
    detector attacked (C&W-wb: kd only). substitute: a checkpoint folder to craft on instead (with
    its own detector); the examples that fool it are then judged by `checkpoint` with ITS detector
    (black-box transfer, Table 4). detector_settings: `DetectorSettings` of the detectors fitted (or
    loaded) beside the checkpoints (default: `DetectorSettings()`). eps: adaptive-pgd's radius in
    [0, 1] pixel units (required there, refused by C&W-wb). seed, start, batch_size: as `run_cw_wb`
    / `run_adaptive_pgd` (default batch 100 for C&W-wb, 500 for PGD). settings: the attack's
    keywords (C&W-wb: `cw_wb`'s; PGD: `detector_aware_pgd`'s), unknown ones are an InputError.
    callback(done, batch_result): progress after each batch.
    """
    from .. import __version__
    from ..checkpoints import load_checkpoint
    from ..data import load_dataset
    from ..detectors.session import DetectorSession, DetectorSettings
    from .detection import robust_accuracy_with_rejection as _robust

    attack = Attack.coerce(attack, "attack")
    if attack not in THREAT_MODEL_ATTACKS:
        raise InputError(f"{attack} is not a threat-model attack: choose one of "
                         f"{', '.join(map(str, THREAT_MODEL_ATTACKS))}")
    metric = Metric.coerce(metric, "metric")
    detector_settings = DetectorSettings() if detector_settings is None else detector_settings
    check_cw_wb_detector_settings(detector_settings)
    white_box = attack is not Attack.ADAPTIVE_PGD
    settings = {**THREAT_MODEL_ATTACKS[attack], **settings}
    if white_box:
        _check_settings(cw_wb, settings, f"attack {attack}", reserved=("target", "seed", "progress"))
        if metric != Metric.KD:
            raise InputError(f"--attack {attack} attacks the K-density detector: use --detector kd "
                             f"(adaptive-pgd attacks any metric)")
        if eps is not None:
            raise InputError(f"--eps does not apply to --attack {attack}: drop it")
    else:
        _check_settings(detector_aware_pgd, settings, f"attack {attack}", reserved=("eps", "seed", "progress"))
        if eps is None:
            raise InputError(f"--attack {attack} needs --eps (radius in [0, 1] pixel units): e.g. --eps 0.1")
    if n < 1 or start < 0:
        raise InputError(f"--n must be >= 1 and --start >= 0, got --n {n} --start {start}")
    batch_size = batch_size or (100 if white_box else 500)
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    device = torch.device(device)
    target = load_checkpoint(checkpoint, device=device)
    crafting = load_checkpoint(substitute, device=device) if substitute else target
    if crafting.config.dataset != target.config.dataset:
        raise InputError(f"--substitute is a {crafting.config.dataset} model, the checkpoint a "
                         f"{target.config.dataset} model: use models of the same dataset")
    data = load_dataset(target.config.dataset, "test", detector_settings.data_dir)
    if start + n > len(data):
        raise InputError(f"--start {start} --n {n} runs past the {len(data)} test images: lower --n")
    index = torch.arange(start, start + n)
    x_all, y_all = data.float_images(index), data.labels[index]

    notes = []
    crafting_detector, fit = DetectorSession(crafting, detector_settings, device=device).detector(metric)
    notes += fit.notes
    t0 = time.perf_counter()
    run = run_cw_wb if white_box else run_adaptive_pgd
    extra = {} if white_box else {"eps": eps}
    result = run(crafting.model, crafting_detector, x_all, y_all, seed=seed, start=start, batch_size=batch_size,
                 callback=callback, **extra, **settings)
    seconds = time.perf_counter() - t0

    craft_clean = batched_outputs(crafting.model, x_all, device=device).logits.argmax(1)
    craft_adv = batched_outputs(crafting.model, result.x_adv, device=device)
    tensors = {"x_adv": result.x_adv, "success": result.success}
    if white_box:
        tensors.update(targets=result.target, f2=result.f2, f2_attack=result.f2_attack, fooled=result.fooled,
                       phase1_success=result.phase1_success)
        summary = summarize_white_box(result, x_all, y_all, craft_clean)
    else:
        tensors["score"] = result.score
        with torch.no_grad():
            scores = crafting_detector.score_samples(craft_adv).cpu()
        summary = {"robust_accuracy_with_rejection": _robust(y_all, craft_adv.logits.argmax(1), scores,
                                                             crafting_detector.threshold_),
                   "success_rate": float(result.success.float().mean())}
    tensors = {k: v.detach().cpu() for k, v in tensors.items()}
    tensors.update(x=x_all, labels=y_all, index=index, clean_pred=craft_clean, adv_pred=craft_adv.logits.argmax(1))
    info = {
        "attack": attack, "settings": settings, "eps": eps, "seed": seed, "detector": metric,
        "detector_threshold": float(crafting_detector.threshold_), "fpr": detector_settings.fpr,
        "checkpoint": str(crafting.directory), "dataset": crafting.config.dataset,
        "objective": crafting.config.objective, "depth": crafting.config.depth, "split": "test",
        "start": start, "n": n, "batch_size": batch_size, "device": str(device), "seconds": seconds,
        "seconds_per_example": seconds / n, "summary": summary, "rcedetect_version": __version__,
        "torch_version": torch.__version__,
    }
    if substitute:
        # Black box: the examples that fooled the substitute, judged by the target with its OWN detector.
        target_detector, fit = DetectorSession(target, detector_settings, device=device).detector(metric)
        notes += fit.notes
        fed = (craft_clean == y_all) & (tensors["fooled"] if white_box else tensors["success"])
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
    return ThreatModelRun(tensors, info, tuple(notes))


# ------------------------------------------------------- `rcedetect threat-models`: all sections
THREAT_MODEL_TABLES = ("table3", "table2", "table4", "adaptive", "worstcase")


@dataclass(frozen=True)
class ReportUpdate:
    """One step of `threat_model_report`: `section` ("table3", "table2", "table4", "adaptive",
    "worstcase", or "note" for a remark), `label` (the model's label), `value` (the new entry, or the note's text),
    `seconds` and the whole `report` so far (JSON-able)."""

    section: str
    label: str
    value: object
    seconds: float
    report: dict


def _label(loaded, used) -> str:
    base = f"{loaded.config.dataset}-resnet{loaded.config.depth}-{loaded.config.objective}"
    label, i = base, 2
    while label in used:
        label, i = f"{base}-{i}", i + 1
    used.add(label)
    return label


def threat_model_report(checkpoints, *, targets=(), tables=None, n: int = 100, start=None, seed: int = 0,
                        batch_size: int = 100, cw_settings=None, eps_values=(0.0, 0.1, 0.2, 0.3),
                        norm=Norm.LINF, metrics=PAPER_METRICS, pgd_steps: int = 100, restarts: int = 1,
                        methods=PGD_RULES, worst_case=None, detector_settings=None, device="cpu"):
    """Table 3, appendix Table 2, Table 4, the adaptive curve and the worst-case evaluation for
    checkpoint folders, step by step.

    checkpoints: models of Table 3 / Table 2 / the adaptive curve, and Table 4's substitutes; targets:
    Table 4's target models, each judged by its own K-density. tables: sections (default: table3
    table2 adaptive, plus table4 with targets). The images are `n` clean test images held out from
    the thresholds: positions [start, start + n) of the seeded test permutation of
    `detector_settings` (`DetectorSession.heldout_index`; start defaults to its calibration_size).
    cw_settings: `cw_wb` keywords (default: the paper's budget); seed, batch_size: as `run_cw_wb`;
    eps_values, norm, pgd_steps, restarts, methods, metrics: `adaptive_curve`'s. worst_case: the
    `WorstCaseBudget` of the "worstcase" section (`evaluation.worst_case`; default: its full budget),
    which attacks every model with each of `metrics` end to end, per image the worst case.

    A generator of `ReportUpdate`s, one per finished entry (so a caller can save a long run as it
    goes) and one per note; the last update's `report` is complete.
    """
    from .. import __version__
    from ..checkpoints import load_checkpoint
    from ..data import load_dataset
    from ..detectors.session import DetectorSession, DetectorSettings

    detector_settings = DetectorSettings() if detector_settings is None else detector_settings
    check_cw_wb_detector_settings(detector_settings)
    cw_settings = dict(cw_settings or {})
    _check_settings(cw_wb, cw_settings, "cw-wb", reserved=("target", "kappa", "seed", "progress"))
    for name, value in (("n", n), ("batch_size", batch_size), ("pgd_steps", pgd_steps), ("restarts", restarts)):
        if value < 1:
            raise InputError(f"{name} (--{name.replace('_', '-')}) must be >= 1, got {value}")
    if any(e < 0 for e in eps_values):
        raise InputError(f"eps values (--eps) must be >= 0, got {list(eps_values)}")
    if not checkpoints:
        raise InputError("pass at least one checkpoint")
    tables = list(tables or (["table3", "table2", "adaptive"] + (["table4"] if targets else [])))
    unknown = sorted(set(tables) - set(THREAT_MODEL_TABLES))
    if unknown:
        raise InputError(f"unknown tables {', '.join(unknown)}: choose from {', '.join(THREAT_MODEL_TABLES)}")
    if "table4" in tables and not targets:
        raise InputError("--tables table4 needs --targets CHECKPOINT [...] "
                         "(the attacked models, ResNet-56 in the paper)")
    metrics = [Metric.coerce(m, "metric") for m in metrics]
    device = torch.device(device)
    used = set()
    models = [(lambda loaded: (_label(loaded, used), loaded))(load_checkpoint(p, device=device)) for p in checkpoints]
    judged = [(lambda loaded: (_label(loaded, used), loaded))(load_checkpoint(p, device=device)) for p in targets]
    datasets = {loaded.config.dataset for _, loaded in models + judged}
    if len(datasets) != 1:
        raise InputError(f"all checkpoints must be of one dataset, got {', '.join(sorted(datasets))}")
    data = load_dataset(datasets.pop(), "test", detector_settings.data_dir)
    sessions = {}
    notes = []

    def detector_for(loaded, metric):
        key = str(loaded.directory)
        if key not in sessions:
            sessions[key] = DetectorSession(loaded, detector_settings, device=device)
        detector, info = sessions[key].detector(metric)
        notes.extend(info.notes)
        return detector

    def flush_notes():
        while notes:
            yield ReportUpdate("note", "", notes.pop(0), 0.0, report)

    start = detector_settings.calibration_size if start is None else start
    index, note = DetectorSession(models[0][1], detector_settings).heldout_index(n, start)
    if note:
        notes.append(note)
    x, y = data.float_images(index).to(device), data.labels[index].to(device)
    report = {
        "rcedetect_version": __version__, "torch_version": torch.__version__, "device": str(device),
        "images": {"split": "test", "permutation_seed": detector_settings.split_seed, "start": start, "n": n,
                   "index": [int(i) for i in index]},
        "seed": seed,
        "detectors": {"fpr": detector_settings.fpr, "n_per_class": detector_settings.n_per_class,
                      "calibration_size": detector_settings.calibration_size,
                      "permutation_seed": detector_settings.split_seed},
        "cw_wb_settings": cw_settings,
        "adaptive_settings": {"eps": list(eps_values), "norm": norm, "steps": pgd_steps, "restarts": restarts,
                              "methods": list(methods), "metrics": metrics},
        "checkpoints": {label: str(m.directory) for label, m in models},
        "targets": {label: str(m.directory) for label, m in judged},
    }
    yield from flush_notes()

    table3_examples = {}  # kappa-0 C&W-wb examples, reused as Table 4's (same images, seed and settings)
    for table, kappa in (("table3", 0.0), ("table2", 5.0)):
        if table not in tables:
            continue
        report[table] = {}
        for label, loaded in models:
            kd = detector_for(loaded, Metric.KD)
            t0 = time.perf_counter()
            row, result = white_box_row(loaded.model, kd, x, y, kappa=kappa, seed=seed, batch_size=batch_size,
                                        return_result=True, **cw_settings)
            if kappa == 0.0:
                table3_examples[label] = result
            row["objective"], row["depth"] = loaded.config.objective, loaded.config.depth
            report[table][label] = row
            yield from flush_notes()
            yield ReportUpdate(table, label, row, time.perf_counter() - t0, report)
    if "table4" in tables:
        t0 = time.perf_counter()
        substitutes = {label: (m.model, detector_for(m, Metric.KD)) for label, m in models}
        attacked = {label: (m.model, detector_for(m, Metric.KD)) for label, m in judged}
        report["table4"] = transfer_table(substitutes, attacked, x, y, kappa=0.0, seed=seed, batch_size=batch_size,
                                          precomputed=table3_examples, **cw_settings)
        yield from flush_notes()
        yield ReportUpdate("table4", "", report["table4"], time.perf_counter() - t0, report)
    if "worstcase" in tables:
        from ..detectors.attackable import attackable
        from .worst_case import WorstCaseBudget, worst_case_evaluation

        budget = WorstCaseBudget() if worst_case is None else worst_case
        report["worst_case_budget"] = budget.to_dict()
        report["worstcase"] = {}
        for label, loaded in models:
            # LID / Mahalanobis-LR (saved by `rcedetect detect --fit-adversarial`) attacked through their layers
            detectors = {m.value: attackable(loaded.model, detector_for(loaded, m)) for m in metrics}
            t0 = time.perf_counter()
            result = worst_case_evaluation(loaded.model, detectors, x, y, budget=budget, seed=seed,
                                           dataset=loaded.config.dataset)
            result["objective"], result["depth"] = loaded.config.objective, loaded.config.depth
            report["worstcase"][label] = result
            yield from flush_notes()
            yield ReportUpdate("worstcase", label, result, time.perf_counter() - t0, report)
    if "adaptive" in tables:
        report["adaptive"] = {}
        for label, loaded in models:
            detectors = {m: detector_for(loaded, m) for m in metrics}
            t0 = time.perf_counter()
            curve = adaptive_curve(loaded.model, detectors, x, y, eps_values=eps_values, norm=norm, steps=pgd_steps,
                                   restarts=restarts, methods=tuple(methods), seed=seed)
            curve["objective"], curve["depth"] = loaded.config.objective, loaded.config.depth
            report["adaptive"][label] = curve
            yield from flush_notes()
            yield ReportUpdate("adaptive", label, curve, time.perf_counter() - t0, report)
