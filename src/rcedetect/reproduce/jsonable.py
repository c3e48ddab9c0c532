"""Tensors and arrays to plain JSON data for the cell files (the report reads nothing else)."""

import numpy as np
import torch


def sig(values, digits: int = 7) -> list:
    """Floats rounded to `digits` significant digits (cells compute with full precision, store rounded)."""
    return [float(f"{float(v):.{digits}g}") for v in np.asarray(values, dtype=np.float64).ravel()]


def ints(values) -> list:
    if torch.is_tensor(values):
        values = values.detach().cpu().numpy()
    return [int(v) for v in np.asarray(values).ravel()]


def mean_or_none(values):
    """The mean, or None for an empty selection (strict JSON has no NaN)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if values.size else None


def uint8_images(x: torch.Tensor) -> list:
    """Images (N, C, H, W) in [0, 1] as nested lists of 0-255 ints (N, H, W, C), for figures drawn from JSON."""
    arr = (x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return arr.tolist()
