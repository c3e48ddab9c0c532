"""Import the peer attack libraries used as independent references (test-only dependencies).

A missing peer is an ImportError (a test failure), never a skip: the cross-checks are the point.

- foolbox 3.3.4 imports as is.
- torchattacks 3.5.1 is installed with --no-deps (its requirements would pull a CUDA torch and
  torchvision); it imports and runs without torchvision.
- advertorch 0.2.3 needs two shims on torch 2.13: `torch.autograd.gradcheck.zero_gradients` was
  removed (its FAB attack imports it), and `advertorch.functional` imports `torchvision.transforms` for
  a JPEG defence we never use. torchvision must not be installed next to the CPU torch (its import
  fails on the missing `torchvision::nms` operator), so a stub module offering the two names it
  touches at import time is registered instead, only if no real torchvision is importable.
"""

import importlib.util
import sys
import types


def import_foolbox():
    import foolbox

    return foolbox


def foolbox_found(raw):
    """(N,) bool: the examples foolbox's C&W found. It returns an all-zero image where it found none,
    and its own success flag judges *that* image (a black image is often misclassified), so a found
    example is one whose returned image is not all zeros."""
    return raw.flatten(1).abs().amax(1) > 0


def import_torchattacks():
    import torchattacks

    return torchattacks


def _zero_gradients(x):
    """The function torch removed: zero the .grad of a tensor (or of each tensor in an iterable)."""
    import torch

    if isinstance(x, torch.Tensor):
        if x.grad is not None:
            x.grad.detach_()
            x.grad.zero_()
    else:
        for item in x:
            _zero_gradients(item)


def import_advertorch():
    import torch.autograd.gradcheck  # noqa: F401  (the attribute is the function; the module is in sys.modules)

    gradcheck = sys.modules["torch.autograd.gradcheck"]
    if not hasattr(gradcheck, "zero_gradients"):
        gradcheck.zero_gradients = _zero_gradients
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        stub = types.ModuleType("torchvision")
        transforms = types.ModuleType("torchvision.transforms")

        class _Unavailable:  # placeholders: advertorch builds them at import, only its JPEG filter calls them
            def __call__(self, *args, **kwargs):
                raise RuntimeError("torchvision is stubbed in the tests: advertorch's JPEG filter is unavailable")

        transforms.ToPILImage = _Unavailable
        transforms.ToTensor = _Unavailable
        stub.transforms = transforms
        sys.modules["torchvision"] = stub
        sys.modules["torchvision.transforms"] = transforms
    import advertorch.attacks

    return advertorch
