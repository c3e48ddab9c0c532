"""Save and load a fitted `ThresholdDetector` beside a checkpoint: safetensors + JSON, never pickle.

    <directory>/detector-<metric>.json         metric name and parameters, threshold, fpr, metadata
    <directory>/detector-<metric>.safetensors  the metric's tensors (K-density bank) and the clean
                                               calibration scores (so another fpr needs no refit)

Both files are written atomically (temp file + rename), JSON last, so a reader never sees a
half-written detector: the JSON names the safetensors file's sha256.
"""

import json
from pathlib import Path

from .. import __version__
from ..errors import CheckpointError
from ..files import atomic_save_tensors, atomic_write_json, read_tensors, sha256_file
from .kernel_density import KernelDensity
from .lid import LIDDetector
from .mahalanobis import MahalanobisDetector, MahalanobisMetric
from ..names import Metric
from .metrics import ConfidenceMetric, NonMEMetric
from .threshold import ThresholdDetector

FORMAT = "rcedetect-detector-v1"
METRIC_TYPES = {cls.name: cls for cls in (ConfidenceMetric, NonMEMetric, KernelDensity, MahalanobisMetric, LIDDetector,
                                           MahalanobisDetector)}


def detector_paths(directory, metric_name: str):
    """(json path, safetensors path) of the detector for `metric_name` in `directory`."""
    directory, metric = Path(directory), Metric.coerce(metric_name, "metric")
    return directory / f"detector-{metric}.json", directory / f"detector-{metric}.safetensors"


def save_detector(detector: ThresholdDetector, directory, *, metadata=None):
    """Write a fitted detector to `directory`; `metadata` (JSON-able dict) is stored with it.

    Returns the (json, safetensors) paths.
    """
    detector._check_fitted()
    metric = detector.metric_
    json_path, tensor_path = detector_paths(directory, metric.name)
    tensors = {f"metric.{k}": v for k, v in metric.state_tensors().items()}
    if detector.calibration_scores_ is not None:
        tensors["calibration_scores"] = detector.calibration_scores_
    atomic_save_tensors(tensor_path, tensors, {"format": FORMAT, "metric": metric.name})
    atomic_write_json(json_path, {
        "format": FORMAT,
        "rcedetect_version": __version__,
        "metric": metric.name,
        "metric_params": metric.params(),
        "fpr": detector.fpr_,
        "threshold": detector.threshold_,
        "explicit_threshold": detector.threshold,
        "tensors_sha256": sha256_file(tensor_path),
        "metadata": dict(metadata or {}),
    })
    return json_path, tensor_path


def load_detector(directory, metric_name: str):
    """Load the detector for `metric_name` saved in `directory`: returns (ThresholdDetector, metadata).

    Raises `CheckpointError` (with the fix: refit) when the files are missing, from another
    format, or do not match each other.
    """
    metric_name = Metric.coerce(metric_name, "metric")
    json_path, tensor_path = detector_paths(directory, metric_name)
    if not json_path.exists() or not tensor_path.exists():
        raise CheckpointError(f"no saved '{metric_name}' detector in {directory}: "
                              f"fit one (rcedetect detect fits on first use)")
    try:
        info = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{json_path} is not valid JSON ({exc}): delete it or refit with --refit") from exc
    if info.get("format") != FORMAT or info.get("metric") != metric_name or metric_name not in METRIC_TYPES:
        raise CheckpointError(f"{json_path} is not a '{metric_name}' detector of format {FORMAT}: refit with --refit")
    if info.get("tensors_sha256") != sha256_file(tensor_path):
        raise CheckpointError(f"{tensor_path} does not match {json_path.name} (a partial or foreign write): "
                              f"refit with --refit")
    tensors, _ = read_tensors(tensor_path)
    metric_tensors = {k[len("metric."):]: v for k, v in tensors.items() if k.startswith("metric.")}
    try:
        metric = METRIC_TYPES[metric_name].from_state(info["metric_params"], metric_tensors)
        detector = ThresholdDetector(metric, fpr=info["fpr"] if info["fpr"] is not None else 0.05,
                                     threshold=info["explicit_threshold"])
        detector.metric_ = metric
        detector.threshold_ = float(info["threshold"])
        detector.fpr_ = info["fpr"]
        detector.calibration_scores_ = tensors.get("calibration_scores")
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{json_path} is incomplete ({exc!r}): refit with --refit") from exc
    return detector, info.get("metadata", {})
