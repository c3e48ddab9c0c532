"""The thresholding test strategy of section 3.4 of Pang et al. 2018 as a detector.

An input is accepted as normal when its metric value is larger than a threshold T and rejected
(adversarial, "NOT SURE") otherwise. T is set so that a target fraction `fpr` of clean held-out
inputs is rejected, or given explicitly.

scikit-learn conventions on torch tensors (no sklearn base class: we need autograd and devices):
`fit` returns self, fitted state ends in `_`, `score_samples` is higher for more normal inputs,
`decision_function = score_samples - threshold_`, `predict` returns +1 (accept) / -1 (reject).
"""

import copy

import numpy as np
import torch

from ..errors import InputError


def threshold_at_fpr(clean_scores, fpr: float) -> float:
    """The threshold T rejecting (score <= T) at most `fpr` of `clean_scores`, and as many as possible.

    With sorted scores s_1 <= ... <= s_n and k = floor(fpr * n), T = s_k: exactly k clean scores are
    rejected unless s_k ties with s_{k+1}, in which case T is the largest score below the tie (fewer
    than k rejected: the false-positive rate never exceeds `fpr` on the calibration data). T is always
    one of the scores (or the float just below the smallest), so comparing in the scores' own dtype
    is exact.
    """
    if not 0.0 <= fpr < 1.0:
        raise InputError(f"fpr must be in [0, 1), got {fpr}")
    scores = torch.as_tensor(clean_scores).detach().cpu().numpy().ravel()
    if scores.size == 0:
        raise InputError("cannot set a threshold from zero clean scores: pass held-out clean data")
    if not np.isfinite(scores).all():
        raise InputError("clean scores contain NaN or inf: check the model and the calibration data")
    s = np.sort(scores)
    k = int(np.floor(fpr * s.size + 1e-9))
    if k < s.size and k > 0 and s[k - 1] == s[k]:
        k = int(np.searchsorted(s, s[k], side="left"))  # drop the whole tie from the rejected side
    if k == 0:
        return float(np.nextafter(s[0], s.dtype.type(-np.inf)))
    return float(s[k - 1])


class ThresholdDetector:
    """Accept an input when `metric.score(model_output) > threshold_` (Pang et al. 2018, section 3.4).

    Args:
        metric: a metric object (`ConfidenceMetric()`, `NonMEMetric()`, `KernelDensity(...)`, see
            `METRICS`) with `score(model_output) -> (N,)`. `fit` fits a deep copy of it (`metric_`)
            when it has `requires_fit`, so the object passed in is never changed; `calibrate` alone
            uses it as given (`metric_ is metric`: pass an already fitted K-density).
        fpr: target false-positive rate (clean inputs rejected) used to set the threshold. Default 0.05.
        threshold: an explicit threshold instead of one set from `fpr`.

    Fitted state: `metric_` (the metric that scores), `threshold_` (float), `fpr_` (the operating
    point the threshold was set at, or None when `threshold` was given), `calibration_scores_` (1-D
    CPU tensor of the clean scores the threshold came from, or None). Constructor parameters are
    never changed by `fit`, `calibrate` or `recalibrate`.
    """

    def __init__(self, metric, *, fpr: float = 0.05, threshold=None):
        if not 0.0 <= fpr < 1.0:
            raise InputError(f"fpr must be in [0, 1), got {fpr}")
        self.metric = metric
        self.fpr = fpr
        self.threshold = threshold

    # ------------------------------------------------------------------ scikit-learn parameters
    def get_params(self, deep: bool = True) -> dict:
        """The constructor parameters (scikit-learn's `get_params`)."""
        return {"metric": self.metric, "fpr": self.fpr, "threshold": self.threshold}

    def set_params(self, **params) -> "ThresholdDetector":
        """Set constructor parameters (scikit-learn's `set_params`); unknown names are refused."""
        unknown = sorted(set(params) - set(self.get_params()))
        if unknown:
            raise InputError(f"ThresholdDetector has no parameter(s) {', '.join(unknown)}: "
                             f"choose from {', '.join(self.get_params())}")
        merged = {**self.get_params(), **params}
        self.__init__(merged.pop("metric"), **merged)
        return self

    # ------------------------------------------------------------------------------- fitting
    def fit(self, model_output=None, y=None, *, calibration=None) -> "ThresholdDetector":
        """Fit a copy of the metric (if it needs fitting) on `model_output`, `y`, then set `threshold_`.

        The threshold comes from the clean held-out `calibration` outputs at `fpr` when given, else
        from `model_output` itself (fine for the stateless metrics; for K-density pass held-out
        `calibration` data: its training bank scores its own points too high).
        """
        metric = copy.deepcopy(self.metric)
        if getattr(metric, "requires_fit", False):
            if model_output is None or y is None:
                raise InputError(f"metric {metric.name!r} must be fitted: call fit(train_output, train_labels)")
            metric.fit(model_output, y)
        self.metric_ = metric
        if self.threshold is not None:
            self.threshold_, self.fpr_, self.calibration_scores_ = float(self.threshold), None, None
            return self
        clean = calibration if calibration is not None else model_output
        if clean is None:
            raise InputError("no clean data to set the threshold from: pass calibration=... or an explicit threshold")
        return self.calibrate(clean)

    def calibrate(self, clean_output, *, fpr=None) -> "ThresholdDetector":
        """Set `threshold_` from clean held-out outputs at `fpr` (default: the constructor's `fpr`).

        Scores with `metric_` when fitted, else with `metric` as given (which then becomes `metric_`).
        """
        if not hasattr(self, "metric_"):
            self.metric_ = self.metric
        with torch.no_grad():
            scores = self.score_samples(clean_output).detach().cpu()
        self.calibration_scores_ = scores
        return self.recalibrate(self.fpr if fpr is None else fpr)

    def recalibrate(self, fpr: float) -> "ThresholdDetector":
        """Move the operating point (`threshold_`, `fpr_`) to another target `fpr` using the stored
        calibration scores; the constructor's `fpr` stays as it was. Returns self."""
        if getattr(self, "calibration_scores_", None) is None:
            raise InputError("no stored calibration scores: call fit(..., calibration=clean_output) first")
        self.threshold_ = threshold_at_fpr(self.calibration_scores_, fpr)
        self.fpr_ = fpr
        return self

    def _check_fitted(self):
        if not hasattr(self, "threshold_"):
            raise InputError("this detector is not fitted: call fit(...) first")

    # ------------------------------------------------------------------------------- scoring
    def score_samples(self, model_output) -> torch.Tensor:
        """Metric values, shape (N,), higher = more normal; differentiable."""
        return getattr(self, "metric_", self.metric).score(model_output)

    def decision_function(self, model_output) -> torch.Tensor:
        """score_samples - threshold_: positive = accepted as normal."""
        self._check_fitted()
        return self.score_samples(model_output) - self.threshold_

    def accept(self, model_output) -> torch.Tensor:
        """Boolean (N,): True when the input is accepted as normal (score > threshold_)."""
        self._check_fitted()
        return self.score_samples(model_output) > self.threshold_

    def predict(self, model_output) -> torch.Tensor:
        """+1 (normal, accepted) / -1 (adversarial, rejected), int64 (N,)."""
        accepted = self.accept(model_output)
        return torch.where(accepted, 1, -1).long()

    def __repr__(self) -> str:
        fitted = f", threshold_={self.threshold_:.6g}" if hasattr(self, "threshold_") else ""
        return f"ThresholdDetector({self.metric!r}, fpr={self.fpr}{fitted})"
