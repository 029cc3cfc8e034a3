"""Reference models: build, forward, ONNX export parity, digits training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from splitpack.errors import InvalidConfigError, InvalidDatasetError
from splitpack.models import (
    REFERENCE_INPUT_SHAPES,
    REFERENCE_MODELS,
    digits_cnn,
    evaluate_accuracy,
    resnet_small,
    train_classifier,
    vgg_bn_small,
    vit_small,
)
from splitpack.models.resnet import BasicBlock, ZeroPadShortcut

MODEL_NAMES = sorted(REFERENCE_MODELS)
NUM_CLASSES = {"scenes_cnn": 32}  # the rest default to 10
ONNX_TOLERANCE = 1e-4


def _export(model: torch.nn.Module, sample: torch.Tensor, path: Path) -> Path:
    torch.onnx.export(
        model.eval(),
        (sample,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )
    return path


def _random_input(name: str, batch: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *REFERENCE_INPUT_SHAPES[name]), generator=generator)


def test_input_shapes_cover_every_model() -> None:
    assert set(REFERENCE_INPUT_SHAPES) == set(REFERENCE_MODELS)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("batch", [1, 3])
def test_forward_shape(name: str, batch: int) -> None:
    torch.manual_seed(0)
    model = REFERENCE_MODELS[name]()
    assert not model.training, "factories return models in eval mode"
    with torch.no_grad():
        logits = model(_random_input(name, batch))
    assert logits.shape == (batch, NUM_CLASSES.get(name, 10))
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_onnx_export_matches_torch(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = REFERENCE_MODELS[name]()
    # Exported at batch 1, run at batch 1 and 3: the batch axis must stay dynamic.
    path = _export(model, _random_input(name, 1), tmp_path / f"{name}.onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        sample = _random_input(name, batch, seed=batch)
        with torch.no_grad():
            expected = model(sample).numpy()
        (actual,) = session.run(["output"], {"input": sample.numpy()})
        assert actual.shape == expected.shape, f"{name} at batch {batch}"
        assert actual.dtype == np.float32
        np.testing.assert_allclose(
            actual, expected, rtol=0, atol=ONNX_TOLERANCE, err_msg=f"{name} at batch {batch}"
        )


def test_digits_cnn_has_enough_sized_cuts() -> None:
    from splitpack.compiler.cuts import find_cuts
    from splitpack.compiler.export import export_onnx

    cuts = find_cuts(export_onnx(digits_cnn(), (1, 1, 16, 16)), (1, 1, 16, 16))
    stage_outputs = [cut for cut in cuts if cut.label.endswith("relu") or cut.label.endswith("relu2")]
    # Ten stages each end in a ReLU (a residual block's output ReLU is its relu2); the ReLU
    # inside each residual block (relu1) is not a cut.
    assert len(stage_outputs) == 10, [cut.label for cut in stage_outputs]
    assert not any(cut.label.endswith("relu1") for cut in cuts)
    assert all(1024 <= cut.bytes_per_sample <= 16 * 1024 for cut in stage_outputs)


def test_resnet_small_has_both_shortcut_kinds() -> None:
    model = resnet_small()
    shortcuts = [m.shortcut for m in model.modules() if isinstance(m, BasicBlock)]
    assert any(isinstance(s, torch.nn.Sequential) for s in shortcuts), "projection shortcut"
    assert any(isinstance(s, ZeroPadShortcut) for s in shortcuts), "zero-pad shortcut"


def test_vit_small_module_paths_are_readable() -> None:
    module_paths = dict(vit_small().named_modules())
    for path in ("patch_embed.proj", "blocks.0.attn", "blocks.0.attn.qkv", "blocks.1.mlp.fc2"):
        assert path in module_paths
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in module_paths.values())


@pytest.mark.parametrize(
    ("factory", "kwargs", "match"),
    [
        (vit_small, {"image_size": 30, "patch_size": 4}, "patch_size 4 must divide"),
        (vit_small, {"dim": 30, "num_heads": 4}, "divisible by num_heads"),
        (vit_small, {"depth": 0}, "depth must be"),
        (vgg_bn_small, {"image_size": 24}, "divisible by 16"),
        (resnet_small, {"widths": (16, 64, 32)}, "cannot shrink channels"),
        (resnet_small, {"blocks_per_stage": 0}, "blocks_per_stage"),
    ],
)
def test_factories_reject_bad_config(factory, kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidConfigError, match=match):
        factory(**kwargs)


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"epochs": 0}, InvalidConfigError, "epochs must be >= 1"),
        ({"batch_size": 0}, InvalidConfigError, "batch_size must be >= 1"),
        ({"lr": 0.0}, InvalidConfigError, "lr must be > 0"),
        ({"y_train": np.zeros(3, dtype=np.int64)}, InvalidDatasetError, "differ in length"),
    ],
)
def test_train_classifier_rejects_bad_arguments(overrides: dict, error: type, match: str) -> None:
    arguments = {
        "x_train": np.zeros((4, 1, 32, 32), dtype=np.float32),
        "y_train": np.zeros(4, dtype=np.int64),
        "epochs": 1,
        "lr": 1e-3,
        "seed": 0,
        "progress": False,
    }
    arguments.update(overrides)
    with pytest.raises(error, match=match):
        train_classifier(digits_cnn(), **arguments)


@pytest.fixture(scope="module")
def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from splitpack.datasets import load_dataset

    digits = load_dataset("digits")
    return digits.x_train, digits.x_test, digits.y_train, digits.y_test


def test_train_classifier_is_deterministic(digits_split) -> None:
    x_train, _, y_train, _ = digits_split
    states = []
    for _ in range(2):
        torch.manual_seed(0)  # the initial weights are the caller's to seed
        model = train_classifier(
            digits_cnn(), x_train[:96], y_train[:96], epochs=1, lr=1e-3, seed=7, progress=False
        )
        states.append(model.state_dict())
    for key, tensor in states[0].items():
        assert torch.equal(tensor, states[1][key]), key


@pytest.mark.slow
def test_digits_cnn_reaches_95_percent(digits_split) -> None:
    x_train, x_test, y_train, y_test = digits_split
    torch.manual_seed(0)
    model = train_classifier(
        digits_cnn(), x_train, y_train, epochs=4, lr=2e-3, seed=0, progress=False
    )
    accuracy = evaluate_accuracy(model, x_test, y_test)
    assert accuracy >= 95.0, f"digits_cnn test accuracy {accuracy:.2f}% after 4 epochs"
