"""The one batched eval-mode forward pass: logits and penultimate features of a whole set, no autograd."""

from contextlib import contextmanager

import torch

from .models import ModelOutput


@contextmanager
def eval_mode(model: torch.nn.Module):
    """Run the block with `model` in eval mode and restore the caller's train/eval mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def batched_outputs(model, images: torch.Tensor, *, batch_size: int = 500, device=None, to_cpu: bool = True,
                    memory_format=torch.channels_last) -> ModelOutput:
    """`model.forward_features` over `images` (uint8 in [0, 255] or float in [0, 1]) in batches.

    The model runs in eval mode (BN with running statistics, so rows never influence each other) and
    its train/eval mode is restored afterwards. Results are float32, on the CPU (`to_cpu=True`) or on
    `device` (default: the model's). `memory_format`: layout of each batch; channels_last is the fast
    one on GPUs, and on CPU it can change the last float bit of 3-channel convolutions, so callers
    whose numbers were produced with the plain layout pass `torch.contiguous_format`.
    """
    device = device or next(model.parameters()).device
    logits, features = [], []
    with eval_mode(model):
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].to(device)
            batch = batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()
            out = model.forward_features(batch.contiguous(memory_format=memory_format))
            logits.append(out.logits.float().cpu() if to_cpu else out.logits.float())
            features.append(out.features.float().cpu() if to_cpu else out.features.float())
    return ModelOutput(torch.cat(logits), torch.cat(features))


def accuracy(model, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 500, device=None) -> float:
    logits = batched_outputs(model, images, batch_size=batch_size, device=device).logits
    return (logits.argmax(1) == labels).float().mean().item()
