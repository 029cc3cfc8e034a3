"""ONNX graphs built by the tests themselves, in the style of other exporters (onnx.helper,
old opsets, dynamic height and width, multi-branch tops), not by splitpack's exporter."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _weight(name: str, shape: tuple[int, ...], seed: int) -> onnx.TensorProto:
    values = np.random.default_rng(seed).normal(0, 0.3, size=shape).astype(np.float32)
    return numpy_helper.from_array(values, name)


def _conv(name: str, x: str, c_in: int, c_out: int, k: int, stride: int, seed: int, inits: list):
    inits += [_weight(f"{name}.w", (c_out, c_in, k, k), seed), _weight(f"{name}.b", (c_out,), seed + 1)]
    pad = k // 2
    return helper.make_node(
        "Conv", [x, f"{name}.w", f"{name}.b"], [name], name=name,
        kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4,
    )


def pyramid_classifier(opset: int = 11) -> onnx.ModelProto:
    """Conv trunk with a top-down branch: Resize of a deeper map, Concat with a shallower one.

    Input ``image`` is (N, 3, H, W) with H and W dynamic (multiples of 4). Cuts: the trunk up to
    ``relu1``, the ``concat`` join and everything after it. Not cuts: ``conv2``, ``relu2`` and
    ``up`` (the Concat's other input bypasses them).
    """
    inits: list = []
    nodes = [
        _conv("conv1", "image", 3, 4, 3, 1, 1, inits),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        _conv("conv2", "relu1", 4, 8, 3, 2, 3, inits),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
    ]
    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "up.scales"))
    if opset >= 13:
        nodes.append(helper.make_node("Resize", ["relu2", "", "up.scales"], ["up"], name="up", mode="nearest"))
    else:
        inits.append(numpy_helper.from_array(np.array([], np.float32), "up.roi"))
        nodes.append(helper.make_node("Resize", ["relu2", "up.roi", "up.scales"], ["up"], name="up", mode="nearest"))
    nodes += [
        helper.make_node("Concat", ["relu1", "up"], ["concat"], name="concat", axis=1),
        _conv("fuse", "concat", 12, 4, 1, 1, 5, inits),
        helper.make_node("Relu", ["fuse"], ["fuse_relu"], name="fuse_relu"),
        helper.make_node("GlobalAveragePool", ["fuse_relu"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flat", axis=1),
    ]
    inits += [_weight("fc.w", (5, 4), 7), _weight("fc.b", (5,), 8)]
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes, "pyramid_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)


def feature_pyramid(opset: int = 13) -> onnx.ModelProto:
    """A two-output feature pyramid (detector neck style): outputs ``p_fine`` and ``p_coarse``.

    Only the stem (``conv1``, ``relu1``) is a cut: both outputs hang off later branches.
    """
    inits: list = []
    nodes = [
        _conv("conv1", "image", 3, 4, 3, 1, 11, inits),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        _conv("conv2", "relu1", 4, 8, 3, 2, 13, inits),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
        _conv("coarse", "relu2", 8, 4, 1, 1, 15, inits),
    ]
    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "up.scales"))
    nodes += [
        helper.make_node("Resize", ["coarse", "", "up.scales"], ["up"], name="up", mode="nearest"),
        helper.make_node("Add", ["up", "relu1"], ["merged"], name="merged"),
        _conv("p_fine", "merged", 4, 4, 3, 1, 17, inits),
        helper.make_node("Identity", ["coarse"], ["p_coarse"], name="p_coarse"),
    ]
    graph = helper.make_graph(
        nodes, "feature_pyramid",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [
            helper.make_tensor_value_info("p_fine", TensorProto.FLOAT, ["N", 4, "H", "W"]),
            helper.make_tensor_value_info("p_coarse", TensorProto.FLOAT, ["N", 4, "H2", "W2"]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)


def shape_flatten_mlp(opset: int = 12) -> onnx.ModelProto:
    """Old-exporter flatten: Shape -> Gather -> Unsqueeze -> Concat -> Reshape, then MLP."""
    text = f"""
    <ir_version: 7, opset_import: ["" : {opset}]>
    shape_flatten (float[N, 2, 4, 4] x) => (float[N, 3] y) <int64[1] minus_one = {{-1}}, int64 zero = {{0}}>
    {{
        r = Relu (x)
        s = Shape (r)
        n = Gather <axis = 0> (s, zero)
        n1 = Unsqueeze <axes = [0]> (n)
        new_shape = Concat <axis = 0> (n1, minus_one)
        flat = Reshape (r, new_shape)
        h = MatMul (flat, w1)
        hb = Add (h, b1)
        ha = Tanh (hb)
        y = MatMul (ha, w2)
    }}
    """
    if opset >= 13:
        text = text.replace("n1 = Unsqueeze <axes = [0]> (n)", "n1 = Unsqueeze (n, zero_axes)").replace(
            "int64 zero = {0}>", "int64 zero = {0}, int64[1] zero_axes = {0}>"
        )
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend([_weight("w1", (32, 6), 3), _weight("b1", (6,), 4), _weight("w2", (6, 3), 5)])
    return model


def two_input_model() -> onnx.ModelProto:
    """Two inputs joined by an Add: cuts exist only after the join."""
    text = """
    <ir_version: 7, opset_import: ["" : 13]>
    two_inputs (float[N, 4] a, float[N, 4] b) => (float[N, 4] y)
    {
        ra = Relu (a)
        s = Add (ra, b)
        t = Tanh (s)
        y = Sigmoid (t)
    }
    """
    return onnx.parser.parse_model(text)
