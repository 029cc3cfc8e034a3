"""Train one compression unit at one cut with the original model frozen.

The head's features at the cut are computed once (ONNX Runtime on the split head) and cached,
with the full model's outputs as the teacher. Training then runs only encoder → quantizer
(straight-through) → decoder → frozen tail, where the tail is the split ONNX tail converted to
torch by ``compiler.onnx_torch``: this works the same for torch models and for ``.onnx``
files, and trains against exactly the graph that is emitted.

Loss = feature reconstruction (MSE ÷ feature variance) + distillation on the model's output
(KL at temperature 2) + 0.5 × cross-entropy on the labels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx

from splitpack.compiler.codec import CodecSpec, build_codec_modules
from splitpack.compiler.cuts import Cut
from splitpack.compiler.split import split_at

__all__ = ["DEFAULT_EPOCHS", "CutFeatures", "TrainedCodec", "compute_cut_features", "train_codec", "run_onnx"]

DEFAULT_EPOCHS = 6
_TEMPERATURE = 2.0


def run_onnx(model: onnx.ModelProto, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Run a one-input, one-output ONNX model over ``x`` in batches (CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Spinning worker threads waste the CPU that training (torch) needs on a small machine.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)])


@dataclass(frozen=True, eq=False)
class CutFeatures:
    """Cached features at one cut, the teacher outputs, and the split ONNX head and tail."""

    cut: Cut
    head: onnx.ModelProto
    tail: onnx.ModelProto
    train: np.ndarray
    test: np.ndarray
    teacher_train: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


def compute_cut_features(model: onnx.ModelProto, cut: Cut, dataset) -> CutFeatures:
    """Split at ``cut`` and compute the head's features on both splits once.

    Args:
        model: the checked ONNX model.
        cut: the cut.
        dataset: a ``splitpack.datasets.Dataset``.
    """
    head, tail = split_at(model, cut)
    train = run_onnx(head, dataset.x_train)
    return CutFeatures(
        cut=cut,
        head=head,
        tail=tail,
        train=train,
        test=run_onnx(head, dataset.x_test),
        teacher_train=run_onnx(tail, train),
        y_train=dataset.y_train,
        y_test=dataset.y_test,
    )


@dataclass(frozen=True, eq=False)
class TrainedCodec:
    """A trained unit and what training it cost."""

    codec: CodecSpec
    encoder: object
    decoder: object
    train_seconds: float
    train_examples: int


def train_codec(
    features: CutFeatures,
    codec: CodecSpec,
    *,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
    tail_module=None,
) -> TrainedCodec:
    """Train ``codec`` at ``features.cut`` against the frozen tail.

    Args:
        features: cached features from ``compute_cut_features``.
        codec: the unit to train.
        epochs: passes over the training split.
        batch_size, lr, seed: optimizer settings; the run is deterministic for a seed.
        progress: show a tqdm progress bar.
        tail_module: the frozen tail as a torch module (converted from ONNX when None; pass it
            to share one conversion between the codecs of a cut).

    Returns:
        The trained encoder and decoder (eval mode), ``train_seconds`` and ``train_examples``
        (examples × epochs processed).
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    start = time.perf_counter()
    torch.manual_seed(seed)
    generator = np.random.default_rng(seed)
    encoder, decoder = build_codec_modules(features.cut.shape, codec)
    tail = tail_module if tail_module is not None else frozen_tail(features.tail)
    params = list(encoder.parameters()) + list(decoder.parameters())
    optimizer = torch.optim.Adam(params, lr=lr)
    steps_per_epoch = max(1, len(features.train) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    x_all = torch.from_numpy(features.train)
    teacher_all = torch.from_numpy(features.teacher_train)
    y_all = torch.from_numpy(features.y_train.astype(np.int64))
    variance = float(x_all.var()) + 1e-8
    encoder.train(), decoder.train()
    # disable=None: a bar on a terminal, nothing in a log file or CI output
    bar = tqdm(range(epochs), desc=f"train {features.cut.label} {codec}", disable=None if progress else True,
               leave=False)
    for _ in bar:
        order = torch.from_numpy(generator.permutation(len(x_all)))
        for step in range(steps_per_epoch):
            index = order[step * batch_size:(step + 1) * batch_size]
            x, teacher, y = x_all[index], teacher_all[index], y_all[index]
            restored = decoder(encoder(x))
            logits = tail(restored)
            loss = (
                F.mse_loss(restored, x) / variance
                + F.kl_div(F.log_softmax(logits / _TEMPERATURE, -1), F.softmax(teacher / _TEMPERATURE, -1),
                           reduction="batchmean") * _TEMPERATURE**2
                + 0.5 * F.cross_entropy(logits, y)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    encoder.eval(), decoder.eval()
    return TrainedCodec(
        codec=codec,
        encoder=encoder,
        decoder=decoder,
        train_seconds=time.perf_counter() - start,
        train_examples=epochs * steps_per_epoch * batch_size,
    )


def frozen_tail(tail: onnx.ModelProto):
    """The split tail as a frozen torch module (for backpropagating the distillation loss)."""
    from splitpack.compiler.onnx_torch import to_torch

    module = to_torch(tail)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module
