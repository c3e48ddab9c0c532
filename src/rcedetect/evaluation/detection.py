"""Detection figures of Pang et al. 2018, section 4.3, as pure functions (arrays/tensors in, floats out).

Conventions (the paper's): normal (clean) inputs are the *positive* class and a higher score means
"more normal", so the ROC curve is that of accepting normal inputs and AUC = P(score(clean) >
score(adversarial)) (+ half the ties). A detector rejects an input when score <= threshold.

The paper's counting filter (Table 2): only pairs whose clean input is classified correctly *and*
whose adversarial twin is misclassified count (`counting_mask`).
"""

import numpy as np
import sklearn.metrics
import torch

from ..detectors.threshold import threshold_at_fpr
from ..errors import InputError


def _array(x, name: str, dtype=np.float64) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise InputError(f"{name} must be one-dimensional, got shape {arr.shape}")
    arr = arr.astype(dtype, copy=False)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or inf: check the scores")
    return arr


def _pair(clean_scores, adversarial_scores):
    clean = _array(clean_scores, "clean_scores")
    adv = _array(adversarial_scores, "adversarial_scores")
    if clean.size == 0 or adv.size == 0:
        raise InputError(f"need clean and adversarial scores, got {clean.size} and {adv.size}")
    y_true = np.r_[np.ones(clean.size), np.zeros(adv.size)]
    return y_true, np.r_[clean, adv]


def roc_curve(clean_scores, adversarial_scores):
    """ROC of separating normal (positive) from adversarial with higher = more normal.

    Returns scikit-learn's (fpr, tpr, thresholds): fpr = fraction of adversarial inputs accepted,
    tpr = fraction of clean inputs accepted, at each threshold (accepting score >= threshold).
    """
    y_true, scores = _pair(clean_scores, adversarial_scores)
    return sklearn.metrics.roc_curve(y_true, scores)


AUC_TIES = ("half", "official")


def auc_score(clean_scores, adversarial_scores, *, ties: str = "half") -> float:
    """ROC AUC with the paper's convention (normal positive, higher = more normal).

    ties="half" (default): the standard AUC, P(clean > adversarial) + P(clean = adversarial) / 2, via
    scikit-learn. ties="official": what the authors' `Matlab_scripts/AUC.m` computes when called as in
    `auc_of_roc_RCE.m` (lines 74-86: targets [ones(clean) zeros(adv)], outputs [clean adv]). AUC.m ranks
    the outputs by MATLAB's stable ascending `sort` (line 2), sums the ranks of the positives (lines
    12-16) and returns (sigma - M(M+1)/2) / (MN) (line 17), the Mann-Whitney count with each tie broken
    by input position; all clean scores precede all adversarial ones, so a tied clean score always
    ranks *below* its adversarial twin and every clean/adversarial tie counts 0: the result is
    P(clean > adversarial), strictly. Ties therefore lower the official AUC (they favour the adversarial
    class), e.g. saturated confidences of 1.0 on both sides.
    """
    if ties not in AUC_TIES:
        raise InputError(f"ties must be one of {list(AUC_TIES)} (1/2 per tie, or 0 as the authors' AUC.m), got {ties!r}")
    y_true, scores = _pair(clean_scores, adversarial_scores)
    if ties == "official":
        clean, adv = np.sort(scores[y_true == 1]), scores[y_true == 0]
        # For each adversarial score, the clean scores strictly above it: a tie counts 0.
        above = clean.size - np.searchsorted(clean, adv, side="right")
        return float(above.sum() / (clean.size * adv.size))
    return float(sklearn.metrics.roc_auc_score(y_true, scores))


def counting_mask(labels, clean_predictions, adversarial_predictions) -> np.ndarray:
    """Boolean (N,): clean input classified correctly AND its adversarial twin misclassified."""
    y = _array(labels, "labels", np.int64)
    clean = _array(clean_predictions, "clean_predictions", np.int64)
    adv = _array(adversarial_predictions, "adversarial_predictions", np.int64)
    if not (y.shape == clean.shape == adv.shape):
        raise InputError(f"labels {y.shape}, clean {clean.shape} and adversarial {adv.shape} predictions "
                         f"differ in length")
    return (clean == y) & (adv != y)


def rejection_rate(scores, threshold: float) -> float:
    """Fraction of `scores` rejected (score <= threshold)."""
    s = _array(scores, "scores")
    if s.size == 0:
        raise InputError("rejection_rate needs at least one score")
    return float(np.mean(s <= threshold))


def tpr_at_fpr(clean_scores, adversarial_scores, fpr: float = 0.05) -> float:
    """Detection rate at a false-positive rate, in the *detection* sense: the threshold rejects
    `fpr` of the clean inputs (`threshold_at_fpr`, the rule `ThresholdDetector` uses) and the result
    is the fraction of adversarial inputs rejected (score <= threshold)."""
    clean = _array(clean_scores, "clean_scores")
    threshold = threshold_at_fpr(clean, fpr)
    return rejection_rate(adversarial_scores, threshold)


def robust_accuracy_with_rejection(labels, adversarial_predictions, adversarial_scores, threshold: float) -> float:
    """Fraction of adversarial inputs that are rejected (score <= threshold) or classified correctly."""
    y = _array(labels, "labels", np.int64)
    pred = _array(adversarial_predictions, "adversarial_predictions", np.int64)
    s = _array(adversarial_scores, "adversarial_scores")
    if not (y.shape == pred.shape == s.shape) or y.size == 0:
        raise InputError(f"labels {y.shape}, predictions {pred.shape} and scores {s.shape} must be equal, non-empty")
    return float(np.mean((s <= threshold) | (pred == y)))


def detection_report(clean_scores, adversarial_scores, *, mask=None, fpr: float = 0.05) -> dict:
    """AUC, TPR at `fpr` and counts for paired clean/adversarial scores, optionally filtered by `mask`
    (e.g. `counting_mask`, applied to both sides as in the paper's Table 2)."""
    clean = _array(clean_scores, "clean_scores")
    adv = _array(adversarial_scores, "adversarial_scores")
    if mask is not None:
        keep = _array(mask, "mask", bool)
        if keep.shape != clean.shape or keep.shape != adv.shape:
            raise InputError(f"mask {keep.shape} must match the paired scores {clean.shape} / {adv.shape}")
        clean, adv = clean[keep], adv[keep]
    return {
        "n": int(clean.size),
        "auc": auc_score(clean, adv),
        "fpr": fpr,
        "tpr_at_fpr": tpr_at_fpr(clean, adv, fpr),
    }
