"""Detection metrics and the thresholding detector of Pang et al. 2018 (sections 3.2 and 3.4).

    from rcedetect.detectors import METRICS, ThresholdDetector, SelectiveClassifier, collect_outputs

    train = collect_outputs(model, train_images)            # ModelOutput(logits, features)
    held_out = collect_outputs(model, clean_test_images)
    detector = ThresholdDetector(METRICS["kd"]("rce"), fpr=0.05).fit(train, train_labels, calibration=held_out)
    labels = SelectiveClassifier(model, detector).predict(x)  # class or NOT_SURE (-1)

Metric functions (`confidence`, `non_me`, `KernelDensity.log_density`) are batched and differentiable.
"""

from .kernel_density import DEFAULT_BANDWIDTH_SQ, KernelDensity, default_bandwidth_sq, select_bandwidth
from .metrics import ConfidenceMetric, NonMEMetric, confidence, confidence_log_odds, max_non_me, non_me
from .persistence import detector_paths, load_detector, save_detector
from .selective import NOT_SURE, SelectiveClassifier, collect_outputs
from .threshold import ThresholdDetector, threshold_at_fpr


def _confidence_metric(objective=None, **kwargs):
    return ConfidenceMetric()


def _non_me_metric(objective=None, **kwargs):
    return NonMEMetric()


def _kd_metric(objective="ce", bandwidth_sq=None, **kwargs):
    return KernelDensity(default_bandwidth_sq(objective) if bandwidth_sq is None else bandwidth_sq, **kwargs)


# CLI name -> factory(objective, **metric kwargs) -> metric object for `ThresholdDetector`.
# The objective ('ce' / 'rce') only matters for K-density's default bandwidth.
METRICS = {
    "confidence": _confidence_metric,
    "non-me": _non_me_metric,
    "kd": _kd_metric,
}

__all__ = [
    "METRICS", "NOT_SURE", "DEFAULT_BANDWIDTH_SQ",
    "confidence", "confidence_log_odds", "non_me", "max_non_me",
    "ConfidenceMetric", "NonMEMetric", "KernelDensity", "default_bandwidth_sq", "select_bandwidth",
    "ThresholdDetector", "threshold_at_fpr", "SelectiveClassifier", "collect_outputs",
    "save_detector", "load_detector", "detector_paths",
]
