"""Differentiable scores of the supervised baselines, for white-box attacks on classifier + detector.

The attacks of the worst-case evaluation score a detector from the model's output,
`detector.score_samples(model.forward_features(x))`, and follow its gradient. LID (Ma et al. 2018) and
Mahalanobis-LR (Lee et al. 2018) score intermediate activations instead, which `supervised.baseline_inputs`
collects without autograd. `TappedScore` wraps a fitted one as a thresholding metric that can be
attacked: while it is attached (`with TappedScore(model, fitted) as metric:`) forward hooks
(`LayerTaps`) keep the tapped activations of the model's last forward pass with their autograd graph,
and `score(model_output)` scores those exactly as `baseline_inputs` + `fitted.score` would, but
differentiably:

    LID             the MLE of each layer against the fitted clean reference minibatch, gradients through
                    the distances to the k nearest reference points (`lid_mle(..., differentiable=True)`),
                    then the fitted logistic regression
    Mahalanobis-LR  the closest-class Gaussian score of each layer (already differentiable), then the
                    fitted logistic regression; Lee et al.'s input preprocessing (magnitude > 0) is a
                    gradient step of its own and is refused here (the quick and paper presets use 0)

A tensor passed to `score` is taken as precomputed inputs (`baseline_inputs`' LID characteristics or
layer scores), so a `ThresholdDetector(TappedScore(...)).calibrate(clean_inputs)` sets its threshold
from the same numbers as the Baselines table.
"""

import torch

from ..errors import InputError
from ..models import PreActResNet
from .lid import LIDDetector, lid_mle, logistic_logit
from .mahalanobis import MahalanobisDetector
from .taps import LayerTaps
from .threshold import ThresholdDetector

# The first module of rcedetect's ResNets' forward pass: a new pass clears the captures there
# (`forward_features` bypasses the root module's `forward`, where LayerTaps clears by default).
_FIRST_MODULE = "stem"


class TappedScore:
    """A fitted LIDDetector or MahalanobisDetector (magnitude 0) of `model` as a differentiable metric
    of the model's output; attach it with `with` (or `attach()` / `close()`) around the attack."""

    requires_fit = False

    def __init__(self, model, fitted):
        if not isinstance(model, PreActResNet):
            raise InputError(f"TappedScore taps rcedetect's ResNets, not {type(model).__name__}")
        if isinstance(fitted, LIDDetector):
            reduce = "flatten"
        elif isinstance(fitted, MahalanobisDetector):
            if fitted.magnitude != 0.0:
                raise InputError(f"Mahalanobis input preprocessing (magnitude {fitted.magnitude:g}) is a gradient "
                                 f"step of its own: attack the detector fitted with magnitude 0")
            reduce = "mean"
        else:
            raise InputError(f"TappedScore wraps a fitted LIDDetector or MahalanobisDetector, not "
                             f"{type(fitted).__name__}")
        if not hasattr(fitted, "head_"):
            raise InputError(f"the {type(fitted).__name__} is not fitted: fit it (detectors.supervised) first")
        self.fitted = fitted
        self.name = "lid" if isinstance(fitted, LIDDetector) else "mahalanobis-lr"
        self.taps = LayerTaps(model, fitted.layers_, reduce=reduce, clear_on=_FIRST_MODULE)

    # ------------------------------------------------------------------------------- hooks
    def attach(self) -> "TappedScore":
        self.taps.__enter__()
        return self

    def close(self) -> None:
        self.taps.__exit__(None, None, None)

    def __enter__(self) -> "TappedScore":
        return self.attach()

    def __exit__(self, *exc_info):
        self.close()
        return False

    # ------------------------------------------------------------------------------- scoring
    def _captured(self, n: int) -> dict:
        features = self.taps.features
        if not self.taps.attached:
            raise InputError("TappedScore is not attached: score inside `with TappedScore(model, fitted):`")
        missing = [name for name in self.fitted.layers_ if name not in features]
        if missing or any(features[name].shape[0] != n for name in self.fitted.layers_):
            raise InputError("the tapped activations are not those of this model output: score right after "
                             "the model's forward pass on the same inputs")
        return {name: features[name] for name in self.fitted.layers_}

    def score(self, model_output) -> torch.Tensor:
        """(N,) -(logit of adversarial), higher = more normal, in the logits' dtype (float32 for precomputed
        inputs), differentiable w.r.t. the input of the forward pass that produced `model_output`; a
        tensor is taken as precomputed inputs."""
        if torch.is_tensor(model_output):
            return self.fitted.score_samples(model_output).float()
        features = self._captured(model_output.logits.shape[0])
        if isinstance(self.fitted, LIDDetector):
            lids = torch.stack([lid_mle(features[name], self.fitted.reference_[name].to(features[name].device),
                                        k=self.fitted.k, differentiable=True) for name in self.fitted.layers_], dim=1)
            return (-logistic_logit(lids, self.fitted.head_)).to(model_output.logits.dtype)
        return self.fitted.score_samples(self.fitted.layer_scores(features)).to(model_output.logits.dtype)

    score_samples = score

    def __repr__(self) -> str:
        return f"TappedScore({self.name}, layers={list(self.fitted.layers_)})"


def attackable(model, detector):
    """`detector` itself when its metric scores the model's output; a fitted LID or Mahalanobis-LR
    `ThresholdDetector` (e.g. one `rcedetect detect --fit-adversarial` saved) as the same detector over a
    `TappedScore`: the same fitted state, calibration scores and operating point."""
    metric = getattr(detector, "metric_", detector.metric)
    if not isinstance(metric, (LIDDetector, MahalanobisDetector)):
        return detector
    wrapped = ThresholdDetector(TappedScore(model, metric), fpr=detector.fpr)
    wrapped.metric_ = wrapped.metric
    scores = getattr(detector, "calibration_scores_", None)
    if scores is None:  # an explicit threshold: nothing to recalibrate from
        wrapped.threshold_, wrapped.fpr_, wrapped.calibration_scores_ = float(detector.threshold_), None, None
        return wrapped
    wrapped.calibration_scores_ = scores
    return wrapped.recalibrate(detector.fpr_)


__all__ = ["TappedScore", "attackable"]
