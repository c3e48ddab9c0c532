"""A classifier that abstains: the paper's thresholding test strategy (section 3.4) as one object.

`SelectiveClassifier(model, detector).predict(x)` returns the predicted class, or `NOT_SURE`
(-1) when the detector rejects the input as adversarial.
"""

import torch

from ..errors import InputError
from ..inference import batched_outputs, eval_mode
from ..models import ModelOutput

NOT_SURE = -1


def collect_outputs(model, images, *, batch_size: int = 500, device=None) -> ModelOutput:
    """`model.forward_features` over a whole set of images in batches, without autograd.

    `images`: (N, C, H, W) uint8 in [0, 255] or float in [0, 1]. Returns a `ModelOutput` on the CPU
    (float32). The model's train/eval mode is restored afterwards.
    """
    return batched_outputs(model, images, batch_size=batch_size, device=device)


class SelectiveClassifier:
    """Predict with `model`, abstaining with `NOT_SURE` where `detector` rejects.

    Args:
        model: a network with `forward_features(x) -> ModelOutput`, inputs (N, C, H, W) in [0, 1].
        detector: a fitted `ThresholdDetector` (`score_samples(model_output)` and `threshold_`).
        batch_size: images per forward pass in `predict`.
    """

    def __init__(self, model, detector, *, batch_size: int = 500):
        self.model = model
        self.detector = detector
        self.batch_size = batch_size

    def predict_with_scores(self, x: torch.Tensor):
        """(labels with NOT_SURE for rejected inputs (N,) int64, detector scores (N,)), on x's device."""
        if x.dim() != 4:
            raise InputError(f"expected images (N, C, H, W) in [0, 1], got shape {tuple(x.shape)}")
        if not hasattr(self.detector, "threshold_"):
            raise InputError("the detector is not fitted: call detector.fit(...) before predicting")
        device = next(self.model.parameters()).device
        labels, scores = [], []
        with eval_mode(self.model):
            with torch.no_grad():
                for start in range(0, x.shape[0], self.batch_size):
                    out = self.model.forward_features(x[start:start + self.batch_size].to(device))
                    score = self.detector.score_samples(out)
                    accepted = score > self.detector.threshold_  # the same rule as detector.accept
                    labels.append(torch.where(accepted, out.logits.argmax(dim=1), NOT_SURE))
                    scores.append(score)
        if not labels:
            return torch.zeros(0, dtype=torch.long, device=x.device), torch.zeros(0, device=x.device)
        return torch.cat(labels).to(x.device), torch.cat(scores).to(x.device)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class labels (N,) int64, or NOT_SURE (-1) where the detector rejects the input."""
        return self.predict_with_scores(x)[0]
