"""What every attack returns, plus the small checks and helpers the attacks share.

All attacks take images (N, C, H, W) in the [0, 1] pixel box (the model normalises internally),
put the model in eval mode while they run (an attack targets the deployed classifier, whose BN
uses running statistics, so examples in a batch never influence each other) and restore the
mode the caller had afterwards.
"""

import json
from pathlib import Path
from typing import NamedTuple

import torch

from ..errors import InputError
from ..files import atomic_save_tensors, atomic_write_json
from ..inference import eval_mode  # noqa: F401  (the attacks import it from here)


class AttackResult(NamedTuple):
    """`x_adv` (N, C, H, W) in [0, 1]; `success` (N,) bool: the returned example meets the attack's goal
    (misclassified for untargeted attacks, classified as the target for targeted ones), checked on the
    model's prediction for the returned `x_adv`."""

    x_adv: torch.Tensor
    success: torch.Tensor


def check_images(x: torch.Tensor, name: str = "x") -> None:
    """Raise InputError unless `x` is a finite floating tensor (N, C, H, W) with values in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor of images (N, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise InputError(f"{name} must have shape (N, C, H, W), got {tuple(x.shape)}: add a batch dimension with x[None]")
    if not x.is_floating_point():
        raise InputError(f"{name} has dtype {x.dtype}; attacks need float images in [0, 1]: use x.float() / 255")
    if x.shape[0] == 0:
        raise InputError(f"{name} is an empty batch: pass at least one image")
    if not torch.isfinite(x).all():
        raise InputError(f"{name} contains NaN or infinite values: clean the input images")
    lo, hi = x.min().item(), x.max().item()
    if lo < 0.0 or hi > 1.0:
        raise InputError(f"{name} has values in [{lo:.4g}, {hi:.4g}], outside the [0, 1] pixel box: "
                         f"scale images to [0, 1] (the model normalises internally)")


def check_labels(labels: torch.Tensor, n: int, name: str = "y", num_classes=None) -> None:
    """Raise InputError unless `labels` is an integer tensor (n,) with values in [0, num_classes)."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != n:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise InputError(f"{name} must be an int64 tensor of shape ({n},), one class per image; got {shape}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise InputError(f"{name} has dtype {labels.dtype}; class indices must be integers: use {name}.long()")
    if labels.numel() and (labels.min().item() < 0 or (num_classes is not None and labels.max().item() >= num_classes)):
        raise InputError(f"{name} has values outside [0, {num_classes}): pass class indices of the model's output")


def check_positive(value, name: str, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise InputError(f"{name} must be a number {bound}, got {value!r}")


def num_classes_of(model: torch.nn.Module, x: torch.Tensor) -> int:
    """The number of classes L: the model's `num_classes` attribute, else one forward pass on one image."""
    n = getattr(model, "num_classes", None)
    if isinstance(n, int):
        return n
    with torch.no_grad(), eval_mode(model):
        return model(x[:1]).shape[1]


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Predicted classes (N,) of images in [0, 1] (call inside `eval_mode`)."""
    return model(x).argmax(dim=1)


def goal_reached(pred: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Targeted: prediction == target; untargeted: prediction != true label."""
    return pred == labels if targeted else pred != labels


def random_targets(y: torch.Tensor, num_classes: int, seed: int, *, start: int = 0) -> torch.Tensor:
    """A uniformly random class different from each label y (N,), reproducible from `seed`.

    The paper's protocol for the targeted attacks (JSMA, C&W): "target = random class != y". Drawn
    on the CPU with its own generator so the same seed gives the same targets on any device.

    The target of row i is a function of its *global index* `start + i` alone: the shifts are the
    rows start..start+N-1 of one seeded stream, so attacking a set in batches (any batch size, any
    chunking, `start` = the batch's first index) gives exactly the targets of attacking it at once.
    """
    if num_classes < 2:
        raise InputError(f"random targets need at least 2 classes, got num_classes={num_classes}")
    if start < 0:
        raise InputError(f"start must be >= 0 (the global index of the first row), got {start}")
    gen = torch.Generator().manual_seed(int(seed))
    # torch's CPU generator fills sequentially, so a longer draw extends a shorter one.
    shift = torch.randint(1, num_classes, (start + y.shape[0],), generator=gen)[start:]  # 1..L-1: never y
    return ((y.detach().cpu().long() + shift) % num_classes).to(y.device)


# ----------------------------------------------------------------------------------------------
# Saving adversarial examples: safetensors (tensors) + metadata in the header and a JSON sidecar.

ADV_FORMAT = "rcedetect-adversarial-v1"


def save_adversarial(path, tensors: dict, info: dict) -> Path:
    """Write `tensors` to `path` (.safetensors) with `info` (attack name, settings, ...) as JSON both
    in the file's metadata and in a sidecar `path.with_suffix('.json')`. Returns the tensors' path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    info = {"format": ADV_FORMAT, **info}
    atomic_save_tensors(path, tensors, {"info": json.dumps(info, sort_keys=True)})
    atomic_write_json(path.with_suffix(".json"), info)
    return path


def load_adversarial(path):
    """Read a file written by `save_adversarial` (or `rcedetect attack`): returns (tensors dict, info dict)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.suffix != ".safetensors" and path.with_suffix(".safetensors").exists():
        path = path.with_suffix(".safetensors")
    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {}).get("info", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path} is not a readable adversarial-examples file ({exc}): "
                         f"re-create it with 'rcedetect attack'") from exc
    if info.get("format") != ADV_FORMAT:
        raise InputError(f"{path} has format {info.get('format')!r}, expected {ADV_FORMAT!r}: "
                         f"re-create it with 'rcedetect attack'")
    return tensors, info
