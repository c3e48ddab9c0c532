"""Batched inference over whole datasets: logits and penultimate features without autograd."""

import torch

from .models import ModelOutput


@torch.no_grad()
def batched_outputs(model, images: torch.Tensor, *, batch_size: int = 500, device=None) -> ModelOutput:
    """`model.forward_features` over `images` (uint8 in [0, 255] or float in [0, 1]), results on CPU."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits, features = [], []
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].to(device)
            batch = batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()
            out = model.forward_features(batch.contiguous(memory_format=torch.channels_last))
            logits.append(out.logits.float().cpu())
            features.append(out.features.float().cpu())
    finally:
        model.train(was_training)
    return ModelOutput(torch.cat(logits), torch.cat(features))


def accuracy(model, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 500, device=None) -> float:
    logits = batched_outputs(model, images, batch_size=batch_size, device=device).logits
    return (logits.argmax(1) == labels).float().mean().item()
