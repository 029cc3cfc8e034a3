"""The scenes case as files: its data set as an .npz and its weights, for the commands of
benchmarks/README.md that predate the ``scenes`` data set spec.

The data set and the model live in the package (``splitpack.datasets.scene_patches``, the
``scenes`` spec; ``splitpack.models.scenes``); ``dataset`` writes the same patches as
``load_dataset("scenes")`` draws (same seed, same order), so ``npz:scenes-out/scenes.npz`` and
``scenes`` are one data set, and ``benchmarks/scenes.py:scenes_cnn`` is the package's model.

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from splitpack.datasets import SCENES_SIZES, load_dataset, scene_patches  # noqa: E402
from splitpack.models.digits import evaluate_accuracy, train_classifier  # noqa: E402
from splitpack.models.scenes import scenes_cnn  # noqa: E402

__all__ = ["scenes_cnn", "write_dataset", "train"]


def write_dataset(out: Path, *, train: int = SCENES_SIZES[0], test: int = SCENES_SIZES[1],
                  seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    x_train, y_train = scene_patches(train, rng)
    x_test, y_test = scene_patches(test, rng)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    print(f"{out}: {train} train and {test} test patches, {int(y_train.max()) + 1} classes, "
          f"uint8 {x_train.shape[1:]}")


def train(data: Path, out: Path, *, epochs: int, seed: int = 0) -> None:
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
    dataset.add_argument("--train", type=int, default=SCENES_SIZES[0])
    dataset.add_argument("--test", type=int, default=SCENES_SIZES[1])
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
