"""Small convolutional network for 1-D signals and 2-D images."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

_LAYERS = {
    1: (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d),
    2: (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d),
}


class ConvNet(nn.Module):
    """Blocks of 3-wide convolution, batch norm, ReLU and 2x max pooling, then a linear head.

    Inputs are ``(N, C, L)`` signals (1-D convolutions) or ``(N, C, H, W)`` images (2-D). Each
    block halves the spatial size while it is at least 2; global average pooling then makes the
    head independent of the input size. The convolutions have no bias, since batch normalization
    follows them.

    Reference:
        S. Ioffe and C. Szegedy, "Batch Normalization: Accelerating Deep Network Training by
        Reducing Internal Covariate Shift", ICML 2015. https://arxiv.org/abs/1502.03167

    Args:
        input_shape: ``(C, L)`` or ``(C, H, W)``.
        num_outputs: number of outputs.
        channels: output channels of each block.
    """

    def __init__(
        self, input_shape: Sequence[int], num_outputs: int, channels: Sequence[int] = (16, 32, 64)
    ) -> None:
        super().__init__()
        conv, norm, pool, global_pool = _LAYERS[len(input_shape) - 1]
        width, size = input_shape[0], min(input_shape[1:])
        layers: list[nn.Module] = []
        for out_channels in channels:
            layers += [
                conv(width, out_channels, kernel_size=3, padding=1, bias=False),
                norm(out_channels),
                nn.ReLU(),
            ]
            if size >= 2:
                layers.append(pool(2))
                size //= 2
            width = out_channels
        layers += [global_pool(1), nn.Flatten(), nn.Linear(width, num_outputs)]
        self.layers = nn.Sequential(*layers)

    def forward(self, inputs):
        return self.layers(inputs)
