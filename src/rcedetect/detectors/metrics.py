"""Stateless detection metrics of section 3.2 / 3.4 of Pang et al. 2018: confidence and non-ME.

Both are batched, differentiable torch functions of the prediction logits (N, L), so white-box
attacks can back-propagate through them. Higher values mean "more normal" for both.

Everything is computed from log-softmax, never from `log(softmax)`: for logits of magnitude
1e4 the probabilities underflow to 0 and `0 * log 0` would give NaN (the authors' code does that).
"""

import math

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..models import ModelOutput
from ..names import Metric


def _logits(model_output) -> torch.Tensor:
    """Accept a `ModelOutput` or a bare logits tensor (N, L)."""
    logits = model_output.logits if isinstance(model_output, ModelOutput) else model_output
    if not torch.is_tensor(logits) or logits.dim() != 2 or logits.shape[1] < 2:
        shape = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise InputError(f"expected logits of shape (N, L) with L >= 2, got {shape}")
    return logits


def _non_max(logits: torch.Tensor) -> torch.Tensor:
    """The L-1 logits other than the predicted one, (N, L-1), in their original order.

    `masked_select` keeps autograd; ties at the maximum drop only the first argmax, matching
    the predicted label `argmax`.
    """
    n, num_classes = logits.shape
    keep = torch.ones_like(logits, dtype=torch.bool)
    keep.scatter_(1, logits.argmax(dim=1, keepdim=True), False)
    return logits.masked_select(keep).view(n, num_classes - 1)


def confidence(model_output) -> torch.Tensor:
    """Confidence F(x)_ŷ = max softmax probability, shape (N,). Paper section 3.4."""
    return F.log_softmax(_logits(model_output), dim=1).max(dim=1).values.exp()


def confidence_log_odds(model_output) -> torch.Tensor:
    """log(F_ŷ / (1 - F_ŷ)) = z_ŷ - logsumexp_{j≠ŷ} z_j, shape (N,).

    A strictly increasing function of `confidence`, so it gives the same detector decisions and
    ROC curve, but it keeps full float32 resolution where the confidence itself rounds to 1.0
    (well-trained models put many clean inputs there, which would otherwise tie at a threshold).
    """
    logits = _logits(model_output)
    return logits.max(dim=1).values - torch.logsumexp(_non_max(logits), dim=1)


def non_me(model_output) -> torch.Tensor:
    """non-ME (Eq. 1): entropy of the normalised non-maximal softmax entries, shape (N,).

    F̂_i = F_i / Σ_{j≠ŷ} F_j is exactly softmax over the non-maximal logits, so the entropy is
    computed from their log-softmax; always finite, in [0, log(L-1)] (Lemma 1: the maximum
    log(L-1) is reached exactly when the non-maximal entries are equal).
    """
    others = _non_max(_logits(model_output))
    log_p = F.log_softmax(others, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def max_non_me(num_classes: int) -> float:
    """The global maximum of non-ME, log(L-1) (Lemma 1)."""
    return math.log(num_classes - 1)


class _StatelessMetric:
    """A metric that needs no fitting, in the protocol `ThresholdDetector` wraps:
    `name`, `requires_fit`, `score(model_output) -> (N,)`, `params()`, `state_tensors()`."""

    name = ""
    requires_fit = False

    def score(self, model_output) -> torch.Tensor:
        raise NotImplementedError

    def params(self) -> dict:
        return {}

    def state_tensors(self) -> dict:
        return {}

    @classmethod
    def from_state(cls, params: dict, tensors: dict):
        return cls()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ConfidenceMetric(_StatelessMetric):
    """Detector score for the confidence metric: `confidence_log_odds` (same ranking as F(x)_ŷ)."""

    name = Metric.CONFIDENCE

    def score(self, model_output) -> torch.Tensor:
        return confidence_log_odds(model_output)


class NonMEMetric(_StatelessMetric):
    """Detector score for the non-ME metric (Eq. 1): `non_me`."""

    name = Metric.NON_ME

    def score(self, model_output) -> torch.Tensor:
        return non_me(model_output)
