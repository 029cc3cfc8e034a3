"""The ONNX-to-torch interpreter equals ONNX Runtime on the reference models and foreign graphs."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from splitpack.compiler.export import check_onnx, export_onnx
from splitpack.compiler.onnx_torch import to_torch
from splitpack.errors import UnsupportedCutError
from splitpack.models import REFERENCE_INPUT_SHAPES, REFERENCE_MODELS
from tests import onnx_graphs


def _compare(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    with torch.no_grad():
        got = to_torch(model)(*(torch.from_numpy(x) for x in feeds.values()))
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert tuple(g.shape) == e.shape
        np.testing.assert_allclose(g.numpy(), e, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", sorted(REFERENCE_MODELS))
def test_reference_models(name):
    torch.manual_seed(0)
    model = export_onnx(REFERENCE_MODELS[name](), (1,) + REFERENCE_INPUT_SHAPES[name])
    x = np.random.default_rng(0).normal(size=(3,) + REFERENCE_INPUT_SHAPES[name]).astype(np.float32)
    _compare(model, {"input": x})


@pytest.mark.parametrize("build, shape", [
    (lambda: onnx_graphs.pyramid_classifier(11), (2, 3, 12, 8)),
    (lambda: onnx_graphs.feature_pyramid(13), (2, 3, 8, 8)),
    (lambda: onnx_graphs.shape_flatten_mlp(12), (3, 2, 4, 4)),
])
def test_foreign_graphs(build, shape):
    model = check_onnx(build())
    name = model.graph.input[0].name
    _compare(model, {name: np.random.default_rng(1).normal(size=shape).astype(np.float32)})


def test_gradients_flow_through_a_frozen_graph():
    torch.manual_seed(0)
    module = to_torch(export_onnx(REFERENCE_MODELS["digits_cnn"](), (1, 1, 16, 16)))
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    module(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert not any(p.requires_grad for p in module.parameters())


def test_unsupported_operator_is_named():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4] x) => (float[N, 4] y) { y = Shrink(x) }
    """)
    with pytest.raises(UnsupportedCutError, match=r"ONNX operators Shrink cannot run.*supported: Abs, Add"):
        to_torch(model)


def test_constant_of_shape_reads_its_value_without_a_warning():
    """A ``value`` stored as raw bytes is a read-only array; torch warns on one unless it is copied."""
    value = numpy_helper.from_array(np.array([1.5], np.float32))  # raw_data, as exporters write it
    graph = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["shape"]),
         helper.make_node("ConstantOfShape", ["shape"], ["fill"], value=value),
         helper.make_node("Add", ["x", "fill"], ["y"])],
        "fill", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = check_onnx(helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 13)]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _compare(model, {"x": np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)})
