"""CIFAR-10 training augmentation, batch-wise on tensors, two variants (`AUGMENTATIONS`):

* "pad-crop" (`pad_crop_augment`, what the CIFAR-10 presets set in `TrainConfig.augment`): what the authors' code
  does (P2333/Reverse-Cross-Entropy `cifar_input.py`, train mode: `resize_image_with_crop_or_pad` to
  36x36, i.e. 2 zero pixels on each side, `random_crop` 32x32, `random_flip_left_right`). No
  interpolation: every output pixel is an input pixel or 0, and train images keep the scale of the
  test images.
* "resize" (`cifar_augment`): appendix B.1's wording read literally: bilinear resize 32x32 -> 40x40,
  random 32x32 crop, random horizontal flip. Training images are then zoomed by 1.25, test images
  never are.

Both draw the crop offsets and flips, in that order, from `generator` only (on CPU, so a seed gives
the same augmentation on every device).
"""

import torch
import torch.nn.functional as F

from .errors import RceDetectError


def _random_crop_flip(big: torch.Tensor, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """A random h x w crop of each image of `big` (N, C, H', W'), mirrored left-right with probability 1/2."""
    n, _, big_h, big_w = big.shape
    # Draw on CPU so the same seed gives the same augmentation on every device.
    oy = torch.randint(0, big_h - h + 1, (n,), generator=generator)
    ox = torch.randint(0, big_w - w + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (oy[:, None] + torch.arange(h)).to(big.device)            # (N, h)
    cols = (ox[:, None] + torch.arange(w)).to(big.device)            # (N, w)
    cols = torch.where(flip.to(big.device)[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=big.device)[:, None, None]
    crop = big.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, h, w, C)
    return crop.permute(0, 3, 1, 2).contiguous()


def cifar_augment(x: torch.Tensor, generator: torch.Generator, resize: int = 40) -> torch.Tensor:
    """"resize": augment a float batch (N, C, 32, 32) in [0, 1] by a bilinear zoom to `resize` x `resize`,
    a random 32x32 crop and a random flip; randomness drawn from `generator` only."""
    _, _, h, w = x.shape
    big = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False)
    return _random_crop_flip(big, h, w, generator)


def pad_crop_augment(x: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """"pad-crop" (the authors'): pad a float batch (N, C, H, W) with `pad` zero pixels on each side,
    take a random H x W crop (offsets uniform in [0, 2 * pad]) and flip it left-right with probability
    1/2; randomness drawn from `generator` only."""
    _, _, h, w = x.shape
    return _random_crop_flip(F.pad(x, (pad, pad, pad, pad)), h, w, generator)


# name (TrainConfig.augment) -> batch augmentation (x, generator) -> x
AUGMENTATIONS = {"pad-crop": pad_crop_augment, "resize": cifar_augment}


def augmentation_of(augment):
    """The batch augmentation a `TrainConfig.augment` value names, None for False. True (configs written
    before the choice existed, trained with the bilinear zoom) means "resize"."""
    if augment is False:
        return None
    name = "resize" if augment is True else augment
    try:
        return AUGMENTATIONS[name]
    except (KeyError, TypeError):
        raise RceDetectError(f"unknown augmentation {augment!r}: choose False or one of {sorted(AUGMENTATIONS)}") from None
