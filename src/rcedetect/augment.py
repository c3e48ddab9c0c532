"""CIFAR-10 training augmentation of appendix B.1, batch-wise on tensors:
resize 32x32 -> 40x40, random 32x32 crop, random horizontal flip."""

import torch
import torch.nn.functional as F


def cifar_augment(x: torch.Tensor, generator: torch.Generator, resize: int = 40) -> torch.Tensor:
    """Augment a float batch (N, C, 32, 32) in [0, 1]; randomness drawn from `generator` only."""
    n, _, h, w = x.shape
    big = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False)
    # Draw on CPU so the same seed gives the same augmentation on every device.
    oy = torch.randint(0, resize - h + 1, (n,), generator=generator)
    ox = torch.randint(0, resize - w + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (oy[:, None] + torch.arange(h)).to(x.device)            # (N, h)
    cols = (ox[:, None] + torch.arange(w)).to(x.device)            # (N, w)
    cols = torch.where(flip.to(x.device)[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None]
    crop = big.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, h, w, C)
    return crop.permute(0, 3, 1, 2).contiguous()
