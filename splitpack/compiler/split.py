"""Split an ONNX model at a cut into a head and a tail.

onnx-graphsurgeon isolates each side: the head is the graph with the cut tensor as its only
output, cleaned of everything else; the tail is the graph with the cut tensor detached from its
producer and made the only input, cleaned likewise. (``onnx.utils.extract_model`` was tried
first and pulls head nodes into the tail across skip connections.)
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from splitpack.compiler.cuts import Cut
from splitpack.compiler.graph import graph_inputs
from splitpack.errors import InternalError, UnsupportedCutError

__all__ = ["split_at", "cut_value_info"]


def cut_value_info(model: onnx.ModelProto, cut: Cut) -> list[int | str | None]:
    """The cut tensor's shape as the tail should declare it: the batch symbolic, the other
    dimensions as shape inference left them (symbolic where the model has dynamic sizes)."""
    inferred = {value.name: value for value in list(model.graph.value_info) + list(model.graph.output)}
    dims: list[int | str | None] = ["batch"] + list(cut.shape)
    value = inferred.get(cut.name)
    if value is not None and value.type.tensor_type.HasField("shape"):
        declared = value.type.tensor_type.shape.dim
        if len(declared) == len(dims):
            for i, dim in enumerate(declared[1:], start=1):
                if dim.HasField("dim_value"):
                    dims[i] = dim.dim_value
                else:
                    dims[i] = dim.dim_param or f"{cut.name}_dim{i}"
    return dims


def _batch_name(model: onnx.ModelProto) -> str:
    dim = graph_inputs(model)[0].type.tensor_type.shape.dim
    return dim[0].dim_param if dim and dim[0].HasField("dim_param") else "batch"


def split_at(model: onnx.ModelProto, cut: Cut) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Split ``model`` at ``cut``; the input model is not modified.

    Args:
        model: a checked ONNX model.
        cut: one of ``find_cuts(model, ...)``.

    Returns:
        ``(head, tail)``: the head maps the model's inputs to the cut tensor, the tail maps the
        cut tensor to the model's outputs. Both pass the full ONNX checker and keep the batch
        dynamic; the head's outputs are exactly the tail's inputs.

    Raises:
        UnsupportedCutError: when the tensor does not separate the graph.
    """
    dims = cut_value_info(model, cut)
    dims[0] = _batch_name(model)
    dtype = np.dtype(cut.dtype)

    head_graph = gs.import_onnx(model)
    tensors = head_graph.tensors()
    if cut.name not in tensors:
        raise UnsupportedCutError(f"cut {cut.name!r} is not a tensor of this model; run `splitpack cuts MODEL`")
    head_cut = tensors[cut.name]
    head_cut.dtype, head_cut.shape = dtype, dims
    head_graph.outputs = [head_cut]
    head_graph.cleanup(remove_unused_graph_inputs=False).toposort()

    tail_graph = gs.import_onnx(model)
    original_inputs = {tensor.name for tensor in tail_graph.inputs}
    tail_cut = tail_graph.tensors()[cut.name]
    tail_cut.inputs.clear()
    tail_cut.dtype, tail_cut.shape = dtype, dims
    tail_graph.inputs = [tail_cut]
    tail_graph.cleanup(remove_unused_graph_inputs=True).toposort()
    leaked = sorted(
        name for node in tail_graph.nodes for name in (t.name for t in node.inputs) if name in original_inputs
    )
    if leaked:
        raise UnsupportedCutError(
            f"cut {cut.label!r} does not separate the graph: the tail still reads {', '.join(leaked)}"
        )

    head = _finish(gs.export_onnx(head_graph), model, "head")
    tail = _finish(gs.export_onnx(tail_graph), model, "tail")
    if [o.name for o in head.graph.output] != [i.name for i in graph_inputs(tail)]:
        raise InternalError(f"split at {cut.label!r}: the head's outputs are not the tail's inputs")
    return head, tail


def _finish(part: onnx.ModelProto, original: onnx.ModelProto, role: str) -> onnx.ModelProto:
    """Keep the original's IR version and metadata, drop stale value_info, and check."""
    part.ir_version = original.ir_version
    part.producer_name = "splitpack"
    del part.graph.value_info[:]
    part.graph.name = f"{original.graph.name or 'model'}_{role}"
    try:
        onnx.checker.check_model(part, full_check=True)
    except Exception as exc:
        raise InternalError(f"the {role} produced by split_at fails the ONNX checker: {exc}") from exc
    return part
