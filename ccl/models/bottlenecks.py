"""ResNet bottleneck blocks of the RD student: down-sampling (neck) and up-sampling (decoder).

Attribute names (conv1..3, bn1..3, downsample / upsample) follow torchvision's
ResNet and RD4AD, so RD4AD checkpoints load by key.
"""

from __future__ import annotations

import torch
from torch import nn

EXPANSION = 4


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False)


def deconv(c_in: int, c_out: int, stride: int) -> nn.ConvTranspose2d:
    """Learned x`stride` up-sampling (RD4AD: kernel 2, stride 2)."""
    return nn.ConvTranspose2d(c_in, c_out, kernel_size=stride, stride=stride, bias=False)


def init_convs(module: nn.Module) -> None:
    """He init of Conv2d weights (as torchvision's ResNet); BN keeps weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (x4) with a projected shortcut when the shape changes."""

    def __init__(self, c_in: int, planes: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = planes * EXPANSION
        self.conv1 = conv1x1(c_in, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, c_out)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(conv1x1(c_in, c_out, stride), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ReverseBottleneck(nn.Module):
    """Decoder block: like Bottleneck but the stride is a transposed conv that up-samples.

    ``final_relu=False`` leaves the output signed: a ReLU output cannot point where a teacher
    feature with negative entries points (MobileNetV2's linear bottlenecks), capping the cosine.
    """

    def __init__(self, c_in: int, planes: int, width: int, stride: int = 1, final_relu: bool = True) -> None:
        super().__init__()
        self.final_relu = final_relu
        c_out = planes * EXPANSION
        self.conv1 = conv1x1(c_in, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = deconv(width, width, stride) if stride > 1 else conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, c_out)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.upsample = None
        if stride != 1 or c_in != c_out:
            self.upsample = nn.Sequential(deconv(c_in, c_out, stride), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.upsample is None else self.upsample(x)
        return self.relu(out + identity) if self.final_relu else out + identity
