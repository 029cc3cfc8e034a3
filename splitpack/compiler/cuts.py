"""Find every valid single-tensor cut of an ONNX graph.

A tensor is a valid cut when removing it separates every graph output from every graph input:
every path of data from the input to the output crosses it. Tensors inside a residual, dense or
attention block are bypassed by the block's other branch and so are never cuts; each block's
output is. Initializers and constant subgraphs do not count as paths (a tail may recompute
them). The check is exact (one forward reachability sweep per candidate), not a heuristic over
node names, so it holds for graphs from any exporter.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, replace

import onnx

from splitpack.compiler.graph import GraphInfo, analyze_graph
from splitpack.errors import UnsupportedCutError

__all__ = ["Cut", "find_cuts", "find_cuts_in", "resolve_cut", "module_path_of"]

_FLOAT_DTYPES = {"float32", "float16", "float64"}


@dataclass(frozen=True)
class Cut:
    """A place where the model can be split in two.

    Attributes:
        name: the ONNX tensor name.
        module_path: the torch module that produces it (``layer1.0.relu``), when recoverable.
        label: a unique readable name: the module path, suffixed with the op type where one
            module produces several cuts (the last one, its output, keeps the plain path);
            the tensor name where no module is known.
        index: position among the cuts, input side first.
        shape: per-sample shape (batch excluded), at the analysis input shape.
        dtype: numpy dtype name of the tensor.
        bytes_per_sample: raw bytes of one sample of the tensor.
        head_flops / tail_flops: FLOPs per sample before and after the cut.
        head_param_bytes / tail_param_bytes: bytes of the weights each side reads.
        position: head FLOPs as a fraction of the model's FLOPs.
    """

    name: str
    module_path: str | None
    label: str
    index: int
    shape: tuple[int, ...]
    dtype: str
    bytes_per_sample: int
    head_flops: int
    tail_flops: int
    head_param_bytes: int
    tail_param_bytes: int
    position: float

    def to_dict(self) -> dict:
        record = asdict(self)
        record["shape"] = list(self.shape)
        return record


def module_path_of(node_name: str) -> str | None:
    """Recover the torch module path from a TorchScript-exporter node name.

    ``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1``: each scope is either the full path
    so far (``layer1.0``) or one more attribute (``conv1``); the last part is the op.
    """
    if not node_name.startswith("/"):
        return None
    scopes = node_name.strip("/").split("/")[:-1]
    path = ""
    for scope in scopes:
        if path and scope.startswith(path + "."):
            path = scope
        elif path:
            path = f"{path}.{scope}"
        else:
            path = scope
    return path or None


def _separates(info: GraphInfo, blocked: str) -> bool:
    """True when no graph output is reachable from the inputs without passing ``blocked``."""
    reached = set(info.input_names)
    for node in info.model.graph.node:
        if any(name in reached for name in node.input if name and name != blocked):
            reached.update(name for name in node.output if name and name != blocked)
    return not any(name in reached for name in info.output_names)


def _ancestors(info: GraphInfo, tensor: str) -> set[int]:
    """Indices of the nodes needed to compute ``tensor``."""
    nodes: set[int] = set()
    stack = [tensor]
    while stack:
        index = info.producer.get(stack.pop())
        if index is None or index in nodes:
            continue
        nodes.add(index)
        stack.extend(name for name in info.model.graph.node[index].input if name)
    return nodes


def find_cuts_in(info: GraphInfo) -> list[Cut]:
    """All valid cuts of an analysed graph, input side first."""
    graph = info.model.graph
    outputs = set(info.output_names)
    inputs = set(info.input_names)
    total_flops = sum(info.flops) or 1
    all_nodes = range(len(graph.node))
    cuts: list[Cut] = []
    for node in graph.node:
        for name in node.output:
            if (
                not name
                or name in outputs
                or name in inputs
                or name not in info.dynamic
                or info.dtypes.get(name) not in _FLOAT_DTYPES
                or not _separates(info, name)
            ):
                continue
            head = _ancestors(info, name)
            tail = [i for i in all_nodes if i not in head]
            head_flops = sum(info.flops[i] for i in head)
            head_params = set().union(*(info.node_initializers[i] for i in head))
            tail_params = set().union(*(info.node_initializers[i] for i in tail)) if tail else set()
            shape = tuple(int(d) for d in info.shapes[name][1:])
            itemsize = {"float32": 4, "float16": 2, "float64": 8}[info.dtypes[name]]
            elements = 1
            for dim in shape:
                elements *= dim
            cuts.append(
                Cut(
                    name=name,
                    module_path=module_path_of(node.name),
                    label=f"{module_path_of(node.name)}/{node.op_type}",
                    index=len(cuts),
                    shape=shape,
                    dtype=info.dtypes[name],
                    bytes_per_sample=elements * itemsize,
                    head_flops=int(head_flops),
                    tail_flops=int(sum(info.flops) - head_flops),
                    head_param_bytes=sum(info.initializer_bytes[p] for p in head_params),
                    tail_param_bytes=sum(info.initializer_bytes[p] for p in tail_params),
                    position=head_flops / total_flops,
                )
            )
    return _unique_labels(cuts)


def _unique_labels(cuts: list[Cut]) -> list[Cut]:
    """Label each cut by its module path; where one module yields several cuts, only the last
    (the module's output) keeps the bare path."""
    last_by_module = {cut.module_path: cut.index for cut in cuts if cut.module_path}
    return [
        replace(cut, label=cut.module_path if last_by_module.get(cut.module_path) == cut.index
                else (cut.label if cut.module_path else cut.name))
        for cut in cuts
    ]


def find_cuts(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> list[Cut]:
    """Every valid single-tensor cut of ``model``.

    Args:
        model: a checked ONNX model.
        input_shape: full input shape, batch first, at which shapes, bytes and FLOPs are measured.

    Returns:
        The cuts, input side first; empty when the graph has none (e.g. one node).
    """
    return find_cuts_in(analyze_graph(model, input_shape))


def resolve_cut(cuts: list[Cut], name: str, model: onnx.ModelProto | None = None) -> Cut:
    """The cut named ``name`` (tensor name or torch module path).

    Raises:
        UnsupportedCutError: naming why it is not a cut and the valid cuts near it.
    """
    for cut in cuts:
        if name in (cut.name, cut.label):
            return cut
    if not cuts:
        raise UnsupportedCutError(f"cut {name!r}: this model has no valid single-tensor cut")
    labels = [cut.label for cut in cuts]
    position = None
    if model is not None:
        order = [out for node in model.graph.node for out in node.output]
        by_module = {
            module_path_of(node.name): node.output[0] for node in model.graph.node if module_path_of(node.name)
        }
        tensor = name if name in order else by_module.get(name)
        if tensor is not None:
            position = order.index(tensor)
            cut_positions = [order.index(cut.name) for cut in cuts]
            before = [c.label for c, p in zip(cuts, cut_positions) if p < position][-2:]
            after = [c.label for c, p in zip(cuts, cut_positions) if p > position][:2]
            near = before + after
            raise UnsupportedCutError(
                f"cut {name!r} is not a valid cut: a path from the input to the output bypasses it "
                f"(it is inside a residual, dense or attention block, or a side branch); valid cuts "
                f"near it: {', '.join(near)} (run `splitpack cuts MODEL` for all {len(cuts)})"
            )
    close = difflib.get_close_matches(name, labels + [c.name for c in cuts], n=4, cutoff=0.3)
    shown = close or labels[:6]
    raise UnsupportedCutError(
        f"cut {name!r} is not a tensor or module of this model; valid cuts include: "
        f"{', '.join(shown)} (run `splitpack cuts MODEL` for all {len(cuts)})"
    )
