"""Training objectives: cross-entropy (CE) and reverse cross-entropy (RCE), section 3.3 of the paper.

The paper trains the network's raw logits Z_pre against the *reverse label* R_y (0 at the true
class y, 1/(L-1) elsewhere) and predicts with the reversed logits -Z_pre. We fold that reversal
into the loss: the model outputs prediction logits `logits = -Z_pre`, and

    RCE(logits, y) = -R_y . log softmax(-logits).

So a trained RCE model's own output predicts normally (argmax, softmax = F(x)) and nothing
downstream (attacks, detectors) needs to know which objective trained it.
"""

import torch
import torch.nn.functional as F

from .names import Objective


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean CE loss -log softmax(logits)_y. logits: (N, L); y: (N,) int64."""
    return F.cross_entropy(logits, y)


def reverse_label(y: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """R_y: 0 at the true class, 1/(L-1) elsewhere. Shape (N, L)."""
    r = torch.full((y.shape[0], num_classes), 1.0 / (num_classes - 1), dtype=dtype, device=y.device)
    return r.scatter_(1, y.unsqueeze(1), 0.0)


def reverse_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean RCE loss -R_y . log softmax(-logits), for prediction logits (N, L) and labels (N,)."""
    log_p_reversed = F.log_softmax(-logits, dim=1)
    return -(reverse_label(y, logits.shape[1], logits.dtype) * log_p_reversed).sum(dim=1).mean()


OBJECTIVES = {Objective.CE: cross_entropy, Objective.RCE: reverse_cross_entropy}
