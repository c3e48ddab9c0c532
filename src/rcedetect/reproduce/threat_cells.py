"""Cells of the white-box, black-box and adaptive threat models (sections 4.4-4.5, appendix B.4, issue 5).

    table3.k<kappa>.<obj>   C&W-wb (kappa 0: Table 3; kappa 5: appendix Table 2) on the main model with
                            its K-density detector: ratio of f2(x*) > 0 and mean distortion; Figure 4 images
    table4.<sub>-to-<tgt>   the kappa-0 C&W-wb examples of a ResNet-32 (substitute) fed to a ResNet-56
                            (target) with its *own* K-density detector: transfer rate and AUC
    adaptive.<obj>          detector-aware PGD against classifier + detector at the 5 % FPR threshold:
                            robust accuracy with rejection vs eps, per metric

Definitions (written into the cell JSON too):
* crafted examples = the clean input is classified correctly and C&W-wb reached the target class with
  margin > kappa (`fooled`); Table 3's ratio is the fraction of them with f2(x*) > 0 (the detector is
  not fooled: the example's K-density stays below the median of the target class's training points),
  and its distortion their mean RMS distortion (0-255 scale).
* Table 4: transfer rate = fraction of crafted examples the target misclassifies; AUC = the target's
  K-density AUC over the paper's counting filter evaluated on the target (clean correct on the target,
  adversarial misclassified by the target), and over all crafted examples as a second number.
"""

import numpy as np
import torch

from ..attacks import random_targets
from ..attacks.cw_wb import cw_wb
from ..data import DATASETS
from ..evaluation import auc_score, distortion, robust_accuracy_with_rejection
from ..inference import batched_outputs
from .jsonable import ints, mean_or_none, sig, uint8_images

CWWB_FIELDS = ("x_adv", "success", "f2", "fooled", "phase1_success", "f2_attack", "target")


# ------------------------------------------------------------------------------------ Table 3
def table3_config(rep, kappa: float, objective: str) -> dict:
    p = rep.preset
    return {**rep.base_config(0, objective), "attack": "cw-wb", "kappa": float(kappa), "n": p.cwwb_n,
            "settings": dict(p.cwwb_settings)}


def cwwb_examples(rep, kappa: float, objective: str, *, lo: float = 0.0, hi: float = 1.0):
    """C&W-wb examples of the first `cwwb_n` images against the main model's K-density (cached, chunked)."""
    p = rep.preset
    n = p.cwwb_n
    x, y = rep.images(n)
    model, kd = rep.model(0, objective), rep.kd(0, objective)
    targets = random_targets(y, DATASETS[rep.dataset].num_classes, rep.seed)
    config = {"model": rep.model_identity(0, objective), "kd": rep.kd_params(objective), "kappa": float(kappa),
              "n": n, "settings": dict(p.cwwb_settings), "seed": rep.seed}

    def chunk(start, stop):
        dev = rep.device
        result = cw_wb(model, x[start:stop].to(dev), y[start:stop].to(dev), kd, target=targets[start:stop].to(dev),
                       kappa=float(kappa), seed=rep.seed, **p.cwwb_settings)
        return {name: getattr(result, name) for name in CWWB_FIELDS}

    label = f"cw-wb-k{kappa:g}"
    callback = rep.progress.chunk_callback(label, lo, hi) if rep.progress else None
    return rep.store.chunked(f"{rep.tag(0, objective)}.{label}", config, n, p.chunk, chunk, on_chunk=callback)


def table3_cell(rep, kappa: float, objective: str) -> dict:
    p = rep.preset
    tensors, seconds = cwwb_examples(rep, kappa, objective, hi=0.95)
    n = p.cwwb_n
    x, y = rep.images(n)
    clean_pred = rep.clean_outputs(0, objective, n).logits.argmax(1)
    adv = batched_outputs(rep.model(0, objective), tensors["x_adv"], device=rep.device)
    adv_pred = adv.logits.argmax(1)
    fooled, f2 = tensors["fooled"].bool(), tensors["f2"].double()
    crafted = (clean_pred == y) & fooled
    dist = distortion(tensors["x_adv"], x)
    kd_threshold = rep.thresholds(0, objective)["kd"]
    kd_clean = rep.kd(0, objective).score(rep.clean_outputs(0, objective, n)).double().numpy()
    with torch.no_grad():
        kd_adv = rep.kd(0, objective).score(adv).double().numpy()
    counted = ((clean_pred == y) & (adv_pred != y)).numpy()
    c = crafted.numpy()
    result = {
        "attack": "cw-wb", "kappa": float(kappa), "objective": objective, "depth": p.depths[0], "n": n,
        "settings": dict(p.cwwb_settings),
        "n_clean_correct": int((clean_pred == y).sum()), "n_crafted": int(c.sum()),
        "ratio_f2_positive": mean_or_none((f2.numpy() > 0)[c]),
        "distortion": mean_or_none(dist[c]),
        "success_rate": float(tensors["success"].float().mean()),
        "phase1_success_rate": float(tensors["phase1_success"].float().mean()),
        "kd_threshold": kd_threshold,
        "kd_detection_rate": mean_or_none((kd_adv <= kd_threshold)[c]),
        "n_counted": int(counted.sum()),
        "kd_auc": auc_score(kd_clean[counted], kd_adv[counted]) if counted.any() else None,
        "attack_seconds": seconds, "seconds_per_example": seconds / n,
        "per_example": {"label": ints(y), "target": ints(tensors["target"]), "clean_pred": ints(clean_pred),
                        "adv_pred": ints(adv_pred), "fooled": ints(fooled), "f2": sig(f2),
                        "distortion": sig(dist), "kd_clean": sig(kd_clean), "kd_adv": sig(kd_adv)},
    }
    if kappa == 0:
        k = min(p.figure4_images, n)
        result["figure4"] = {"clean": uint8_images(x[:k]), "adversarial": uint8_images(tensors["x_adv"][:k]),
                             "label": ints(y[:k]), "target": ints(tensors["target"][:k]),
                             "adv_pred": ints(adv_pred[:k]), "distortion": sig(dist[:k])}
    return result


# ------------------------------------------------------------------------------------ Table 4
def table4_config(rep, substitute: str, target: str) -> dict:
    return {"substitute": table3_config(rep, 0.0, substitute), "target": rep.base_config(1, target)}


def table4_cell(rep, substitute: str, target: str) -> dict:
    p = rep.preset
    tensors, _ = cwwb_examples(rep, 0.0, substitute, hi=0.5)
    n = p.cwwb_n
    x, y = rep.images(n)
    sub_clean = rep.clean_outputs(0, substitute, n).logits.argmax(1)
    crafted = ((sub_clean == y) & tensors["fooled"].bool()).numpy()
    # The target's own detector: its bank, its bandwidth, its calibration threshold (never the substitute's).
    model, kd = rep.model(1, target), rep.kd(1, target)
    clean = rep.clean_outputs(1, target, n)
    with torch.no_grad():
        adv = batched_outputs(model, tensors["x_adv"], device=rep.device)
        kd_clean, kd_adv = kd.score(clean).double().numpy(), kd.score(adv).double().numpy()
    clean_pred, adv_pred = clean.logits.argmax(1), adv.logits.argmax(1)
    target_clean_ok = (clean_pred == y).numpy()
    transferred = (adv_pred != y).numpy()
    counted = crafted & target_clean_ok & transferred
    all_crafted = crafted & target_clean_ok
    threshold = rep.thresholds(1, target)["kd"]
    return {
        "substitute": f"{rep.tag(0, substitute)}", "target": f"{rep.tag(1, target)}", "n": n,
        "n_crafted": int(crafted.sum()), "transfer_rate": mean_or_none(transferred[crafted]),
        "n_counted": int(counted.sum()),
        "kd_auc": auc_score(kd_clean[counted], kd_adv[counted]) if counted.any() else None,
        "kd_auc_all_crafted": auc_score(kd_clean[all_crafted], kd_adv[all_crafted]) if all_crafted.any() else None,
        "kd_threshold": threshold,
        "kd_detection_rate": mean_or_none((kd_adv <= threshold)[counted]),
        "robust_accuracy_with_rejection": robust_accuracy_with_rejection(y, adv_pred, kd_adv, threshold),
    }


# ------------------------------------------------------------------------------ adaptive curve
def adaptive_config(rep, objective: str) -> dict:
    p = rep.preset
    return {**rep.base_config(0, objective), "attack": "detector-aware-pgd", "eps": list(p.adaptive_eps),
            "n": p.adaptive_n, "metrics": list(p.adaptive_metrics), "settings": dict(p.adaptive_settings)}


def adaptive_cell(rep, objective: str) -> dict:
    """Robust accuracy with rejection at the preset's FPR under `detector_aware_pgd` (issue 5)."""
    from ..attacks.adaptive_pgd import detector_aware_pgd
    from ..detectors import ConfidenceMetric, NonMEMetric, ThresholdDetector

    p = rep.preset
    n = p.adaptive_n
    x, y = rep.images(n)
    model = rep.model(0, objective)
    metric_objects = {"confidence": ConfidenceMetric(), "non-me": NonMEMetric(), "kd": rep.kd(0, objective)}
    cal = rep.calibration_outputs(0, objective)
    curves, seconds = {}, {}
    steps = len(p.adaptive_metrics) * len(p.adaptive_eps)
    for m_i, metric in enumerate(p.adaptive_metrics):
        detector = ThresholdDetector(metric_objects[metric], fpr=p.fpr).calibrate(cal)
        curves[metric], seconds[metric] = [], []
        for e_i, eps in enumerate(p.adaptive_eps):
            config = {"model": rep.model_identity(0, objective), "metric": metric, "eps": eps, "n": n,
                      "settings": dict(p.adaptive_settings), "seed": rep.seed, "fpr": p.fpr,
                      "kd": rep.kd_params(objective)}
            step = m_i * len(p.adaptive_eps) + e_i

            def chunk(start, stop, eps=eps, detector=detector):
                dev = rep.device
                result = detector_aware_pgd(model, x[start:stop].to(dev), y[start:stop].to(dev), detector, eps=eps,
                                            seed=rep.seed, **p.adaptive_settings)
                return {"x_adv": result.x_adv, "success": result.success}

            label = f"adaptive-{metric}-{eps:g}"
            callback = rep.progress.chunk_callback(label, step / steps, (step + 1) / steps) if rep.progress else None
            tensors, took = rep.store.chunked(f"{rep.tag(0, objective)}.{label}", config, n, p.chunk, chunk,
                                              on_chunk=callback)
            with torch.no_grad():
                out = batched_outputs(model, tensors["x_adv"], device=rep.device)
                scores = detector.score_samples(out).double().numpy()
            curves[metric].append(robust_accuracy_with_rejection(y, out.logits.argmax(1), scores,
                                                                 detector.threshold_))
            seconds[metric].append(took)
    clean = rep.clean_outputs(0, objective, n)
    return {"objective": objective, "n": n, "eps": list(p.adaptive_eps), "fpr": p.fpr,
            "settings": dict(p.adaptive_settings),
            "clean_accuracy": float((clean.logits.argmax(1) == y).float().mean()),
            "robust_accuracy_with_rejection": curves, "attack_seconds": seconds}
