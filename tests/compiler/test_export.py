"""Loading model specs and exporting them; the bad-input table."""

from __future__ import annotations

import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from splitpack.compiler.export import load_model, parse_input_shape
from splitpack.errors import InvalidConfigError, InvalidModelError
from tests import onnx_graphs

MODEL_FILE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

    def tiny():
        return Tiny()

    def not_a_module():
        return 3

    def broken():
        raise RuntimeError("factory exploded")

    class Unexportable(nn.Module):
        def forward(self, x):
            return torch.linalg.eigvals(x.reshape(x.shape[0], 4, 4)).real

    def unexportable():
        return Unexportable()
    """
)


@pytest.fixture()
def model_file(tmp_path):
    path = tmp_path / "user_model.py"
    path.write_text(MODEL_FILE)
    return path


def test_file_factory_with_weights_exports_and_matches(model_file, tmp_path):
    torch.manual_seed(0)
    reference = load_model(f"{model_file}:tiny", input_shape=(1, 1, 8, 8)).torch_module
    weights = tmp_path / "w.pt"
    torch.save(reference.state_dict(), weights)
    loaded = load_model(f"{model_file}:tiny", weights=weights, input_shape=(1, 1, 8, 8))
    x = np.random.default_rng(0).normal(size=(3, 1, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(loaded.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x})[0]
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    batch = loaded.onnx_model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch"
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in loaded.onnx_model.graph.initializer)


def test_onnx_spec_fills_dynamic_batch(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(onnx_graphs.shape_flatten_mlp(13), path)
    assert load_model(str(path)).input_shape == (1, 2, 4, 4)


@pytest.mark.parametrize("text, shape", [("1x3x224x224", (1, 3, 224, 224)), ("2x16", (2, 16)), (" 1 x 1 x 32 x 32 ", (1, 1, 32, 32))])
def test_parse_input_shape(text, shape):
    assert parse_input_shape(text) == shape


def _bad_onnx(tmp_path):
    model = onnx_graphs.two_input_model()
    model.graph.node[1].input[1] = "undefined_tensor"
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    return str(path)


def _wrong_weights(tmp_path):
    path = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(4, 1, 3, 3), "head.weight": torch.zeros(3, 4)}, path)
    return str(path)


def _dynamic_onnx(tmp_path):
    path = tmp_path / "dyn.onnx"
    onnx.save(onnx_graphs.pyramid_classifier(13), path)
    return str(path)


@pytest.mark.parametrize(
    "make_args, error, message",
    [
        (lambda d, f: dict(spec=str(d / "missing.onnx")), InvalidModelError, r"missing.onnx' does not exist"),
        (lambda d, f: dict(spec=f"{d}/missing.py:tiny", input_shape=(1, 1, 8, 8)), InvalidModelError, r"missing.py' does not exist"),
        (lambda d, f: dict(spec=f"{f}:nope", input_shape=(1, 1, 8, 8)), InvalidModelError, r"factory 'nope' not found.*tiny"),
        (lambda d, f: dict(spec="no_such_package.models:tiny", input_shape=(1, 1, 8, 8)), InvalidModelError, r"module 'no_such_package.models'.*cannot be imported"),
        (lambda d, f: dict(spec=f"{f}:not_a_module", input_shape=(1, 1, 8, 8)), InvalidModelError, r"returned int, not a torch.nn.Module"),
        (lambda d, f: dict(spec=f"{f}:broken", input_shape=(1, 1, 8, 8)), InvalidModelError, r"raised RuntimeError: factory exploded"),
        (lambda d, f: dict(spec=f"{f}:tiny", weights=_wrong_weights(d), input_shape=(1, 1, 8, 8)), InvalidModelError,
         r"do not fit the model: missing keys: conv.bias, fc.bias, fc.weight; unexpected keys: head.weight"),
        (lambda d, f: dict(spec=f"{f}:tiny", weights=str(d / "none.pt"), input_shape=(1, 1, 8, 8)), InvalidModelError, r"weights file .* does not exist"),
        (lambda d, f: dict(spec=f"{f}:unexportable", input_shape=(1, 16)), InvalidModelError, r"failed to export to ONNX: .*linalg_eigvals"),
        (lambda d, f: dict(spec=f"{f}:tiny", input_shape=(1, 3, 8)), InvalidModelError, r"fails on an input of shape 1x3x8.*--input-shape"),
        (lambda d, f: dict(spec=f"{f}:tiny"), InvalidConfigError, r"needs an input shape; pass --input-shape"),
        (lambda d, f: dict(spec=_bad_onnx(d)), InvalidModelError, r"fails the ONNX checker"),
        (lambda d, f: dict(spec=_dynamic_onnx(d)), InvalidModelError, r"dynamic input dimensions.*pass --input-shape"),
        (lambda d, f: dict(spec=_dynamic_onnx(d), input_shape=(1, 1, 8, 8)), InvalidConfigError, r"does not fit"),
        (lambda d, f: dict(spec=_dynamic_onnx(d), weights="w.pt"), InvalidModelError, r"--weights is for torch models"),
        (lambda d, f: dict(spec="just-a-name"), InvalidModelError, r"malformed; expected path/to/file.py:factory"),
    ],
)
def test_bad_model_specs(tmp_path, model_file, make_args, error, message):
    kwargs = make_args(tmp_path, model_file)
    spec = kwargs.pop("spec")
    with pytest.raises(error, match=message):
        load_model(spec, **kwargs)


@pytest.mark.parametrize("text", ["1x3xfoo", "", "224", "1x0x3", "1,3,224"])
def test_bad_input_shapes(text):
    with pytest.raises(InvalidConfigError, match="input shape"):
        parse_input_shape(text)
