"""ILCM, the iterative least-likely class method (Kurakin et al. 2017a; section 2.3 of Pang et al. 2018).

    y_ll = argmin_i F(x)_i,   x*_i = clip_{x,eps}( x*_{i-1} - step_size * sign(grad L(x*_{i-1}, y_ll)) )

A targeted BIM towards the class the model finds least likely on the clean input; it never uses the
true label (no label leaking). Distance: L-infinity, `eps` in [0, 1] pixel units. Defaults:
steps=10, step_size=eps/steps (the authors' code, `tgsm(eps=eps/10, epochs=10)`; the paper's formula
writes eps per step, see `bim`). L is the CE of the prediction logits by default (`loss=` as in `fgsm`).

Difference from the authors' code (P2333/Reverse-Cross-Entropy `attacks/tgsm.py`, lines 40-51): their
target vector is `one_hot(y_ll, on_value=clip_max, off_value=clip_min)` = +0.5 / -0.5 (their box is
[-0.5, 0.5]), fed to `tf.nn.softmax_cross_entropy_with_logits`. That is not textbook cross-entropy:
the formula reads -0.5 log p_t + 0.5 sum_{j != t} log p_j, and what TF differentiates is the op's
built-in gradient softmax(z) - labels (which assumes labels summing to 1), i.e. the gradient of
CE(z, y_ll) + 0.5 * sum_j z_j: the step also follows -sign of the gradient of the summed logits. We
keep textbook ILCM (Kurakin et al.'s loss); the authors' variant is
`loss=lambda z, t: F.cross_entropy(z, t) + 0.5 * z.sum(1).mean()`.
Measured (200 MNIST test images, depth-8 CE ResNet after 120 of 400 quick steps, 92 % clean
accuracy; success = classified as y_ll, fooled = misclassified, distortion = mean RMS x 255 over all
200):  eps 0.16: textbook 30.5 % / 86.0 % / 22.7; authors' TF gradient 30.0 % / 87.5 % / 23.1; the
formula's own gradient (-0.5 log p_t + 0.5 sum log p_j differentiated exactly) 1.0 % / 17.5 % / 23.3.
eps 0.04: 0 % / 12.0 % / 7.0; 0 % / 12.0 % / 7.1; 0 % / 8.5 % / 6.8. So the authors' ILCM is, in
effect, textbook ILCM (within 1.5 points); only an exact differentiation of their loss would be weak.
"""

import torch

from ..names import Objective
from .bim import iterative_sign_attack
from .fgsm import resolve_loss
from .result import AttackResult, check_images, check_positive, eval_mode, goal_reached, predict


def least_likely_class(model, x: torch.Tensor) -> torch.Tensor:
    """y_ll = argmin_i F(x)_i (N,), computed on the clean input (call inside `eval_mode`)."""
    with torch.no_grad():
        return model(x).argmin(dim=1)


def ilcm(model, x: torch.Tensor, *, eps: float, steps: int = 10, step_size=None, loss=Objective.CE,
         early_stop: bool = False) -> AttackResult:
    """ILCM on images `x` (N, C, H, W) in [0, 1].

    Returns AttackResult(x_adv, success); `success` = the model classifies x_adv as y_ll (the targeted
    goal). The targets are recomputed by `least_likely_class(model, x)` if needed.
    """
    check_images(x)
    check_positive(eps, "eps", allow_zero=True)
    check_positive(steps, "steps")
    step_size = eps / steps if step_size is None else step_size
    check_positive(step_size, "step_size", allow_zero=True)
    with eval_mode(model):
        target = least_likely_class(model, x)
        x_adv = iterative_sign_attack(model, x, target, eps=eps, steps=int(steps), step_size=step_size,
                                      targeted=True, loss_fn=resolve_loss(loss), early_stop=early_stop)
        success = goal_reached(predict(model, x_adv), target, targeted=True)
    return AttackResult(x_adv, success)
