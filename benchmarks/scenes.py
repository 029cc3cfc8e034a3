"""A camera-sized benchmark where splitting pays: 64x64 RGB patches of real photographs.

The digits demo is too small for split computing to win (its whole 16x16 input is 256 bytes,
fewer than any compressed feature, and it runs in a third of a millisecond). This script makes
the opposite case from data that ships with scikit-learn, so that it runs offline:

* ``dataset``: 64x64 patches of scikit-learn's two sample photographs (``china.jpg`` and
  ``flower.jpg``, 427x640 each). Each photo is divided into a 4x4 grid of regions, one class
  each (32 classes): "which part of which scene is this patch from". Patch centres are drawn
  uniformly inside their region, with a brightness gain in [0.8, 1.2], so neighbouring classes
  overlap and test patches are new crops. Natural-image pixels compress poorly (zlib keeps
  most of the bytes), as a camera frame would.
* ``scenes_cnn``: an ImageNet-style network with an early bottleneck: two stride-2 convs take
  the input to 16x16 for about 8 % of the compute (``splitpack cuts`` counts 4.9 of 59.8 M
  FLOPs), and the rest runs at 16x16 and 8x8. So a cut after the stem sends a small
  compressed feature instead of a 12 KiB image, and the device runs a small part of the model.
* ``train``: trains ``scenes_cnn`` on the data set and writes its weights.

Usage (the commands and what they printed are in benchmarks/README.md)::

    python benchmarks/scenes.py dataset --out scenes-out/scenes.npz
    python benchmarks/scenes.py train --data scenes-out/scenes.npz --out scenes-out/scenes_cnn.pt
    splitpack compile benchmarks/scenes.py:scenes_cnn --weights scenes-out/scenes_cnn.pt \\
        --data npz:scenes-out/scenes.npz --out scenes-out/bundle ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

GRID = 4  # regions per side of each photograph
PATCH = 64
CLASSES = 2 * GRID * GRID


def make_patches(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random patches (uint8 NCHW) and their region labels."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two uint8 (427, 640, 3) arrays
    labels = rng.integers(0, CLASSES, size=count)
    patches = np.empty((count, 3, PATCH, PATCH), np.uint8)
    for index, label in enumerate(labels):
        photo = photos[label // (GRID * GRID)]
        row, col = divmod(int(label) % (GRID * GRID), GRID)
        height, width = photo.shape[0] // GRID, photo.shape[1] // GRID
        half = PATCH // 2
        cy = rng.integers(max(row * height, half), min((row + 1) * height, photo.shape[0] - half))
        cx = rng.integers(max(col * width, half), min((col + 1) * width, photo.shape[1] - half))
        crop = photo[cy - half:cy + half, cx - half:cx + half].astype(np.float32)
        crop *= rng.uniform(0.8, 1.2)
        patches[index] = np.clip(np.rint(crop), 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return patches, labels.astype(np.int64)


def write_dataset(out: Path, *, train: int = 4096, test: int = 512, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    x_train, y_train = make_patches(train, rng)
    x_test, y_test = make_patches(test, rng)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    print(f"{out}: {train} train and {test} test patches, {CLASSES} classes, "
          f"uint8 {x_train.shape[1:]}")


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


class ScenesCNN(nn.Module):
    """stem (two stride-2 convs, 64 -> 16 px), a 16x16 stage, an 8x8 stage, pool, linear."""

    def __init__(self, num_classes: int = CLASSES, width: int = 48) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv(3, 24, 2), _conv(24, 32, 2))
        self.stage1 = nn.Sequential(_conv(32, width), _conv(width, width), _conv(width, width))
        self.stage2 = nn.Sequential(_conv(width, 2 * width, 2), _conv(2 * width, 2 * width),
                                    _conv(2 * width, 2 * width))
        self.pool, self.flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten()
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.stage2(self.stage1(self.stem(x))))))


def scenes_cnn(*, num_classes: int = CLASSES, in_channels: int = 3) -> ScenesCNN:
    """The factory ``splitpack compile benchmarks/scenes.py:scenes_cnn`` builds (eval mode)."""
    if in_channels != 3:
        raise ValueError(f"scenes_cnn takes RGB input (in_channels=3), got {in_channels}")
    return ScenesCNN(num_classes).eval()


def train(data: Path, out: Path, *, epochs: int, seed: int = 0) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from splitpack.datasets import load_dataset
    from splitpack.models.digits import evaluate_accuracy, train_classifier

    dataset = load_dataset(f"npz:{data}")
    torch.manual_seed(seed)
    model = train_classifier(scenes_cnn(num_classes=dataset.num_classes), dataset.x_train,
                             dataset.y_train, epochs=epochs, lr=3e-3, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    accuracy = evaluate_accuracy(model, dataset.x_test, dataset.y_test)
    print(f"{out}: test accuracy {accuracy:.2f}% after {epochs} epochs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    dataset = commands.add_parser("dataset", help="write the patch data set (.npz)")
    dataset.add_argument("--out", type=Path, required=True)
    dataset.add_argument("--train", type=int, default=4096)
    dataset.add_argument("--test", type=int, default=512)
    fit = commands.add_parser("train", help="train scenes_cnn and write its weights")
    fit.add_argument("--data", type=Path, required=True)
    fit.add_argument("--out", type=Path, required=True)
    fit.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    if args.command == "dataset":
        write_dataset(args.out, train=args.train, test=args.test)
    else:
        train(args.data, args.out, epochs=args.epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
