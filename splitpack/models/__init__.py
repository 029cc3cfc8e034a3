"""Reference architectures used by the demo, the tests and the benchmarks.

Every factory takes keyword arguments with defaults and returns a plain ``nn.Module`` in eval
mode that exports to ONNX (opset 17) with a dynamic batch axis. ``REFERENCE_MODELS`` is a
plain dict, not a registry: adding a model means adding a line here.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from splitpack.models.cnn import plain_cnn, vgg_bn_small
from splitpack.models.densenet import densenet_small
from splitpack.models.digits import digits_cnn, evaluate_accuracy, train_classifier
from splitpack.models.mobilenet import cifar_mobilenetv2, mobilenetv2_small
from splitpack.models.resnet import cifar_resnet20, resnet_small
from splitpack.models.scenes import scenes_cnn
from splitpack.models.vit import vit_small

__all__ = [
    "REFERENCE_MODELS",
    "REFERENCE_INPUT_SHAPES",
    "plain_cnn",
    "resnet_small",
    "mobilenetv2_small",
    "cifar_resnet20",
    "cifar_mobilenetv2",
    "densenet_small",
    "vgg_bn_small",
    "vit_small",
    "digits_cnn",
    "scenes_cnn",
    "train_classifier",
    "evaluate_accuracy",
]

REFERENCE_MODELS: dict[str, Callable[..., nn.Module]] = {
    "plain_cnn": plain_cnn,
    "resnet_small": resnet_small,
    "mobilenetv2_small": mobilenetv2_small,
    "cifar_resnet20": cifar_resnet20,
    "cifar_mobilenetv2": cifar_mobilenetv2,
    "densenet_small": densenet_small,
    "vgg_bn_small": vgg_bn_small,
    "vit_small": vit_small,
    "digits_cnn": digits_cnn,
    "scenes_cnn": scenes_cnn,
}

# Per-sample input shape (C, H, W), without the batch axis, that each factory's defaults expect.
REFERENCE_INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    "plain_cnn": (3, 32, 32),
    "resnet_small": (3, 32, 32),
    "mobilenetv2_small": (3, 32, 32),
    "cifar_resnet20": (3, 32, 32),
    "cifar_mobilenetv2": (3, 32, 32),
    "densenet_small": (3, 32, 32),
    "vgg_bn_small": (3, 32, 32),
    "vit_small": (3, 32, 32),
    "digits_cnn": (1, 16, 16),
    "scenes_cnn": (3, 64, 64),
}
