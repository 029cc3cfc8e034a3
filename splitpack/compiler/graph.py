"""Graph analysis over ONNX protos: which tensors depend on the input, their shapes, node FLOPs.

Shapes come from running the graph once in ONNX Runtime with every intermediate tensor exposed
as an output. Static shape inference leaves dimensions unknown behind Resize, dynamic Reshape
and custom exporters' patterns; one run at the analysis shape never does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from splitpack.errors import InvalidModelError
from splitpack.runtimes.backends import open_session

__all__ = ["GraphInfo", "analyze_graph", "graph_inputs", "node_flops"]


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs of a graph (older exporters also list initializers as inputs)."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


@dataclass(frozen=True)
class GraphInfo:
    """What the cut search needs to know about a graph, at one concrete input shape.

    Attributes:
        model: the analysed model.
        order: node indices in topological order (as stored; ONNX requires it).
        producer: tensor name -> index of the node that produces it.
        dynamic: names of tensors that depend on a graph input (not constant-foldable).
        shapes: tensor name -> concrete shape at the analysis input (batch 1).
        dtypes: tensor name -> numpy dtype name.
        flops: per-node FLOPs per sample.
        param_bytes: per-node bytes of the initializers it reads.
        initializer_bytes: initializer name -> bytes.
    """

    model: onnx.ModelProto
    producer: dict[str, int]
    dynamic: frozenset[str]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    flops: tuple[int, ...]
    node_initializers: tuple[frozenset[str], ...]
    initializer_bytes: dict[str, int]

    @property
    def input_names(self) -> list[str]:
        return [value.name for value in graph_inputs(self.model)]

    @property
    def output_names(self) -> list[str]:
        return [value.name for value in self.model.graph.output]


def _probe(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]], names: list[str]):
    """Run the model once on zeros with ``names`` exposed as outputs; return name -> array."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {output.name for output in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    session = open_session(probe.SerializeToString(), providers=["CPUExecutionProvider"], optimize=False,
                           source="the model (for analysis)", error=InvalidModelError,
                           remedy="check that the model is valid ONNX (onnx.checker.check_model)")
    feeds = {}
    for value in session.get_inputs():
        dtype = _ORT_TYPES.get(value.type, np.float32)
        feeds[value.name] = np.zeros(input_shapes[value.name], dtype=dtype)
    try:
        arrays = session.run(None, feeds)
    except Exception as exc:
        shapes = ", ".join(f"{k}: {'x'.join(map(str, v))}" for k, v in input_shapes.items())
        raise InvalidModelError(
            f"ONNX Runtime fails to run the model at input shape {shapes}: {exc}. "
            "Pass the shape the model expects with --input-shape."
        ) from exc
    return {value.name: array for value, array in zip(session.get_outputs(), arrays)}


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


def node_flops(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
    """FLOPs of one node per sample: 2×MACs for Conv, ConvTranspose, Gemm and MatMul,
    the output element count for every other op (batch dimension excluded)."""

    def per_sample(shape: tuple[int, ...]) -> int:
        return int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1

    outputs = [shapes[name] for name in node.output if name in shapes]
    if not outputs:
        return 0
    if node.op_type == "Conv" and node.input[1] in shapes:
        weight = shapes[node.input[1]]  # (C_out, C_in/groups, k...)
        return 2 * per_sample(outputs[0]) * int(np.prod(weight[1:], dtype=np.int64))
    if node.op_type == "ConvTranspose" and node.input[0] in shapes and node.input[1] in shapes:
        weight = shapes[node.input[1]]  # (C_in, C_out/groups, k...)
        return 2 * per_sample(shapes[node.input[0]]) * int(np.prod(weight[1:], dtype=np.int64))
    if node.op_type in ("Gemm", "MatMul") and node.input[0] in shapes:
        first = shapes[node.input[0]]
        trans_a = any(a.name == "transA" and a.i for a in node.attribute)
        inner = first[-2] if (node.op_type == "Gemm" and trans_a) else first[-1]
        return 2 * per_sample(outputs[0]) * int(inner)
    return sum(per_sample(shape) for shape in outputs)


def analyze_graph(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> GraphInfo:
    """Analyse ``model`` at one concrete input shape (batch first; analysed at batch 1).

    Args:
        model: a checked ONNX model.
        input_shape: the full shape of the (first) graph input; further inputs must be static.

    Returns:
        A ``GraphInfo`` with shapes, dependence on the input, FLOPs and parameter bytes.
    """
    graph = model.graph
    inputs = graph_inputs(model)
    if not inputs:
        raise InvalidModelError("the model has no graph inputs; nothing to split")
    analysis_shape = (1,) + tuple(input_shape[1:])
    input_shapes = {inputs[0].name: analysis_shape}
    for value in inputs[1:]:
        dims = value.type.tensor_type.shape.dim
        shape = tuple(1 if i == 0 else d.dim_value for i, d in enumerate(dims))
        if any(dim <= 0 for dim in shape):
            raise InvalidModelError(
                f"graph input {value.name!r} has dynamic dimensions other than the batch; "
                "splitpack analyses models with one dynamic-shaped input"
            )
        input_shapes[value.name] = shape

    initializer_bytes = {
        init.name: int(np.prod(init.dims, dtype=np.int64)) * _elem_size(init.data_type)
        for init in graph.initializer
    }
    producer: dict[str, int] = {}
    dynamic: set[str] = set(input_shapes)
    for index, node in enumerate(graph.node):
        for name in node.output:
            if name:
                producer[name] = index
        if any(name in dynamic for name in node.input if name):
            dynamic.update(name for name in node.output if name)

    names = [name for node in graph.node for name in node.output if name]
    arrays = _probe(model, input_shapes, names)
    shapes = {name: tuple(array.shape) for name, array in arrays.items()}
    dtypes = {name: array.dtype.name for name, array in arrays.items()}
    shapes.update(input_shapes)
    for init in graph.initializer:
        shapes[init.name] = tuple(init.dims)
    flops = tuple(node_flops(node, shapes) for node in graph.node)
    node_initializers = tuple(
        frozenset(name for name in node.input if name in initializer_bytes) for node in graph.node
    )
    return GraphInfo(
        model=model,
        producer=producer,
        dynamic=frozenset(dynamic),
        shapes=shapes,
        dtypes=dtypes,
        flops=flops,
        node_initializers=node_initializers,
        initializer_bytes=initializer_bytes,
    )


def _elem_size(data_type: int) -> int:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize
