"""Cells of the white-box, black-box and adaptive threat models (sections 4.4-4.5, appendix B.4, issue 5).

    table3.k<kappa>.<obj>   C&W-wb (kappa 0: Table 3; kappa 5: appendix Table 2) on the main model with
                            its K-density detector: ratio of f2(x*) > 0 and mean distortion; Figure 4 images
    table4.<sub>-to-<tgt>   the kappa-0 C&W-wb examples of a ResNet-32 (substitute) fed to a ResNet-56
                            (target) judged by its *own* K-density detector: transfer rate and AUC
    adaptive.<obj>          detector-aware PGD against classifier + detector at the FPR threshold:
                            robust accuracy with rejection vs eps, per metric (worst case over methods)

The numbers come from `rcedetect.evaluation.threat_models` (`summarize_white_box`,
`transfer_evaluation`, `adaptive_curve`); this module only adds what a resumable pipeline needs:
the attacks run in cached chunks (a killed run resumes at the first missing chunk) and the Table 3
examples are reused for Table 4 (Table 4 feeds exactly the Table 3 kappa-0 examples that fooled their
substitute, as `transfer_table` would recompute them: same targets, same attack bank, same seed).
"""

import numpy as np
import torch

from ..attacks import random_targets
from ..attacks.cw_wb import CWWBResult, cw_wb
from ..data import DATASETS
from ..detectors import ConfidenceMetric, NonMEMetric, ThresholdDetector
from ..evaluation import auc_score, distortion
from ..evaluation.threat_models import adaptive_curve, summarize_white_box, transfer_evaluation
from ..inference import batched_outputs
from .jsonable import ints, sig, uint8_images


# ------------------------------------------------------------------------------------ Table 3
def table3_config(rep, kappa: float, objective: str) -> dict:
    p = rep.preset
    return {**rep.base_config(0, objective), "attack": "cw-wb", "kappa": float(kappa), "n": p.cwwb_n,
            "settings": dict(p.cwwb_settings)}


def cwwb_examples(rep, kappa: float, objective: str, *, lo: float = 0.0, hi: float = 1.0):
    """C&W-wb on the first `cwwb_n` images against the main model's K-density (cached, chunked).

    Returns (CWWBResult on the CPU, attack seconds summed over chunks).
    """
    p = rep.preset
    n = p.cwwb_n
    x, y = rep.images(n)
    model, kd = rep.model(0, objective), rep.kd(0, objective)
    # Targets for all n at once (what cw_wb draws for a whole batch), so chunking never changes them.
    targets = random_targets(y, DATASETS[rep.dataset].num_classes, rep.seed)
    config = {"model": rep.model_identity(0, objective), "kd": rep.kd_params(objective), "kappa": float(kappa),
              "n": n, "settings": dict(p.cwwb_settings), "seed": rep.seed}

    def chunk(start, stop):
        dev = rep.device
        result = cw_wb(model, rep.on_device(x[start:stop]), y[start:stop].to(dev), kd, target=targets[start:stop].to(dev),
                       kappa=float(kappa), seed=rep.seed, **p.cwwb_settings)
        return result._asdict()

    label = f"cw-wb-k{kappa:g}"
    callback = rep.progress.chunk_callback(label, lo, hi) if rep.progress else None
    tensors, seconds = rep.store.chunked(f"{rep.tag(0, objective)}.{label}", config, n, p.chunk, chunk,
                                         on_chunk=callback)
    fields = {k: tensors[k] for k in CWWBResult._fields}
    for name in ("success", "fooled", "phase1_success"):
        fields[name] = fields[name].bool()
    return CWWBResult(**fields), seconds


def table3_cell(rep, kappa: float, objective: str) -> dict:
    p = rep.preset
    result, seconds = cwwb_examples(rep, kappa, objective, hi=0.95)
    n = p.cwwb_n
    x, y = rep.images(n)
    clean = rep.clean_outputs(0, objective, n)
    clean_pred = clean.logits.argmax(1)
    row = summarize_white_box(result, x, y, clean_pred)
    # Beyond Table 3: the detector at its FPR threshold (f2 <= 0 is a stricter notion of "fooled").
    kd = rep.kd(0, objective)
    with torch.no_grad():
        adv = batched_outputs(rep.model(0, objective), result.x_adv, device=rep.device)
        kd_clean, kd_adv = kd.score(clean).double().numpy(), kd.score(adv).double().numpy()
    adv_pred = adv.logits.argmax(1)
    counted = ((clean_pred == y) & result.fooled).numpy()
    threshold = rep.thresholds(0, objective)["kd"]
    out = {
        "attack": "cw-wb", "kappa": float(kappa), "objective": objective, "depth": p.depths[0],
        "settings": dict(p.cwwb_settings), **row,
        "kd_threshold": threshold,
        "kd_rejected_percent": (float(100 * np.mean(kd_adv[counted] <= threshold)) if counted.any() else None),
        "kd_auc": auc_score(kd_clean[counted], kd_adv[counted]) if counted.any() else None,
        "attack_seconds": seconds, "seconds_per_example": seconds / n,
        "per_example": {"label": ints(y), "target": ints(result.target), "clean_pred": ints(clean_pred),
                        "adv_pred": ints(adv_pred), "fooled": ints(result.fooled), "f2": sig(result.f2),
                        "distortion": sig(distortion(result.x_adv, x)),
                        "kd_clean": sig(kd_clean), "kd_adv": sig(kd_adv)},
    }
    if kappa == 0:
        k = min(p.figure4_images, n)
        out["figure4"] = {"clean": uint8_images(x[:k]), "adversarial": uint8_images(result.x_adv[:k]),
                          "label": ints(y[:k]), "target": ints(result.target[:k]), "adv_pred": ints(adv_pred[:k]),
                          "distortion": out["per_example"]["distortion"][:k]}
    return out


# ------------------------------------------------------------------------------------ Table 4
def table4_config(rep, substitute: str, target: str) -> dict:
    return {"substitute": table3_config(rep, 0.0, substitute), "target": rep.base_config(1, target)}


def kd_detector(rep, which: int, objective: str) -> ThresholdDetector:
    """A model's own K-density detector with its threshold at the preset's FPR on held-out clean images."""
    return ThresholdDetector(rep.kd(which, objective), fpr=rep.preset.fpr).calibrate(
        rep.calibration_outputs(which, objective))


def table4_cell(rep, substitute: str, target: str) -> dict:
    p = rep.preset
    result, _ = cwwb_examples(rep, 0.0, substitute, hi=0.5)
    n = p.cwwb_n
    x, y = rep.images(n)
    sub_clean = rep.clean_outputs(0, substitute, n).logits.argmax(1)
    fed = (sub_clean == y) & result.fooled  # crafted: they fool their substitute
    out = {"substitute": rep.tag(0, substitute), "target": rep.tag(1, target), "n": n, "n_fed": int(fed.sum())}
    if not fed.any():
        return {**out, "n_target_clean_correct": 0, "n_counted": 0, "transfer_rate_percent": None, "auc": None,
                "adversarial_rejected_percent": None}
    dev = rep.device
    row = transfer_evaluation(rep.model(1, target), kd_detector(rep, 1, target), rep.on_device(x[fed]), y[fed].to(dev),
                              rep.on_device(result.x_adv[fed]))
    return {**out, **row}


# ------------------------------------------------------------------------------ adaptive curve
def adaptive_config(rep, objective: str) -> dict:
    p = rep.preset
    return {**rep.base_config(0, objective), "attack": "detector-aware-pgd", "eps": list(p.adaptive_eps),
            "n": p.adaptive_n, "metrics": list(p.adaptive_metrics), "settings": dict(p.adaptive_settings)}


def adaptive_cell(rep, objective: str) -> dict:
    """Robust accuracy with rejection at the preset's FPR under `adaptive_curve` (issue 5), run in
    cached chunks of images; every reported value is a mean over images, so chunk values combine
    exactly by their sizes."""
    p = rep.preset
    n = p.adaptive_n
    x, y = rep.images(n)
    model = rep.model(0, objective)
    metrics = {"confidence": ConfidenceMetric(), "non-me": NonMEMetric(), "kd": rep.kd(0, objective)}
    cal = rep.calibration_outputs(0, objective)
    detectors = {m: ThresholdDetector(metrics[m], fpr=p.fpr).calibrate(cal) for m in p.adaptive_metrics}
    settings = dict(p.adaptive_settings)
    methods = tuple(settings.pop("methods", ("logit", "selective", "orthogonal")))
    config = {**adaptive_config(rep, objective), "model": rep.model_identity(0, objective)}

    def chunk(start, stop):
        dev = rep.device
        curve = adaptive_curve(model, detectors, rep.on_device(x[start:stop]), y[start:stop].to(dev),
                               eps_values=p.adaptive_eps, methods=methods, seed=rep.seed, **settings)
        tensors = {"count": torch.tensor([[float(stop - start)]], dtype=torch.float64),
                   "clean_accuracy": torch.tensor([[curve["clean_accuracy"]]], dtype=torch.float64),
                   "undefended": torch.tensor([curve["undefended"]["robust_accuracy"]], dtype=torch.float64)}
        for metric, values in curve["curves"].items():
            tensors[f"ra.{metric}"] = torch.tensor([values["robust_accuracy_with_rejection"]], dtype=torch.float64)
            for method, by in values["by_method"].items():
                tensors[f"by.{metric}.{method}"] = torch.tensor([by], dtype=torch.float64)
        return tensors

    callback = rep.progress.chunk_callback("adaptive", 0.0, 1.0) if rep.progress else None
    tensors, seconds = rep.store.chunked(f"{rep.tag(0, objective)}.adaptive", config, n, p.chunk, chunk,
                                         on_chunk=callback)
    weights = tensors["count"][:, 0]

    def combine(t):  # (chunks, len(eps)) -> size-weighted mean over chunks
        return [float(v) for v in (t * weights[:, None]).sum(0) / weights.sum()]

    curves = {m: combine(tensors[f"ra.{m}"]) for m in p.adaptive_metrics}
    by_method = {m: {meth: combine(tensors[f"by.{m}.{meth}"]) for meth in methods} for m in p.adaptive_metrics}
    return {"objective": objective, "n": n, "eps": [float(e) for e in p.adaptive_eps], "fpr": p.fpr,
            "settings": {**settings, "methods": list(methods)},
            "thresholds": {m: float(d.threshold_) for m, d in detectors.items()},
            "clean_accuracy": combine(tensors["clean_accuracy"])[0],
            "robust_accuracy_with_rejection": curves, "by_method": by_method,
            "undefended_robust_accuracy": combine(tensors["undefended"]),
            "attack_seconds": seconds, "seconds_per_example": seconds / n}
