"""Small CIFAR-style ResNet with both kinds of downsampling shortcut.

The two shortcut kinds exist side by side on purpose: a projection shortcut (1x1 conv + BN)
and an option-A zero-padding shortcut (subsample + pad channels with zeros, no parameters)
produce different ONNX subgraphs, and the cut finder must treat both as residual branches.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from splitpack.errors import InvalidConfigError
from splitpack.models._blocks import conv_bn_relu

__all__ = ["BasicBlock", "ResNetSmall", "resnet_small", "cifar_resnet20"]

ShortcutKind = Literal["projection", "zero_pad"]


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: stride-2 subsample, then zero channels appended to match the width."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise InvalidConfigError(
                f"zero-pad shortcut cannot shrink channels ({in_channels} -> {out_channels}); "
                "use shortcut='projection'"
            )
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # F.pad pads the last dims first: (W_left, W_right, H_top, H_bottom, C_front, C_back).
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection, ReLU after the sum.

    The shortcut is the identity when the shape is unchanged, otherwise the kind named by
    ``shortcut``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        shortcut: ShortcutKind = "projection",
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "projection":
            self.shortcut = nn.Sequential()
            self.shortcut.add_module(
                "conv", nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            )
            self.shortcut.add_module("bn", nn.BatchNorm2d(out_channels))
        elif shortcut == "zero_pad":
            self.shortcut = ZeroPadShortcut(in_channels, out_channels, stride)
        else:
            raise InvalidConfigError(
                f"unknown shortcut {shortcut!r}; allowed: 'projection', 'zero_pad'"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    """Stem, three stages of BasicBlocks (the last two downsample), global pool, linear head."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        widths: tuple[int, int, int],
        blocks_per_stage: int,
        stage_shortcuts: tuple[ShortcutKind, ShortcutKind, ShortcutKind] = ("projection", "projection", "zero_pad"),
    ) -> None:
        super().__init__()
        self.stem = conv_bn_relu(in_channels, widths[0])
        # By default stage 2 downsamples with a projection and stage 3 with zero padding, so
        # that one model exercises both shortcut kinds.
        channels = widths[0]
        for index, (width, shortcut) in enumerate(zip(widths, stage_shortcuts), start=1):
            stride = 1 if index == 1 else 2
            blocks = []
            for block_index in range(blocks_per_stage):
                blocks.append(
                    BasicBlock(
                        channels,
                        width,
                        stride=stride if block_index == 0 else 1,
                        shortcut=shortcut,
                    )
                )
                channels = width
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def resnet_small(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    widths: tuple[int, int, int] = (16, 32, 64),
    blocks_per_stage: int = 1,
) -> ResNetSmall:
    """Build a small ResNet (CIFAR layout) in eval mode.

    Args:
        num_classes: size of the output logits.
        in_channels: channels of the input image.
        widths: channels of the three stages; stage 3 must not be narrower than stage 2
            (its zero-pad shortcut can only add channels).
        blocks_per_stage: BasicBlocks per stage.

    Returns:
        A ``ResNetSmall`` taking (N, in_channels, H, W) with H, W divisible by 4, returning
        (N, num_classes) logits. Layer 2 downsamples with a projection shortcut, layer 3 with
        a zero-padding shortcut.
    """
    if blocks_per_stage < 1:
        raise InvalidConfigError(f"blocks_per_stage must be >= 1, got {blocks_per_stage}")
    return ResNetSmall(
        num_classes=num_classes,
        in_channels=in_channels,
        widths=widths,
        blocks_per_stage=blocks_per_stage,
    ).eval()


def cifar_resnet20(*, num_classes: int = 10, in_channels: int = 3) -> ResNetSmall:
    """Build the classic CIFAR ResNet-20 (He et al. 2016, section 4.2) in eval mode.

    Three stages of three BasicBlocks with 16, 32 and 64 channels and option-A (zero-padding,
    parameter-free) shortcuts where the shape changes: 0.27 M parameters, about 41 M MACs at
    32x32.

    Args:
        num_classes: size of the output logits.
        in_channels: channels of the input image.

    Returns:
        A ``ResNetSmall`` taking (N, in_channels, H, W) with H, W divisible by 4.
    """
    return ResNetSmall(
        num_classes=num_classes,
        in_channels=in_channels,
        widths=(16, 32, 64),
        blocks_per_stage=3,
        stage_shortcuts=("zero_pad", "zero_pad", "zero_pad"),
    ).eval()
