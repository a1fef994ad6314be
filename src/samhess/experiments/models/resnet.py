"""The CIFAR ResNets of He et al. (2016), section 4.2: ResNet-20, -32, -44, -56, -110.

A 3x3 convolution with 16 filters, then three stages of ``n`` basic blocks (two 3x3 convolutions
each, with batch normalization and ReLU) on 16, 32 and 64 filters, the second and third stage
starting with stride 2; global average pooling and a linear classifier. Depth ``6n + 2``.

Shortcuts: option A, the paper's choice for CIFAR, is parameter-free: where a block changes the
shape, the input is subsampled by the stride and zero-padded with the extra channels. Option B
projects with a 1x1 convolution and batch normalization there instead. Option A gives the published
parameter counts, 0.27M for ResNet-20 and 0.85M for ResNet-56 (exactly 269 722 and 853 018 with 10
classes).

Reference:
    K. He, X. Zhang, S. Ren and J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
    https://arxiv.org/abs/1512.03385
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import nn

_STAGE_WIDTHS = (16, 32, 64)


class ZeroPadShortcut(nn.Module):
    """Option A shortcut: subsample by ``stride`` and append ``extra_channels`` zero channels."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, inputs):
        subsampled = inputs[:, :, :: self.stride, :: self.stride]
        return F.pad(subsampled, (0, 0, 0, 0, 0, self.extra_channels))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch normalization, and a shortcut added before the last ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = ZeroPadShortcut(stride, out_channels - in_channels)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, inputs):
        hidden = F.relu(self.bn1(self.conv1(inputs)))
        hidden = self.bn2(self.conv2(hidden))
        return F.relu(hidden + self.shortcut(inputs))


class CifarResNet(nn.Module):
    """ResNet of depth ``6 * blocks_per_stage + 2`` for small images (see the module docstring).

    Args:
        input_shape: ``(C, H, W)``; any size works thanks to global average pooling.
        num_classes: number of classes.
        blocks_per_stage: ``n`` (3 for ResNet-20, 9 for ResNet-56).
        shortcut: ``"A"`` (zero padding, parameter-free) or ``"B"`` (1x1 projection).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        blocks_per_stage: int,
        shortcut: str = "A",
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(input_shape[0], _STAGE_WIDTHS[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(_STAGE_WIDTHS[0])
        blocks = []
        width = _STAGE_WIDTHS[0]
        for stage, out_channels in enumerate(_STAGE_WIDTHS):
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(width, out_channels, stride, shortcut))
                width = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # He et al. (2015) initialization, as the paper prescribes.
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, inputs):
        hidden = F.relu(self.bn(self.conv(inputs)))
        hidden = self.pool(self.blocks(hidden)).flatten(1)
        return self.fc(hidden)
