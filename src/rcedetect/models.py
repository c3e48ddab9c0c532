"""Pre-activation ResNet-(6n+2) of He et al. 2016b ("Identity mappings in deep residual networks"),
as used by Pang et al. 2018: filters 16/32/64, leaky ReLU (slope 0.1), global average pooling and a
linear head. Depth 32 (n=5) and 56 (n=9) are the paper's networks.

Inputs are images in [0, 1] with shape (N, C, H, W); the model maps them to the paper's
[-0.5, 0.5] range itself, so attacks and detectors always work in [0, 1] pixel space.

The model returns *prediction logits*: argmax is the predicted class and softmax is F(x), for
CE and RCE models alike (the RCE loss folds the paper's logit reversal in, see `losses`).
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.1
WIDTHS = (16, 32, 64)


class ModelOutput(NamedTuple):
    """Logits (N, L) and the penultimate features (N, 64): the GAP output after the last BN + leaky ReLU."""

    logits: torch.Tensor
    features: torch.Tensor


class PreActBlock(nn.Module):
    """BN -> leaky ReLU -> conv3x3 -> BN -> leaky ReLU -> conv3x3, plus the shortcut.

    When the shape changes, the shortcut is a strided 1x1 projection of the *activated* input,
    as in He et al. 2016b's CIFAR code.
    """

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.bn1(x), LEAKY_SLOPE)
        residual = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.leaky_relu(self.bn2(out), LEAKY_SLOPE))
        return out + residual


class PreActResNet(nn.Module):
    """Pre-activation ResNet for 28x28 (MNIST) or 32x32 (CIFAR-10) images in [0, 1]."""

    def __init__(self, depth: int = 32, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"depth must be 6n+2 (e.g. 32 or 56), got {depth}")
        n = (depth - 2) // 6
        self.depth, self.in_channels, self.num_classes = depth, in_channels, num_classes
        self.stem = nn.Conv2d(in_channels, WIDTHS[0], 3, padding=1, bias=False)
        blocks, in_planes = [], WIDTHS[0]
        for stage, planes in enumerate(WIDTHS):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(PreActBlock(in_planes, planes, stride))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.bn_final = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu", a=LEAKY_SLOPE)

    @property
    def feature_dim(self) -> int:
        return self.fc.in_features

    def forward_features(self, x: torch.Tensor) -> ModelOutput:
        """Logits and the 64-d penultimate features (after the last BN + leaky ReLU + GAP)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected images of shape (N, {self.in_channels}, H, W) in [0, 1], got {tuple(x.shape)}"
            )
        out = self.stem(x - 0.5)  # the paper feeds [-0.5, 0.5]; callers work in [0, 1]
        out = self.blocks(out)
        out = F.leaky_relu(self.bn_final(out), LEAKY_SLOPE)
        features = out.mean(dim=(2, 3))
        return ModelOutput(self.fc(features), features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).logits


def resnet(depth: int = 32, in_channels: int = 1, num_classes: int = 10) -> PreActResNet:
    """The paper's ResNet-32 (depth=32) or ResNet-56 (depth=56); `in_channels` 1 for MNIST, 3 for CIFAR-10."""
    return PreActResNet(depth=depth, in_channels=in_channels, num_classes=num_classes)
