"""Plain convolutional stacks: a minimal CNN and a VGG-style network with BatchNorm."""

from __future__ import annotations

import torch
from torch import nn

from splitpack.errors import InvalidConfigError
from splitpack.models._blocks import conv_bn_relu

__all__ = ["PlainCNN", "VGGSmall", "plain_cnn", "vgg_bn_small"]


class PlainCNN(nn.Module):
    """Three conv-BN-ReLU stages with max pooling, global average pool, linear head."""

    def __init__(self, *, num_classes: int, in_channels: int, width: int) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(in_channels, width)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = conv_bn_relu(width, 2 * width)
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = conv_bn_relu(2 * width, 4 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.conv3(x)
        return self.fc(self.flatten(self.pool(x)))


def plain_cnn(*, num_classes: int = 10, in_channels: int = 3, width: int = 16) -> PlainCNN:
    """Build a plain conv/BN/ReLU stack in eval mode.

    Args:
        num_classes: size of the output logits.
        in_channels: channels of the input image.
        width: channels of the first stage; the next two have 2x and 4x as many.

    Returns:
        A ``PlainCNN`` taking (N, in_channels, H, W) with H, W divisible by 4, returning
        (N, num_classes) logits.
    """
    return PlainCNN(num_classes=num_classes, in_channels=in_channels, width=width).eval()


# Channel counts of the conv layers; "M" is a 2x2 max pool (VGG's configuration notation).
VGG_SMALL_LAYOUT: tuple[int | str, ...] = (16, "M", 32, "M", 64, 64, "M", 128, 128, "M")


class VGGSmall(nn.Module):
    """VGG-style feature stack (conv-BN-ReLU, max pools) and a two-layer classifier."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        image_size: int,
        layout: tuple[int | str, ...],
        hidden_features: int,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential()
        channels = in_channels
        spatial = image_size
        for index, item in enumerate(layout):
            if item == "M":
                self.features.add_module(f"pool{index}", nn.MaxPool2d(2))
                spatial //= 2
            else:
                self.features.add_module(f"conv{index}", conv_bn_relu(channels, int(item)))
                channels = int(item)
        self.flatten = nn.Flatten()
        # A flatten of the full feature map (not a global pool), as in VGG: the classifier's
        # input width then depends on the image size, which is why the factory takes it.
        self.classifier = nn.Sequential()
        self.classifier.add_module("fc1", nn.Linear(channels * spatial * spatial, hidden_features))
        self.classifier.add_module("relu", nn.ReLU())
        self.classifier.add_module("dropout", nn.Dropout(0.5))
        self.classifier.add_module("fc2", nn.Linear(hidden_features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


def vgg_bn_small(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    hidden_features: int = 128,
) -> VGGSmall:
    """Build a small VGG with BatchNorm in eval mode.

    Args:
        num_classes: size of the output logits.
        in_channels: channels of the input image.
        image_size: height and width of the (square) input; must be divisible by 16.
        hidden_features: width of the classifier's hidden layer.

    Returns:
        A ``VGGSmall`` taking (N, in_channels, image_size, image_size), returning
        (N, num_classes) logits.
    """
    pools = sum(1 for item in VGG_SMALL_LAYOUT if item == "M")
    if image_size < 2**pools or image_size % 2**pools:
        raise InvalidConfigError(
            f"vgg_bn_small needs image_size divisible by {2**pools}, got {image_size}"
        )
    return VGGSmall(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        layout=VGG_SMALL_LAYOUT,
        hidden_features=hidden_features,
    ).eval()
