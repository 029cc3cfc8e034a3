"""Run an ONNX graph as a torch module, op by op (``to_torch``).

Training a compression unit backpropagates a distillation loss through the frozen tail, and the
TFLite path traces the head through torch; both need the split ONNX graph as torch. The
obvious library, onnx2torch, imports torchvision at import time, and torchvision's wheel does
not load beside the CPU build of torch this project pins (``operator torchvision::nms does not
exist``). This interpreter covers the operators that torch's exporters and common vision
models emit; any other raises ``UnsupportedCutError`` naming it.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from splitpack.errors import UnsupportedCutError

__all__ = ["to_torch", "OnnxModule", "SUPPORTED_OPS"]

_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32, onnx.TensorProto.INT8: torch.int8, onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.BOOL: torch.bool,
}


def _ints(tensor) -> list[int]:
    # element by element (``int`` of a 0-d tensor is an ``.item()`` read), so that a trace
    # records each read of a tensor's values; ``tolist`` would read them unseen
    return [int(v) for v in (tensor.reshape(-1) if isinstance(tensor, torch.Tensor) else tensor)]


def _pads_2d(pads: list[int], spatial: int):
    """ONNX pads (begins then ends) -> symmetric padding for F.conv, or None when asymmetric."""
    begins, ends = pads[:spatial], pads[spatial:]
    return tuple(begins) if begins == ends else None


def _torch_pad(pads: list[int]) -> list[int]:
    rank = len(pads) // 2
    result = []
    for dim in reversed(range(rank)):
        result += [pads[dim], pads[dim + rank]]
    return result


def _conv(x, w, b=None, *, kernel_shape=None, strides=None, pads=None, dilations=None, group=1, auto_pad="NOTSET"):
    spatial = w.dim() - 2
    strides, dilations = strides or [1] * spatial, dilations or [1] * spatial
    pads = pads or [0] * (2 * spatial)
    if auto_pad not in ("NOTSET", "VALID"):
        raise UnsupportedCutError(f"ONNX Conv with auto_pad={auto_pad} is not supported; re-export with explicit pads")
    padding = _pads_2d(pads, spatial)
    if padding is None:
        x, padding = F.pad(x, _torch_pad([0, 0] + pads[:spatial] + [0, 0] + pads[spatial:])[: 2 * spatial]), 0
    function = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    return function(x, w, b, stride=strides, padding=padding, dilation=dilations, groups=group)


def _conv_transpose(x, w, b=None, *, kernel_shape=None, strides=None, pads=None, dilations=None, group=1,
                    output_padding=None, auto_pad="NOTSET"):
    spatial = w.dim() - 2
    pads = pads or [0] * (2 * spatial)
    padding = _pads_2d(pads, spatial)
    if padding is None or auto_pad not in ("NOTSET", "VALID"):
        raise UnsupportedCutError("ONNX ConvTranspose with asymmetric or automatic pads is not supported")
    function = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[spatial - 1]
    return function(x, w, b, stride=strides or 1, padding=padding, output_padding=output_padding or 0,
                    groups=group, dilation=dilations or 1)


def _pool(kind):
    def run(x, *, kernel_shape, strides=None, pads=None, ceil_mode=0, count_include_pad=0, dilations=None,
            auto_pad="NOTSET", storage_order=0):
        spatial = len(kernel_shape)
        pads = pads or [0] * (2 * spatial)
        padding = _pads_2d(pads, spatial)
        if padding is None or auto_pad not in ("NOTSET", "VALID"):
            raise UnsupportedCutError(f"ONNX {kind} with asymmetric or automatic pads is not supported")
        if kind == "MaxPool":
            function = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[spatial - 1]
            return function(x, kernel_shape, strides or kernel_shape, padding, dilations or 1, bool(ceil_mode))
        function = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[spatial - 1]
        return function(x, kernel_shape, strides or kernel_shape, padding, bool(ceil_mode), bool(count_include_pad))
    return run


def _gather(x, indices, *, axis=0):
    axis = axis % x.dim()
    index = indices.long()
    index = torch.where(index < 0, index + x.shape[axis], index)
    picked = torch.index_select(x, axis, index.reshape(-1))
    return picked.reshape(tuple(x.shape[:axis]) + tuple(index.shape) + tuple(x.shape[axis + 1:]))


def _reshape(x, shape, *, allowzero=0):
    target = _ints(shape)
    if not allowzero:
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return x.reshape(target)


def _slice(x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    reversed_axes = []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis, size = axis % x.dim(), x.shape[axis]
        start, end = start + size if start < 0 else start, end + size if end < 0 else end
        if step > 0:
            index[axis] = slice(max(0, min(size, start)), max(0, min(size, end)), step)
        else:  # ONNX clamps start to [0, size-1] and end to [-1, size-1]; torch has no negative steps
            picked = list(range(max(0, min(size - 1, start)), max(-1, min(size - 1, end)), step))
            reversed_axes.append((axis, picked))
    x = x[tuple(index)]
    for axis, picked in reversed_axes:
        x = torch.index_select(x, axis, torch.tensor(picked, dtype=torch.long))
    return x


def _resize(x, roi=None, scales=None, sizes=None, *, mode="nearest", coordinate_transformation_mode="half_pixel",
            nearest_mode="round_prefer_floor", cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0,
            antialias=0, axes=None, keep_aspect_ratio_policy="stretch"):
    if sizes is not None and sizes.numel():
        size = _ints(sizes)[2:]
    else:
        factors = [float(v) for v in scales.tolist()][2:]
        size = [int(math.floor(d * f)) for d, f in zip(x.shape[2:], factors)]
    if mode == "nearest":
        integer = all(out % d == 0 for out, d in zip(size, x.shape[2:]))
        if coordinate_transformation_mode == "asymmetric" and nearest_mode == "floor" or integer:
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode="nearest-exact")
    if mode == "linear" and coordinate_transformation_mode in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        return F.interpolate(x, size=size, mode=("linear", "bilinear", "trilinear")[len(size) - 1],
                             align_corners=coordinate_transformation_mode == "align_corners")
    raise UnsupportedCutError(f"ONNX Resize mode={mode} with {coordinate_transformation_mode} is not supported")


def _axes(axes_input, attrs_axes):
    return _ints(axes_input) if axes_input is not None else (attrs_axes or [])


def _reduce(function):
    def run(x, axes=None, *, keepdims=1, noop_with_empty_axes=0, **attrs):
        dims = _axes(axes, attrs.get("axes"))
        if not dims:
            return x if noop_with_empty_axes else function(x, dim=tuple(range(x.dim())), keepdim=bool(keepdims))
        return function(x, dim=tuple(dims), keepdim=bool(keepdims))
    return run


def _binary(function):
    def run(a, b):
        return function(a, b)
    return run


def _div(a, b):
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def _clip(x, low=None, high=None, *, min=None, max=None):  # noqa: A002 - ONNX attribute names
    low = low if low is not None else min
    high = high if high is not None else max
    return torch.clamp(x, low, high)


def _gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    out = alpha * (a.t() if transA else a) @ (b.t() if transB else b)
    return out + beta * c if c is not None else out


def _unsqueeze(x, axes=None, **attrs):
    dims = sorted(d % (x.dim() + len(_axes(axes, attrs.get("axes")))) for d in _axes(axes, attrs.get("axes")))
    for dim in dims:
        x = x.unsqueeze(dim)
    return x


def _squeeze(x, axes=None, **attrs):
    dims = _axes(axes, attrs.get("axes"))
    return x.squeeze() if not dims else x.squeeze(tuple(d % x.dim() for d in dims))


def _softmax(opset):
    def run(x, *, axis=-1 if opset >= 13 else 1):
        if opset >= 13:
            return torch.softmax(x, axis)
        flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
        return torch.softmax(flat, -1).reshape(x.shape)
    return run


def _pad(x, pads, value=None, axes=None, *, mode="constant"):
    pads = _ints(pads)
    if axes is not None:
        raise UnsupportedCutError("ONNX Pad with axes is not supported")
    fill = float(value) if value is not None and value.numel() else 0.0
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode]
    if torch_mode == "constant":
        return F.pad(x, _torch_pad(pads), mode="constant", value=fill)
    return F.pad(x, _torch_pad(pads)[: 2 * (x.dim() - 2)], mode=torch_mode)


def _layer_norm(x, scale, bias=None, *, axis=-1, epsilon=1e-5, stash_type=1):
    return F.layer_norm(x, tuple(x.shape[axis % x.dim():]), scale, bias, epsilon)


def _batch_norm(x, scale, bias, mean, var, *, epsilon=1e-5, momentum=0.9, training_mode=0):
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, epsilon)


def _shape(x, *, start=0, end=None):
    return torch.tensor(list(x.shape)[start:end], dtype=torch.int64)


def _expand(x, shape):
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape))))


def _constant_of_shape(shape, *, value=None):
    # to_array may view the proto's bytes read-only; torch.from_numpy warns on such an array
    fill = numpy_helper.to_array(value).copy() if value is not None else np.zeros(1, np.float32)
    return torch.full(_ints(shape), fill.reshape(-1)[0].item(), dtype=torch.from_numpy(fill).dtype)


def _flatten(x, *, axis=1):
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)


def _ops(opset: int) -> dict:
    return {
        "Conv": _conv, "ConvTranspose": _conv_transpose, "MaxPool": _pool("MaxPool"),
        "AveragePool": _pool("AveragePool"),
        "GlobalAveragePool": lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
        "GlobalMaxPool": lambda x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True),
        "BatchNormalization": _batch_norm, "LayerNormalization": _layer_norm,
        "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf, "Exp": torch.exp,
        "Log": torch.log, "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs, "Round": torch.round,
        "Floor": torch.floor, "Ceil": torch.ceil, "Reciprocal": torch.reciprocal,
        "LeakyRelu": lambda x, *, alpha=0.01: F.leaky_relu(x, alpha),
        "HardSigmoid": lambda x, *, alpha=0.2, beta=0.5: torch.clamp(alpha * x + beta, 0, 1),
        "Gelu": lambda x, *, approximate="none": F.gelu(x, approximate=approximate),
        "Clip": _clip, "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul),
        "Div": _div, "Pow": _binary(torch.pow), "Equal": _binary(torch.eq), "Where": torch.where,
        "Max": lambda *xs: xs[0] if len(xs) == 1 else torch.stack(torch.broadcast_tensors(*xs)).amax(0),
        "Min": lambda *xs: xs[0] if len(xs) == 1 else torch.stack(torch.broadcast_tensors(*xs)).amin(0),
        "MatMul": torch.matmul, "Gemm": _gemm, "Flatten": _flatten, "Reshape": _reshape,
        "Transpose": lambda x, *, perm=None: x.permute(perm if perm is not None else list(reversed(range(x.dim())))),
        "Concat": lambda *xs, axis: torch.cat(xs, axis), "Gather": _gather, "Slice": _slice,
        "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Shape": _shape, "Expand": _expand,
        "Tile": lambda x, repeats: x.repeat(_ints(repeats)),
        "ConstantOfShape": _constant_of_shape, "Identity": lambda x: x, "Dropout": lambda x, *rest, **attrs: x,
        "Cast": lambda x, *, to, saturate=1: x.to(_DTYPES[to]), "Softmax": _softmax(opset), "Pad": _pad,
        "Resize": _resize, "ReduceMean": _reduce(torch.mean), "ReduceSum": _reduce(torch.sum),
        "ReduceMax": _reduce(torch.amax),
    }


SUPPORTED_OPS = tuple(sorted(set(_ops(17)) | {"Constant"}))


class OnnxModule(nn.Module):
    """An ONNX graph executed node by node with torch operations.

    Initializers are buffers; with ``trainable=True`` the floating-point ones (weights, biases,
    norm scales — not BatchNormalization's running statistics) are parameters instead, and
    :meth:`trained_initializers` returns their current values by initializer name.
    """

    def __init__(self, model: onnx.ModelProto, trainable: bool = False):
        super().__init__()
        graph = model.graph
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
        self._ops = _ops(opset)
        unknown = sorted({n.op_type for n in graph.node if n.op_type not in self._ops and n.op_type != "Constant"
                          or n.domain not in ("", "ai.onnx")})
        if unknown:
            raise UnsupportedCutError(
                f"ONNX operators {', '.join(unknown)} cannot run in splitpack's torch interpreter (used to train "
                f"compression units and convert heads); supported: {', '.join(SUPPORTED_OPS)}"
            )
        self._names: dict[str, str] = {}
        self._trainable: dict[str, str] = {}
        statistics = {name for node in graph.node if node.op_type == "BatchNormalization" for name in node.input[3:5]}
        for index, init in enumerate(graph.initializer):
            key = f"c{index}"
            value = torch.from_numpy(numpy_helper.to_array(init).copy())
            if trainable and value.is_floating_point() and value.numel() > 1 and init.name not in statistics:
                self.register_parameter(key, nn.Parameter(value))
                self._trainable[init.name] = key
            else:
                self.register_buffer(key, value, persistent=False)
            self._names[init.name] = key
        self._nodes = []
        for node in graph.node:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Constant":
                value = attrs.get("value")
                array = numpy_helper.to_array(value) if value is not None else np.array(
                    attrs.get("value_float", attrs.get("value_int", attrs.get("value_floats", attrs.get("value_ints")))))
                key = f"k{len(self._names)}"
                self.register_buffer(key, torch.from_numpy(np.array(array)), persistent=False)
                self._names[node.output[0]] = key
                continue
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
            self._nodes.append((node.op_type, list(node.input), list(node.output), attrs))
        initializers = {init.name for init in graph.initializer}
        self._inputs = [v.name for v in graph.input if v.name not in initializers]
        self._outputs = [v.name for v in graph.output]

    def trained_initializers(self) -> dict[str, np.ndarray]:
        """Current values of the trainable initializers, by ONNX initializer name."""
        return {name: getattr(self, key).detach().numpy().copy() for name, key in self._trainable.items()}

    def forward(self, *inputs: torch.Tensor):
        values: dict[str, torch.Tensor] = {name: getattr(self, key) for name, key in self._names.items()}
        values.update(zip(self._inputs, inputs))
        for op_type, names, outputs, attrs in self._nodes:
            args = [values[name] if name else None for name in names]
            while args and args[-1] is None:
                args.pop()
            result = self._ops[op_type](*args, **attrs)
            for name, value in zip(outputs, result if isinstance(result, tuple) else (result,)):
                values[name] = value
        results = tuple(values[name] for name in self._outputs)
        return results[0] if len(results) == 1 else results


def to_torch(model: onnx.ModelProto, trainable: bool = False) -> OnnxModule:
    """The ONNX ``model`` as a torch module in eval mode (see the module docstring); with
    ``trainable`` its floating-point weights are parameters (:class:`OnnxModule`)."""
    return OnnxModule(model, trainable).eval()
