"""Device selection: `--device auto` picks CUDA when present, else CPU."""

import torch

from .errors import RceDetectError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """Map a CLI device name to a `torch.device`, failing clearly if CUDA is asked for but absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RceDetectError(f"--device {name} requested but CUDA is not available: use --device cpu or auto")
    return torch.device(name)
