"""Small DenseNet-BC: dense blocks that concatenate features, transitions that halve them."""

from __future__ import annotations

import torch
from torch import nn

from splitpack.errors import InvalidConfigError

__all__ = ["DenseLayer", "DenseNetSmall", "densenet_small"]


class DenseLayer(nn.Module):
    """Pre-activation bottleneck (BN-ReLU-1x1, BN-ReLU-3x3); its output is appended to its input."""

    def __init__(self, in_channels: int, growth_rate: int, bottleneck_width: int) -> None:
        super().__init__()
        inner = bottleneck_width * growth_rate
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, inner, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(inner)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(inner, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new_features = self.conv1(self.relu1(self.norm1(x)))
        new_features = self.conv2(self.relu2(self.norm2(new_features)))
        return torch.cat([x, new_features], dim=1)


class Transition(nn.Module):
    """BN-ReLU-1x1 conv (channel compression) then 2x2 average pool."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.relu(self.norm(x))))


class DenseNetSmall(nn.Module):
    """Stem conv, dense blocks separated by transitions, final BN-ReLU, pool, linear head."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        growth_rate: int,
        layers_per_block: tuple[int, ...],
        compression: float,
        bottleneck_width: int = 4,
    ) -> None:
        super().__init__()
        channels = 2 * growth_rate
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.features = nn.Sequential()
        for block_index, num_layers in enumerate(layers_per_block, start=1):
            block = nn.Sequential()
            for layer_index in range(num_layers):
                block.add_module(
                    f"layer{layer_index}", DenseLayer(channels, growth_rate, bottleneck_width)
                )
                channels += growth_rate
            self.features.add_module(f"block{block_index}", block)
            if block_index < len(layers_per_block):
                reduced = int(channels * compression)
                self.features.add_module(f"transition{block_index}", Transition(channels, reduced))
                channels = reduced
        self.norm = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.norm(self.features(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


def densenet_small(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    growth_rate: int = 12,
    layers_per_block: tuple[int, ...] = (3, 3, 3),
    compression: float = 0.5,
) -> DenseNetSmall:
    """Build a small DenseNet-BC in eval mode.

    Args:
        num_classes: size of the output logits.
        in_channels: channels of the input image.
        growth_rate: channels each dense layer appends.
        layers_per_block: dense layers in each block; a transition follows every block but
            the last.
        compression: fraction of channels a transition keeps, in (0, 1].

    Returns:
        A ``DenseNetSmall`` taking (N, in_channels, H, W) with H, W divisible by
        2 ** (len(layers_per_block) - 1), returning (N, num_classes) logits.
    """
    if not 0 < compression <= 1:
        raise InvalidConfigError(f"compression must be in (0, 1], got {compression}")
    if not layers_per_block or min(layers_per_block) < 1:
        raise InvalidConfigError(
            f"layers_per_block must list at least one block of >= 1 layers, got {layers_per_block}"
        )
    return DenseNetSmall(
        num_classes=num_classes,
        in_channels=in_channels,
        growth_rate=growth_rate,
        layers_per_block=layers_per_block,
        compression=compression,
    ).eval()
