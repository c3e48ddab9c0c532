"""FGSM, the fast gradient sign method (Goodfellow et al. 2015; section 2.3 of Pang et al. 2018).

    x* = clip_[0,1]( x + eps * sign(grad_x L(x, y)) )

Distance: L-infinity, `eps` in [0, 1] pixel units. One forward and one backward pass per batch.

Loss: L is the cross-entropy of the model's *prediction* logits by default (`loss="ce"`), the
natural loss for CE and RCE models alike (their logits predict normally, see `rcedetect.losses`).
`loss="rce"` uses the RCE training loss instead, or pass any callable `(logits, y) -> scalar`.

Differences from the authors' code (P2333/Reverse-Cross-Entropy, attacks/fgsm.py): they used the
*predicted* label argmax F(x) instead of the true label y (the "label leaking" fix of Kurakin et al.
2017b) and the CE of the prediction logits for RCE models too. We follow the paper's formula with the
true label; pass `y = model(x).argmax(1)` to reproduce the authors' choice.
"""

import torch

from ..errors import InputError
from ..losses import OBJECTIVES
from ..names import Objective
from .result import AttackResult, check_images, check_labels, check_positive, eval_mode, goal_reached, predict


def resolve_loss(loss):
    """`"ce"`, `"rce"` (the training objectives of `rcedetect.losses`) or a callable (logits, y) -> scalar."""
    if callable(loss):
        return loss
    try:
        return OBJECTIVES[Objective(loss)]
    except (ValueError, TypeError):
        raise InputError(f"loss must be one of {', '.join(Objective.choices())} or a callable (logits, y) -> scalar, "
                         f"got {loss!r}") from None


def input_gradient(model, x: torch.Tensor, y: torch.Tensor, loss_fn) -> torch.Tensor:
    """grad_x of the summed loss, without gradients for the model's weights (they are not needed)."""
    x = x.detach().requires_grad_(True)
    # The loss is a mean over the batch; examples are independent in eval mode, so its gradient
    # is each example's own gradient / N, and the sign is unaffected.
    (grad,) = torch.autograd.grad(loss_fn(model(x), y), x)
    return grad


def fgsm(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, loss=Objective.CE) -> AttackResult:
    """FGSM (untargeted) on images `x` (N, C, H, W) in [0, 1] with true labels `y` (N,).

    Returns AttackResult(x_adv, success) with `success` = the model misclassifies x_adv.
    """
    check_images(x)
    check_labels(y, x.shape[0])
    check_positive(eps, "eps", allow_zero=True)
    loss_fn = resolve_loss(loss)
    with eval_mode(model):
        grad = input_gradient(model, x, y, loss_fn)
        x_adv = (x.detach() + eps * grad.sign()).clamp_(0.0, 1.0)
        success = goal_reached(predict(model, x_adv), y, targeted=False)
    return AttackResult(x_adv, success)
