"""Train one compression unit at one cut with the original model frozen, and optionally fine-tune
the tail behind it.

The head's features at the cut are computed once (ONNX Runtime on the split head) and cached,
with the full model's outputs as the teacher. Training then runs only encoder → quantizer
(straight-through) → decoder → tail, where the tail is the split ONNX tail converted to torch by
``compiler.onnx_torch``: this works the same for torch models and for ``.onnx`` files, and
trains against exactly the graph that is emitted.

* Calibrated quantization (``q{B}``) is not trained: its ranges come from the training features.
* A learned unit starts from the calibration (principal components, or the identity) and is
  trained with the tail frozen. Loss = feature reconstruction (MSE ÷ feature variance) +
  distillation on the model's output (KL at temperature 2) + 0.5 × cross-entropy on the labels.
* Tail fine-tuning (``…t``) then trains the decoder and the tail's weights on the fixed codes,
  with distillation + 0.5 × cross-entropy; the head and the encoder do not change.

10 % of the training features are held out: a step's result is kept only when its accuracy on
them (ties: its distillation loss) is better than what it started from, so training never
makes a unit worse than its initialization on data it did not train on.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import onnx

from splitpack.compiler.codec import CodecSpec
from splitpack.compiler.codec_modules import build_codec_modules
from splitpack.compiler.cuts import Cut
from splitpack.compiler.split import split_at
from splitpack.errors import InvalidConfigError, InvalidModelError
from splitpack.runtimes.backends import open_session

__all__ = ["DEFAULT_EPOCHS", "CutFeatures", "TrainedCodec", "compute_cut_features", "train_codec", "run_onnx",
           "frozen_tail"]

DEFAULT_EPOCHS = 6
_TEMPERATURE = 2.0


def run_onnx(model: onnx.ModelProto, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Run a one-input, one-output ONNX model over ``x`` in batches (CPU)."""
    # Spinning worker threads waste the CPU that training (torch) needs on a small machine.
    session = open_session(model.SerializeToString(), providers=["CPUExecutionProvider"], spinning=False,
                           source="a model being trained", error=InvalidModelError,
                           remedy="check that it is valid ONNX")
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
    """A trained unit, the fine-tuned tail weights (None unless the codec trains the tail), and
    what training cost. ``kept`` says which result of each step the held-out check kept."""

    codec: CodecSpec
    encoder: object
    decoder: object
    tail_weights: dict | None
    train_seconds: float
    train_examples: int
    tail_seconds: float = 0.0
    kept: tuple[str, ...] = ()


def _holdout(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): 10 % held out, at least one sample each when possible."""
    order = np.random.default_rng([seed, 7]).permutation(count)
    held = min(max(1, count // 10), count - 1) if count > 1 else 0
    return order[held:], order[:held]


def _distillation(logits, teacher, labels):
    import torch.nn.functional as F

    return (F.kl_div(F.log_softmax(logits / _TEMPERATURE, -1), F.softmax(teacher / _TEMPERATURE, -1),
                     reduction="batchmean") * _TEMPERATURE**2
            + 0.5 * F.cross_entropy(logits, labels))


def _score(run, inputs, teacher, labels, batch_size: int = 512) -> tuple[float, float]:
    """(accuracy, -distillation loss) of ``run`` (inputs -> logits) on the held-out samples."""
    import torch

    if len(inputs) == 0:
        return 0.0, 0.0
    correct, loss = 0, 0.0
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            logits = run(inputs[start:start + batch_size])
            y = labels[start:start + batch_size]
            correct += int((logits.argmax(-1) == y).sum())
            loss += float(_distillation(logits, teacher[start:start + batch_size], y)) * len(y)
    return correct / len(inputs), -loss / len(inputs)


def _optimize(params, batches, loss_of, *, epochs: int, lr: float, description: str, progress: bool) -> int:
    """Adam with a one-cycle schedule over ``batches()`` (a fresh iterator per epoch, of
    ``batches.steps`` batches); returns the number of examples processed."""
    import torch
    from tqdm.auto import tqdm

    optimizer = torch.optim.Adam(params, lr=lr)
    steps_per_epoch = batches.steps
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    examples = 0
    # disable=None: a bar on a terminal, nothing in a log file or CI output
    bar = tqdm(range(epochs), desc=description, disable=None if progress else True, leave=False)
    for _ in bar:
        for batch in batches():
            loss = loss_of(*batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            examples += len(batch[0])
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return examples


def _keep_if_better(modules: tuple, score, fit) -> tuple[tuple, str, int]:
    """Train ``modules`` in place with ``fit()`` (returns examples processed) and keep the result
    only if ``score(modules)`` on the held-out samples is not worse than before.

    Returns:
        ``(modules, "trained" or "initial", examples)``: the trained modules, or copies of them as
        they were before ``fit``; the modules are left in eval mode.
    """
    for module in modules:
        module.eval()
    before = score(modules)
    initial = copy.deepcopy(modules)  # one deepcopy, so modules that share a part still do
    for module in modules:
        module.train()
    examples = fit()
    for module in modules:
        module.eval()
    if score(modules) < before:
        return initial, "initial", examples
    return modules, "trained", examples


def train_codec(
    features: CutFeatures,
    codec: CodecSpec,
    *,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = 64,
    lr: float = 3e-3,
    tail_lr: float = 1e-4,
    seed: int = 0,
    progress: bool = True,
    tail_module=None,
    start_from: "TrainedCodec | None" = None,
) -> TrainedCodec:
    """Calibrate, train and (for ``…t`` codecs) fine-tune the tail at ``features.cut``.

    Args:
        features: cached features from ``compute_cut_features``.
        codec: the unit to build.
        epochs: passes over the training split, for the unit and again for the tail.
        batch_size, lr, tail_lr, seed: optimizer settings; the run is deterministic for a seed.
        progress: show a tqdm progress bar.
        tail_module: the frozen tail as a torch module (converted from ONNX when None; pass it
            to share one conversion between the codecs of a cut). It is never modified.
        start_from: a trained ``learned`` unit with the same projection and bits; a
            ``finetuned`` codec then only fine-tunes the tail behind it (what a grid does to
            measure both methods without training the unit twice).

    Returns:
        The encoder and decoder (eval mode), the tail's fine-tuned weights by initializer name
        (or None), ``train_seconds`` (everything, calibration included), ``tail_seconds``
        (the fine-tuning alone) and ``train_examples`` (examples processed by the optimizers).
    """
    import torch
    import torch.nn.functional as F

    start = time.perf_counter()
    torch.manual_seed(seed)
    generator = np.random.default_rng(seed)
    train_index, held_index = _holdout(len(features.train), seed)
    x_all = torch.from_numpy(features.train)
    teacher_all = torch.from_numpy(features.teacher_train)
    y_all = torch.from_numpy(features.y_train.astype(np.int64))
    held = (x_all[held_index], teacher_all[held_index], y_all[held_index])
    tail = tail_module if tail_module is not None else frozen_tail(features.tail)
    examples, kept = 0, []

    def batches(inputs, rng):
        def iterate():
            order = rng.permutation(train_index)
            for step in range(iterate.steps):
                index = torch.from_numpy(order[step * batch_size:(step + 1) * batch_size])
                yield inputs[index], teacher_all[index], y_all[index]
        iterate.steps = max(1, len(train_index) // batch_size)
        return iterate

    if start_from is not None:
        if start_from.codec.with_method("learned") != codec.with_method("learned"):
            raise InvalidConfigError(f"start_from is {start_from.codec}, not the unit of {codec}; pass the trained "
                                     f"{codec.with_method('learned')} unit, or None to train it first")
        encoder, decoder = start_from.encoder, copy.deepcopy(start_from.decoder)
        examples, kept = start_from.train_examples, list(start_from.kept)
    else:
        encoder, decoder = build_codec_modules(features.cut.shape, codec, features.train[train_index])
        if codec.method != "calibrated":
            params = list({id(p): p for p in [*encoder.parameters(), *decoder.parameters()]}.values())
            variance = float(x_all.var()) + 1e-8

            def unit_loss(x, teacher, y):
                restored = decoder(encoder(x))
                return F.mse_loss(restored, x) / variance + _distillation(tail(restored), teacher, y)

            (encoder, decoder), label, count = _keep_if_better(
                (encoder, decoder), lambda m: _score(lambda x: tail(m[1](m[0](x))), *held),
                lambda: _optimize(params, batches(x_all, generator), unit_loss, epochs=epochs, lr=lr,
                                  description=f"train {features.cut.label} {codec}", progress=progress))
            examples += count
            kept.append(f"unit:{label}")
    encoder.eval(), decoder.eval()
    tail_weights, tail_seconds = None, 0.0
    if codec.trains_tail:
        tail_start = time.perf_counter()
        decoder = copy.deepcopy(decoder)
        trainable = trainable_tail(features.tail)
        with torch.no_grad():
            codes_all = torch.cat([encoder(x_all[i:i + 1024]) for i in range(0, len(x_all), 1024)])
        held_codes = (codes_all[held_index], *held[1:])
        for parameter in decoder.quantizer.parameters():  # the encoder's range: fixed with the head
            parameter.requires_grad_(False)
        params = [p for p in [*decoder.parameters(), *trainable.parameters()] if p.requires_grad]

        def tail_loss(codes, teacher, y):
            return _distillation(trainable(decoder(codes)), teacher, y)

        # its own generator: a grid that resumes (and retrains the unit first) gets the same tail
        (decoder, trainable), label, count = _keep_if_better(
            (decoder, trainable), lambda m: _score(lambda c: m[1](m[0](c)), *held_codes),
            lambda: _optimize(params, batches(codes_all, np.random.default_rng([seed, 1])), tail_loss,
                              epochs=epochs, lr=tail_lr, description=f"tail {features.cut.label} {codec}",
                              progress=progress))
        examples += count
        kept.append(f"tail:{label}")
        tail_weights = trainable.trained_initializers()
        tail_seconds = time.perf_counter() - tail_start
    return TrainedCodec(
        codec=codec, encoder=encoder, decoder=decoder, tail_weights=tail_weights,
        train_seconds=(start_from.train_seconds if start_from is not None else 0.0) + time.perf_counter() - start,
        train_examples=examples, tail_seconds=tail_seconds, kept=tuple(kept),
    )


def frozen_tail(tail: onnx.ModelProto):
    """The split tail as a frozen torch module (for backpropagating the distillation loss)."""
    from splitpack.compiler.onnx_torch import to_torch

    module = to_torch(tail)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def trainable_tail(tail: onnx.ModelProto):
    """The split tail as a torch module whose weights (float initializers) are parameters."""
    from splitpack.compiler.onnx_torch import to_torch

    return to_torch(tail, trainable=True)
