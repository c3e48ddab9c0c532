"""Evaluation helpers: ROC/AUC with the paper's conventions, the counting filter, TPR at a fixed FPR,
robust accuracy with rejection, and the paper's distortion."""

from .detection import (auc_score, counting_mask, detection_report, rejection_rate, robust_accuracy_with_rejection,
                        roc_curve, tpr_at_fpr)
from .distortion import distortion, mean_distortion

__all__ = [
    "roc_curve", "auc_score", "counting_mask", "rejection_rate", "tpr_at_fpr",
    "robust_accuracy_with_rejection", "detection_report", "distortion", "mean_distortion",
]
