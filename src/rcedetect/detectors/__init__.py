"""Detection metrics and the thresholding detector of Pang et al. 2018 (sections 3.2 and 3.4).

    from rcedetect.detectors import METRICS, ThresholdDetector, SelectiveClassifier, collect_outputs

    train = collect_outputs(model, train_images)            # ModelOutput(logits, features)
    held_out = collect_outputs(model, clean_test_images)
    detector = ThresholdDetector(METRICS["kd"]("rce"), fpr=0.05).fit(train, train_labels, calibration=held_out)
    labels = SelectiveClassifier(model, detector).predict(x)  # class or NOT_SURE (-1)

Metric functions (`confidence`, `non_me`, `KernelDensity.log_density`) are batched and differentiable.
"""

from ..errors import check_keywords
from ..names import Metric, Objective
from .lid import LIDDetector, lid_mle, minibatch_lids
from .mahalanobis import MAGNITUDES, MahalanobisDetector, MahalanobisMetric, preprocess_inputs
from .taps import LayerTaps, TappedOutput, collect_layer_features, default_layers
from .kernel_density import DEFAULT_BANDWIDTH_SQ, KernelDensity, default_bandwidth_sq, select_bandwidth
from .metrics import ConfidenceMetric, NonMEMetric, confidence, confidence_log_odds, max_non_me, non_me
from .persistence import detector_paths, load_detector, save_detector
from .selective import NOT_SURE, SelectiveClassifier, collect_outputs
from .threshold import ThresholdDetector, threshold_at_fpr


def _stateless(cls):
    def factory(objective=None, **settings):
        check_keywords(cls, settings, f"metric {cls.name}")  # takes no settings: any is refused
        return cls()
    factory.__doc__ = f"A `{cls.__name__}` (the objective does not matter for it; it takes no settings)."
    return factory


def _lid_detector(objective=None, **settings):
    """`LIDDetector(**settings)`: k, batch_size, Cs, cv, max_iter, seed (it is fitted on adversarial examples)."""
    check_keywords(LIDDetector, settings, "metric lid")
    return LIDDetector(**settings)


def _mahalanobis_metric(objective=None, **settings):
    """`MahalanobisMetric(**settings)`: n_per_class (None: every training example), seed."""
    check_keywords(MahalanobisMetric, settings, "metric mahalanobis")
    return MahalanobisMetric(**settings)


def _mahalanobis_lr(objective=None, **settings):
    """`MahalanobisDetector(**settings)`: magnitude, Cs, cv, max_iter, seed (fitted on adversarial examples)."""
    check_keywords(MahalanobisDetector, settings, "metric mahalanobis-lr")
    return MahalanobisDetector(**settings)


def _kd_metric(objective=Objective.CE, **settings):
    """`KernelDensity.for_objective(objective, **settings)`: bandwidth_sq, n_per_class, seed, chunk_size."""
    return KernelDensity.for_objective(objective, **settings)


# Metric -> factory(objective, **metric settings) -> metric object for `ThresholdDetector`. The
# objective ('ce' / 'rce') only matters for K-density's default bandwidth; unknown settings are refused.
METRICS = {
    Metric.CONFIDENCE: _stateless(ConfidenceMetric),
    Metric.NON_ME: _stateless(NonMEMetric),
    Metric.KD: _kd_metric,
    # Baselines (beyond the paper): Mahalanobis' unsupervised penultimate-layer form is a plain metric;
    # LID and Mahalanobis-LR must be fitted on adversarial examples before a threshold can be set
    # (`supervised.fit_supervised`, the honest protocol: one attack, training images).
    Metric.MAHALANOBIS: _mahalanobis_metric,
    Metric.LID: _lid_detector,
    Metric.MAHALANOBIS_LR: _mahalanobis_lr,
}

__all__ = [
    "METRICS", "NOT_SURE", "DEFAULT_BANDWIDTH_SQ",
    "confidence", "confidence_log_odds", "non_me", "max_non_me",
    "ConfidenceMetric", "NonMEMetric", "KernelDensity", "default_bandwidth_sq", "select_bandwidth",
    "ThresholdDetector", "threshold_at_fpr", "SelectiveClassifier", "collect_outputs",
    "save_detector", "load_detector", "detector_paths",
    "LIDDetector", "lid_mle", "minibatch_lids", "MAGNITUDES", "MahalanobisDetector", "MahalanobisMetric",
    "preprocess_inputs", "LayerTaps", "TappedOutput", "collect_layer_features", "default_layers",
]
