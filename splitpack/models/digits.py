"""Reference classifier for scikit-learn's digits as splitpack feeds it, and a training helper.

Data loading lives in ``splitpack.datasets``; this module only takes tensors.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from splitpack.errors import InvalidConfigError, InvalidDatasetError
from splitpack.models._blocks import conv_bn_relu
from splitpack.models.resnet import BasicBlock

__all__ = ["DigitsCNN", "digits_cnn", "train_classifier", "evaluate_accuracy", "train_digits_reference",
           "train_reference"]


class DigitsCNN(nn.Module):
    """Mostly sequential trunk of ten stages, then global pool and a linear head.

    Every stage output is a single-tensor cut of the exported graph (the two residual
    blocks count as one stage each; tensors inside them are not cuts). Per-sample float32
    sizes of the stage outputs at the default 16x16 input (``splitpack.datasets`` upsamples the
    8x8 digits 2x; a 32x32 input works too, at four times the compute):

    ====== ============== =========
    stage  shape          bytes
    ====== ============== =========
    stem   16 x 16 x 16   16 KiB
    conv1  16 x 16 x 16   16 KiB
    down1  32 x 8 x 8     8 KiB
    block1 32 x 8 x 8     8 KiB
    conv2  32 x 8 x 8     8 KiB
    down2  64 x 4 x 4     4 KiB
    block2 64 x 4 x 4     4 KiB
    conv3  64 x 4 x 4     4 KiB
    down3  64 x 2 x 2     1 KiB
    conv4  64 x 2 x 2     1 KiB
    ====== ============== =========
    """

    def __init__(self, *, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = conv_bn_relu(in_channels, 16)
        self.conv1 = conv_bn_relu(16, 16)
        self.down1 = conv_bn_relu(16, 32, stride=2)
        self.block1 = BasicBlock(32, 32)
        self.conv2 = conv_bn_relu(32, 32)
        self.down2 = conv_bn_relu(32, 64, stride=2)
        self.block2 = BasicBlock(64, 64)
        self.conv3 = conv_bn_relu(64, 64)
        self.down3 = conv_bn_relu(64, 64, stride=2)
        self.conv4 = conv_bn_relu(64, 64)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.stem(x))
        x = self.conv2(self.block1(self.down1(x)))
        x = self.conv3(self.block2(self.down2(x)))
        x = self.conv4(self.down3(x))
        return self.fc(self.flatten(self.pool(x)))


def digits_cnn(*, num_classes: int = 10, in_channels: int = 1) -> DigitsCNN:
    """Build the digits reference classifier in eval mode.

    Args:
        num_classes: size of the output logits (10 digits).
        in_channels: channels of the input (1: grayscale digits upsampled to 16x16).

    Returns:
        A ``DigitsCNN`` taking (N, in_channels, 16, 16) float32 (any H, W divisible by 8
        works) and returning (N, num_classes) logits.
    """
    return DigitsCNN(num_classes=num_classes, in_channels=in_channels).eval()


def _as_tensors(
    x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.as_tensor(x, dtype=torch.float32)
    labels = torch.as_tensor(y, dtype=torch.long)
    if inputs.shape[0] != labels.shape[0]:
        raise InvalidDatasetError(
            f"inputs and labels differ in length ({inputs.shape[0]} vs {labels.shape[0]}); "
            "pass one label per sample"
        )
    if labels.ndim != 1:
        raise InvalidDatasetError(
            f"labels must be a 1-D array of class indices, got shape {tuple(labels.shape)}"
        )
    return inputs, labels


def train_classifier(
    model: nn.Module,
    x_train: np.ndarray | torch.Tensor,
    y_train: np.ndarray | torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float,
    seed: int,
    progress: bool = True,
) -> nn.Module:
    """Train a classifier with Adam, cross-entropy and a cosine learning-rate decay.

    Deterministic for a given seed and initial weights (on one machine and thread count);
    seeding the initial weights is the caller's job, before building the model.

    Args:
        model: a module mapping (N, ...) float32 inputs to (N, classes) logits; trained in
            place.
        x_train: float32 inputs, first axis is the sample.
        y_train: integer class indices, shape (N,).
        epochs: passes over the training set (>= 1).
        batch_size: samples per optimizer step (>= 1).
        lr: initial Adam learning rate (> 0), decayed to zero over the run.
        seed: seeds torch's global RNG and the shuffling order.
        progress: show a tqdm bar over epochs with the mean loss.

    Returns:
        The same ``model`` object, in eval mode.
    """
    if epochs < 1:
        raise InvalidConfigError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise InvalidConfigError(f"batch_size must be >= 1, got {batch_size}")
    if not lr > 0:
        raise InvalidConfigError(f"lr must be > 0, got {lr}")
    inputs, labels = _as_tensors(x_train, y_train)
    if inputs.shape[0] == 0:
        raise InvalidDatasetError("training set is empty; pass at least one sample")
    torch.manual_seed(seed)
    # A private generator keeps the batch order independent of RNG use elsewhere.
    shuffle_generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = -(-inputs.shape[0] // batch_size)
    # Cosine decay to zero: with a constant rate the last steps still jump around and the
    # eval-mode accuracy of the final weights varies by tens of points between seeds.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=epochs * steps_per_epoch
    )
    model.train()
    # disable=None: a bar on a terminal, nothing in a log file or CI output
    bar = tqdm(range(epochs), desc="train", unit="epoch", disable=None if progress else True)
    for _ in bar:
        order = torch.randperm(inputs.shape[0], generator=shuffle_generator)
        total_loss = 0.0
        for start in range(0, inputs.shape[0], batch_size):
            batch_indices = order[start : start + batch_size]
            if batch_indices.numel() == 1 and start > 0:
                # BatchNorm cannot train on a lone sample; dropping one sample of an epoch's
                # tail costs nothing measurable.
                continue
            logits = model(inputs[batch_indices])
            loss = F.cross_entropy(logits, labels[batch_indices])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * batch_indices.numel()
        bar.set_postfix(loss=f"{total_loss / inputs.shape[0]:.4f}")
    return model.eval()


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 256,
) -> float:
    """Top-1 accuracy of a classifier, in eval mode.

    Args:
        model: a module mapping (N, ...) float32 inputs to (N, classes) logits. It is put
            in eval mode.
        x: float32 inputs, first axis is the sample.
        y: integer class indices, shape (N,).
        batch_size: samples per forward pass.

    Returns:
        Accuracy in percent (0 to 100).
    """
    inputs, labels = _as_tensors(x, y)
    if inputs.shape[0] == 0:
        raise InvalidDatasetError("evaluation set is empty; pass at least one sample")
    model.eval()
    correct = 0
    for start in range(0, inputs.shape[0], batch_size):
        logits = model(inputs[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == labels[start : start + batch_size]).sum())
    return 100.0 * correct / inputs.shape[0]


def train_digits_reference(path, *, epochs: int = 6, seed: int = 0, progress: bool = True) -> float:
    """Train ``digits_cnn`` on splitpack's ``digits`` data set and save its state_dict.

    Args:
        path: where to write the weights (``torch.save`` of the state_dict).
        epochs: training epochs (about a second each here).
        seed: seeds the initial weights and the batch order.
        progress: show a progress bar.

    Returns:
        Test accuracy in percent, measured in torch.
    """
    return train_reference(digits_cnn, "digits", path, epochs=epochs, lr=2e-3, seed=seed,
                           progress=progress)


def train_reference(factory, data: str, path, *, epochs: int, lr: float, seed: int = 0,
                    progress: bool = True) -> float:
    """Train ``factory(num_classes=...)`` on the data set ``data`` and save its state_dict.

    Args:
        factory: A reference model factory taking ``num_classes``.
        data: A :func:`~splitpack.datasets.load_dataset` spec.
        path: Where to write the weights (``torch.save`` of the state_dict).
        epochs, lr, seed, progress: As in :func:`train_classifier` (``seed`` also seeds the
            initial weights).

    Returns:
        Test accuracy in percent, measured in torch.
    """
    from pathlib import Path

    from splitpack.datasets import load_dataset

    dataset = load_dataset(data)
    torch.manual_seed(seed)
    model = train_classifier(factory(num_classes=dataset.num_classes), dataset.x_train, dataset.y_train,
                             epochs=epochs, lr=lr, seed=seed, progress=progress)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return evaluate_accuracy(model, dataset.x_test, dataset.y_test)
