"""Average distortion of Szegedy et al. 2014 as used in Pang et al. 2018, section 4.3:

    sqrt( Σ_i (x*_i - x_i)² / d )   per example, with pixels on the [0, 255] scale.
"""

import numpy as np
import torch

from ..errors import InputError


def _float64(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, np.float64)


def distortion(adversarial, clean, *, scale: float = 255.0) -> np.ndarray:
    """Per-example RMS distortion (N,) float64; inputs (N, ...) in [0, 1] are multiplied by `scale`."""
    a, c = _float64(adversarial), _float64(clean)
    if a.shape != c.shape or a.ndim < 2:
        raise InputError(f"adversarial {a.shape} and clean {c.shape} must have the same shape (N, ...)")
    diff = (a - c).reshape(a.shape[0], -1) * scale
    return np.sqrt(np.mean(diff * diff, axis=1))


def mean_distortion(adversarial, clean, *, mask=None, scale: float = 255.0) -> float:
    """Mean of `distortion` over the examples selected by `mask` (all when None)."""
    d = distortion(adversarial, clean, scale=scale)
    if mask is not None:
        keep = mask.detach().cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)
        d = d[keep.astype(bool)]
    if d.size == 0:
        raise InputError("no examples selected: the mask is empty")
    return float(d.mean())
