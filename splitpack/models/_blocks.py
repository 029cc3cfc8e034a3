"""Building blocks shared by the reference architectures."""

from __future__ import annotations

from torch import nn

__all__ = ["conv_bn_relu"]


def conv_bn_relu(
    in_channels: int, out_channels: int, *, kernel_size: int = 3, stride: int = 1
) -> nn.Sequential:
    """Conv (no bias, BN follows) + BatchNorm + ReLU, padded to keep the size at stride 1.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        kernel_size: odd kernel size.
        stride: convolution stride.

    Returns:
        An ``nn.Sequential`` whose children are named ``conv``, ``bn``, ``relu``, so module
        paths read ``stem.conv`` rather than ``stem.0``.
    """
    block = nn.Sequential()
    block.add_module(
        "conv",
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=False,
        ),
    )
    block.add_module("bn", nn.BatchNorm2d(out_channels))
    block.add_module("relu", nn.ReLU())
    return block
