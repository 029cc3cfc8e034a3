"""Building blocks shared by the reference architectures."""

from __future__ import annotations

from torch import nn

__all__ = ["conv_bn", "conv_bn_relu"]


def conv_bn(
    in_channels: int, out_channels: int, *, kernel_size: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """Conv (no bias, BN follows) + BatchNorm, padded to keep the size at stride 1.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        kernel_size: odd kernel size.
        stride: convolution stride.
        groups: convolution groups (``in_channels`` for a depthwise convolution).

    Returns:
        An ``nn.Sequential`` whose children are named ``conv`` and ``bn``, so module paths read
        ``stem.conv`` rather than ``stem.0``.
    """
    block = nn.Sequential()
    block.add_module(
        "conv",
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups,
                  bias=False),
    )
    block.add_module("bn", nn.BatchNorm2d(out_channels))
    return block


def conv_bn_relu(
    in_channels: int, out_channels: int, *, kernel_size: int = 3, stride: int = 1
) -> nn.Sequential:
    """``conv_bn`` followed by a ReLU child named ``relu``."""
    block = conv_bn(in_channels, out_channels, kernel_size=kernel_size, stride=stride)
    block.add_module("relu", nn.ReLU())
    return block
