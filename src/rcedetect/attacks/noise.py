"""RAND, uniform random noise (appendix B.3 of Pang et al. 2018): not an attack but the noisy
examples a detector must *not* flag.

    x* = clip_[0,1]( x + U(-eps, eps) )     (element-wise, independent)

Distance: L-infinity (<= eps). The noise is drawn on the CPU from a generator seeded by `seed`, so
the same seed gives the same examples on CPU and CUDA. The paper uses eps_RAND = 0.04 on CIFAR-10.
"""

import torch

from .result import AttackResult, check_images, check_labels, check_positive, eval_mode, goal_reached, predict


def random_noise(x: torch.Tensor, *, eps: float, seed: int, model=None, y=None) -> AttackResult:
    """Noisy copies of `x` (N, C, H, W) in [0, 1].

    `success` is "the model misclassifies x*" when `model` and labels `y` are given, else all False
    (no model, nothing to fool).
    """
    check_images(x)
    check_positive(eps, "eps", allow_zero=True)
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.rand(x.shape, generator=gen, dtype=torch.float32).mul_(2.0).sub_(1.0).mul_(eps)
    x_adv = (x.detach() + noise.to(device=x.device, dtype=x.dtype)).clamp_(0.0, 1.0)
    if model is None or y is None:
        return AttackResult(x_adv, torch.zeros(x.shape[0], dtype=torch.bool, device=x.device))
    check_labels(y, x.shape[0])
    with eval_mode(model):
        success = goal_reached(predict(model, x_adv), y, targeted=False)
    return AttackResult(x_adv, success)
