"""Small MobileNetV2 (CIFAR layout: stride-1 stem) built from inverted residual blocks."""

from __future__ import annotations

import torch
from torch import nn

from splitpack.models._blocks import conv_bn

__all__ = ["InvertedResidual", "MobileNetV2Small", "mobilenetv2_small", "cifar_mobilenetv2"]

# (expansion t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper.
# A CIFAR layout in the paper's stage structure, narrowed and downsampled early enough to train on
# two CPU cores (the paper's 224x224 layout at 32x32 keeps 96-channel depthwise maps at full
# resolution and takes over 6 minutes an epoch here): 11 blocks, 32 -> 16 -> 8 -> 4 pixels.
CIFAR_MOBILENETV2_LAYOUT: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 1),
    (6, 64, 3, 2),
    (6, 96, 2, 2),
)

MOBILENETV2_SMALL_LAYOUT: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 2, 2),
    (6, 64, 2, 2),
)


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, groups: int = 1):
    return conv_bn(in_channels, out_channels, kernel_size=kernel_size, stride=stride, groups=groups)


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear project (1x1), residual when shapes match.

    The projection has no activation (the "linear bottleneck"): a ReLU on the narrow
    representation would destroy information.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        layers = nn.Sequential()
        if expansion != 1:
            layers.add_module("expand", _conv_bn(in_channels, hidden, 1))
            layers.add_module("expand_relu", nn.ReLU6())
        layers.add_module("depthwise", _conv_bn(hidden, hidden, 3, stride=stride, groups=hidden))
        layers.add_module("depthwise_relu", nn.ReLU6())
        layers.add_module("project", _conv_bn(hidden, out_channels, 1))
        self.layers = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.use_residual else out


class MobileNetV2Small(nn.Module):
    """Stem, inverted residual stages, 1x1 head conv, global pool, linear classifier."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        stem_channels: int,
        head_channels: int,
        layout: tuple[tuple[int, int, int, int], ...] = MOBILENETV2_SMALL_LAYOUT,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential()
        self.stem.add_module("convbn", _conv_bn(in_channels, stem_channels, 3))
        self.stem.add_module("relu", nn.ReLU6())
        blocks = []
        channels = stem_channels
        for expansion, out_channels, repeats, first_stride in layout:
            for repeat in range(repeats):
                stride = first_stride if repeat == 0 else 1
                blocks.append(
                    InvertedResidual(channels, out_channels, stride=stride, expansion=expansion)
                )
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential()
        self.head.add_module("convbn", _conv_bn(channels, head_channels, 1))
        self.head.add_module("relu", nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(head_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(self.flatten(self.pool(x)))


def mobilenetv2_small(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    stem_channels: int = 16,
    head_channels: int = 128,
) -> MobileNetV2Small:
    """Build a small MobileNetV2 in eval mode.

    Args:
        num_classes: size of the output logits.
        in_channels: channels of the input image.
        stem_channels: channels of the stride-1 stem conv.
        head_channels: channels of the last 1x1 conv before the pool.

    Returns:
        A ``MobileNetV2Small`` taking (N, in_channels, H, W) with H, W divisible by 8,
        returning (N, num_classes) logits.
    """
    return MobileNetV2Small(
        num_classes=num_classes,
        in_channels=in_channels,
        stem_channels=stem_channels,
        head_channels=head_channels,
    ).eval()


def cifar_mobilenetv2(*, num_classes: int = 10, in_channels: int = 3) -> MobileNetV2Small:
    """Build a MobileNetV2-style CIFAR model (stride-1 stem, 11 inverted residual blocks) in eval mode.

    Args:
        num_classes: size of the output logits.
        in_channels: channels of the input image.

    Returns:
        A ``MobileNetV2Small`` with the ``CIFAR_MOBILENETV2_LAYOUT`` blocks, a 16-channel stem and
        a 256-channel head conv, taking (N, in_channels, H, W) with H, W divisible by 8.
    """
    return MobileNetV2Small(
        num_classes=num_classes,
        in_channels=in_channels,
        stem_channels=16,
        head_channels=256,
        layout=CIFAR_MOBILENETV2_LAYOUT,
    ).eval()
