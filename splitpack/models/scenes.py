"""``scenes_cnn``: the camera-sized reference model of the demo, and its training helper.

The ``scenes`` data set (:mod:`splitpack.datasets`) is 64x64 RGB patches of scikit-learn's two
bundled photographs, labelled by which of 4x4 regions of which photo they come from (32
classes). ``scenes_cnn`` is an ImageNet-style network with an early bottleneck: two stride-2
convs take the input to 16x16 for about 8 % of the compute (``splitpack cuts`` counts 4.9 of
59.8 M FLOPs), and the rest runs at 16x16 and 8x8. So a cut after the stem sends a small
compressed feature instead of a 12 KiB image, and a slow device runs a small part of the model:
the case where splitting can beat both running locally and uploading the image.
"""

from __future__ import annotations

import torch
from torch import nn

from splitpack.errors import InvalidConfigError
from splitpack.models.digits import train_reference

__all__ = ["SCENES_CLASSES", "ScenesCNN", "scenes_cnn", "train_scenes_reference"]

SCENES_CLASSES = 32  # 2 photographs x 4 x 4 regions; splitpack.datasets.SCENES_GRID


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


class ScenesCNN(nn.Module):
    """stem (two stride-2 convs, 64 -> 16 px), a 16x16 stage, an 8x8 stage, pool, linear."""

    def __init__(self, num_classes: int = SCENES_CLASSES, width: int = 48) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv(3, 24, 2), _conv(24, 32, 2))
        self.stage1 = nn.Sequential(_conv(32, width), _conv(width, width), _conv(width, width))
        self.stage2 = nn.Sequential(_conv(width, 2 * width, 2), _conv(2 * width, 2 * width),
                                    _conv(2 * width, 2 * width))
        self.pool, self.flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten()
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.stage2(self.stage1(self.stem(x))))))


def scenes_cnn(*, num_classes: int = SCENES_CLASSES, in_channels: int = 3) -> ScenesCNN:
    """The scenes reference model (eval mode) for RGB input.

    Args:
        num_classes: Outputs of the final linear layer.
        in_channels: Must be 3 (the factory signature every reference model shares).

    Raises:
        InvalidConfigError: ``in_channels`` is not 3.
    """
    if in_channels != 3:
        raise InvalidConfigError(f"scenes_cnn: in_channels={in_channels}; it takes RGB input "
                                 "(in_channels=3); convert grayscale data to 3 channels")
    return ScenesCNN(num_classes).eval()


def train_scenes_reference(path, *, epochs: int = 20, seed: int = 0, progress: bool = True) -> float:
    """Train ``scenes_cnn`` on splitpack's ``scenes`` data set and save its state_dict.

    Args:
        path: Where to write the weights (``torch.save`` of the state_dict).
        epochs: Training epochs (about 4 s each on a 2-core host).
        seed: Seeds the initial weights and the batch order.
        progress: Show a progress bar.

    Returns:
        Test accuracy in percent, measured in torch.
    """
    return train_reference(scenes_cnn, "scenes", path, epochs=epochs, lr=3e-3, seed=seed,
                           progress=progress)
