"""BIM, the basic iterative method (Kurakin et al. 2017a; section 2.3 of Pang et al. 2018).

    x*_0 = x,   x*_i = clip_{x,eps}( x*_{i-1} + step_size * sign(grad L(x*_{i-1}, y)) )

clip_{x,eps} projects onto the L-infinity ball of radius `eps` around x intersected with the [0, 1]
box. Distance: L-infinity, `eps` in [0, 1] pixel units. Defaults: steps=10, step_size=eps/steps.

The paper's recursion writes eps as the step; we default to eps/steps as the authors' code did
(P2333/Reverse-Cross-Entropy, test_adv.py: `fgsm(eps=eps/10, epochs=10)`), so that the iterates
can walk across the whole ball instead of bouncing between its corners. As in `fgsm`, the authors
used the predicted label instead of y and the CE of the prediction logits; our default is the
paper's true label y with the CE of the prediction logits (`loss="rce"` or a callable also work).

`early_stop=True` (not the paper's) freezes each example as soon as it is misclassified, dropping
it from the working batch: fewer forward/backward passes and smaller perturbations.
"""

import torch

from .fgsm import resolve_loss
from ..names import Objective
from .result import AttackResult, check_images, check_labels, check_positive, eval_mode, goal_reached, predict


def iterative_sign_attack(model, x, labels, *, eps, steps, step_size, targeted, loss_fn, early_stop=False):
    """Shared core of BIM (untargeted: ascend L(., y)) and ILCM (targeted: descend L(., target)).

    Returns x_adv; the caller runs the model in eval mode. One forward + one backward per step on the
    examples still being attacked.
    """
    x0 = x.detach()
    lower = (x0 - eps).clamp_(min=0.0)  # the eps-ball intersected with the [0, 1] box
    upper = (x0 + eps).clamp_(max=1.0)
    direction = -1.0 if targeted else 1.0
    x_adv = x0.clone()
    active = torch.arange(x0.shape[0], device=x0.device)
    for _ in range(steps):
        if active.numel() == 0:
            break
        xa = x_adv[active].requires_grad_(True)
        logits = model(xa)
        keep = None
        if early_stop:
            # The forward pass that feeds the gradient also tells us who is already done: freeze them.
            going = ~goal_reached(logits.detach().argmax(1), labels[active], targeted)
            if not going.all():
                keep, active = going, active[going]
                if active.numel() == 0:
                    break
                logits = logits[keep]
        (grad,) = torch.autograd.grad(loss_fn(logits, labels[active]), xa)
        xa = xa.detach()
        if keep is not None:
            grad, xa = grad[keep], xa[keep]
        step = xa + (direction * step_size) * grad.sign()
        x_adv[active] = torch.min(torch.max(step, lower[active]), upper[active])
    return x_adv


def bim(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int = 10, step_size=None,
        loss=Objective.CE, early_stop: bool = False) -> AttackResult:
    """BIM (untargeted) on images `x` (N, C, H, W) in [0, 1] with true labels `y` (N,).

    Returns AttackResult(x_adv, success); `success` = the model misclassifies x_adv.
    """
    check_images(x)
    check_labels(y, x.shape[0])
    check_positive(eps, "eps", allow_zero=True)
    check_positive(steps, "steps")
    step_size = eps / steps if step_size is None else step_size
    check_positive(step_size, "step_size", allow_zero=True)
    with eval_mode(model):
        x_adv = iterative_sign_attack(model, x, y, eps=eps, steps=int(steps), step_size=step_size,
                                      targeted=False, loss_fn=resolve_loss(loss), early_stop=early_stop)
        success = goal_reached(predict(model, x_adv), y, targeted=False)
    return AttackResult(x_adv, success)
