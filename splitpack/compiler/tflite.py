"""Convert a head to a float32 LiteRT (``.tflite``) flatbuffer, run it, and check it.

Path: ONNX head → constants and shapes folded (ONNX Runtime) → torch (``compiler.onnx_torch``) →
aten graph (``make_fx``) → LiteRT (``litert_torch.convert``). No TensorFlow. The flatbuffer
has a fixed batch of 1 (``run_tflite`` loops over samples) and keeps torch's axis order:
litert-torch adds no layout transposes at the interface, so a conv head takes NCHW input
like its ONNX original. The layout is read back from the interpreter and recorded.

``run_tflite`` is what a device runs: it imports only numpy and ``ai_edge_litert``. torch,
The torch interpreter and litert-torch are imported inside ``export_tflite`` only.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from splitpack.errors import InvalidModelError, SplitpackError
from splitpack.quiet import capture_native_stderr
from splitpack.runtimes.backends import open_session

__all__ = ["TfliteArtifact", "TfliteCheck", "TfliteConversionError", "export_tflite", "run_tflite",
           "compare_tflite"]

_REMEDY = "build without the LiteRT head (`--no-tflite`); the ONNX head is unaffected"
# Axis orders by rank. splitpack's rank-3 tensors are tokens (N, T, D); channels-last only
# exists for feature maps.
_SAME_ORDER = {1: "N", 2: "NC", 3: "NTD", 4: "NCHW", 5: "NCDHW"}
_CHANNELS_LAST = {4: "NHWC", 5: "NDHWC"}
# Float outputs count as mismatched beyond this tolerance (absolute, and relative to |value|).
_FLOAT_TOLERANCE = 1e-4
_RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
               "Multinomial", "Bernoulli"}


class TfliteConversionError(SplitpackError):
    """A valid head could not be converted to LiteRT: a converter limitation, not a user error."""


@dataclass(frozen=True)
class TfliteArtifact:
    """A LiteRT head and the interface its interpreter reports.

    Shapes include the batch axis (always 1). Dtypes are numpy names (``"float32"``,
    ``"uint8"``). Layouts name the axis order the flatbuffer expects: ``"NCHW"`` (the ONNX
    order, which litert-torch keeps), ``"NHWC"``, or ``"NC"`` / ``"NTD"`` for other ranks.
    """

    data: bytes
    input_name: str
    output_name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    input_dtype: str
    output_dtype: str
    input_layout: str
    output_layout: str


@dataclass(frozen=True)
class TfliteCheck:
    """How far the LiteRT head's outputs are from ONNX Runtime's on the same inputs.

    ``max_abs_diff`` is in output units (codes for uint8 heads). ``mismatch_fraction`` is the
    fraction of output elements that differ: at all for integer outputs, by more than 1e-4
    (absolute, plus 1e-4 relative) for float outputs.
    """

    max_abs_diff: float
    mismatch_fraction: float


def export_tflite(head: onnx.ModelProto, sample_input: np.ndarray) -> TfliteArtifact:
    """Convert a one-input, one-output ONNX head to a float32 LiteRT flatbuffer with batch 1.

    Args:
        head: the checked ONNX head (not modified).
        sample_input: at least one input sample, batch axis first; the first sample fixes
            the flatbuffer's input shape.

    Returns:
        The flatbuffer and the input/output names, shapes, dtypes and layouts its interpreter
        reports.

    Raises:
        InvalidModelError: ``sample_input`` is empty or the head does not run on it.
        TfliteConversionError: the head has several inputs or outputs, a converter fails on
            it, or the result's interface disagrees with the head's.
    """
    from splitpack.compiler.train import run_onnx

    initializers = {init.name for init in head.graph.initializer}
    inputs = [value.name for value in head.graph.input if value.name not in initializers]
    outputs = [value.name for value in head.graph.output]
    if len(inputs) != 1 or len(outputs) != 1:
        raise TfliteConversionError(f"only one-input, one-output heads convert to LiteRT; this "
                                    f"head has inputs {inputs} and outputs {outputs}; {_REMEDY}")
    sample_input = np.asarray(sample_input, dtype=np.float32)
    if sample_input.ndim < 2 or len(sample_input) == 0:
        raise InvalidModelError(f"sample_input must hold at least one sample with a batch axis "
                                f"first; got shape {sample_input.shape}")
    sample = np.ascontiguousarray(sample_input[:1])
    try:
        expected = run_onnx(head, sample)
    except Exception as exc:  # ONNX Runtime raises its own, unrelated exception types
        raise InvalidModelError(f"the head (input {inputs[0]!r}) does not run on a sample of "
                                f"shape {sample.shape}: {exc}") from exc

    data = _convert(head, inputs[0], sample)
    interpreter = _interpreter(data)
    input_details = interpreter.get_input_details()[0]
    output_details = interpreter.get_output_details()[0]
    return TfliteArtifact(
        data=data,
        input_name=input_details["name"],
        output_name=output_details["name"],
        input_shape=tuple(int(d) for d in input_details["shape"]),
        output_shape=tuple(int(d) for d in output_details["shape"]),
        input_dtype=np.dtype(input_details["dtype"]).name,
        output_dtype=np.dtype(output_details["dtype"]).name,
        input_layout=_layout(sample.shape, input_details["shape"], "input"),
        output_layout=_layout(expected.shape, output_details["shape"], "output"),
    )


def run_tflite(data: bytes, x: np.ndarray) -> np.ndarray:
    """Run a LiteRT flatbuffer over a batch, sample by sample when its batch is fixed.

    Args:
        data: the ``.tflite`` flatbuffer (``TfliteArtifact.data``).
        x: inputs with a batch axis first, in the layout the flatbuffer expects.

    Returns:
        The outputs of all samples, stacked along the batch axis, in the flatbuffer's dtype.

    Raises:
        InvalidModelError: a sample's shape differs from the flatbuffer's input shape.
    """
    x = np.asarray(x)
    interpreter = _interpreter(data)
    input_details = interpreter.get_input_details()[0]
    output_index = interpreter.get_output_details()[0]["index"]
    expected = tuple(int(d) for d in input_details["shape"][1:])
    if x.ndim == 0 or tuple(x.shape[1:]) != expected:
        raise InvalidModelError(f"the LiteRT head takes samples of shape {expected} "
                                f"({input_details['name']!r}); got a batch of shape {x.shape}")
    x = np.asarray(x, dtype=input_details["dtype"])
    step = len(x) if input_details["shape_signature"][0] == -1 else 1  # litert-torch: fixed 1
    results = []
    for start in range(0, len(x), step):
        batch = np.ascontiguousarray(x[start:start + step])
        if step != 1:
            interpreter.resize_tensor_input(input_details["index"], batch.shape)
            interpreter.allocate_tensors()
        interpreter.set_tensor(input_details["index"], batch)
        interpreter.invoke()
        results.append(interpreter.get_tensor(output_index).copy())
    return np.concatenate(results)


def compare_tflite(head: onnx.ModelProto, artifact: TfliteArtifact, x: np.ndarray) -> TfliteCheck:
    """Run the ONNX head (ONNX Runtime) and its LiteRT conversion on ``x`` and compare.

    Integer outputs (uint8 codes) are compared as integers: a value that lands within float
    round-off of a rounding boundary can round to the neighbouring code under a different op
    order, so a correct conversion may show a difference of 1 in a small fraction of codes.

    Args:
        head: the ONNX head the artifact was converted from.
        artifact: its LiteRT conversion.
        x: inputs with a batch axis first (float32, ONNX layout).

    Returns:
        The largest absolute difference and the fraction of mismatched output elements.

    Raises:
        TfliteConversionError: the outputs differ in shape or dtype.
    """
    from splitpack.compiler.train import run_onnx

    x = np.asarray(x, dtype=np.float32)
    expected = run_onnx(head, x)
    actual = _from_layout(run_tflite(artifact.data, _to_layout(x, artifact.input_layout)),
                          artifact.output_layout)
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        raise TfliteConversionError(f"the LiteRT head returns {actual.dtype}{list(actual.shape)} but "
                                    f"the ONNX head returns {expected.dtype}{list(expected.shape)}; "
                                    f"{_REMEDY}")
    if expected.size == 0:
        return TfliteCheck(max_abs_diff=0.0, mismatch_fraction=0.0)
    if np.issubdtype(expected.dtype, np.integer):
        diff = np.abs(expected.astype(np.int64) - actual.astype(np.int64)).astype(np.float64)
        mismatched = diff != 0
    else:
        expected64, actual64 = expected.astype(np.float64), actual.astype(np.float64)
        diff = np.abs(expected64 - actual64)
        diff = np.where(np.isnan(expected64) & np.isnan(actual64), 0.0, np.nan_to_num(diff, nan=np.inf))
        mismatched = diff > _FLOAT_TOLERANCE * (1.0 + np.abs(np.nan_to_num(expected64)))
    return TfliteCheck(max_abs_diff=float(diff.max()), mismatch_fraction=float(mismatched.mean()))


def _convert(head: onnx.ModelProto, input_name: str, sample: np.ndarray) -> bytes:
    """ONNX → torch → LiteRT flatbuffer bytes; converter failures become TfliteConversionError."""
    import torch

    with capture_native_stderr():  # torchao and the MLIR converter log from C++ when loaded
        import litert_torch

    from splitpack.compiler.onnx_torch import to_torch

    # The converters raise whatever their internals raise (KeyError, NotImplementedError,
    # torch.export and MLIR errors...): any of them means "this head is not convertible".
    stage = "fold the head's constants (ONNX Runtime)"
    try:
        frozen = _fold_static_subgraphs(head, input_name, sample)
        stage = "convert the head to torch"
        module = _specialize_constants(to_torch(frozen), sample)
        stage = "convert the head to LiteRT (litert-torch)"
        # a progress tree on stdout; absl's "I0000 ... flatbuffer_export.cc" lines on fd 2
        with contextlib.redirect_stdout(io.StringIO()), capture_native_stderr(), torch.no_grad():
            return litert_torch.convert(module, (torch.from_numpy(sample),)).model_content()
    except TfliteConversionError:
        raise
    except Exception as exc:
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else "(no message)"
        raise TfliteConversionError(f"could not {stage}: {type(exc).__name__}: {reason}; "
                                    f"{_REMEDY}") from exc


def _fold_static_subgraphs(head: onnx.ModelProto, input_name: str, sample: np.ndarray) -> onnx.ModelProto:
    """Replace everything computable from constants and the (fixed) input shape by initializers.

    With a fixed input shape, ``Shape`` outputs and what derives from them (the Shape →
    Gather → Concat → Reshape chains of tracing exporters), ``Constant`` nodes and
    ``Identity`` copies of initializers (the TorchScript exporter's deduplicated weights) are
    constants. Folding keeps shape arithmetic out of the traced graph: torch.export cannot
    trace arithmetic on shape tensors, so they are evaluated once, with ONNX Runtime.
    """
    graph_outputs = {value.name for value in head.graph.output}
    static = {init.name for init in head.graph.initializer}
    folded: set[int] = set()
    for index, node in enumerate(head.graph.node):
        has_subgraph = any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                           for attr in node.attribute)
        if has_subgraph or node.op_type in _RANDOM_OPS or graph_outputs & set(node.output):
            continue
        if node.op_type in ("Shape", "Size") or all(name in static for name in node.input if name):
            static.update(node.output)
            folded.add(index)
    if not folded:
        return head
    kept = [node for index, node in enumerate(head.graph.node) if index not in folded]
    # Initializers that old exporters also list as graph inputs must stay, or they become inputs.
    used = {name for node in kept for name in node.input} | {value.name for value in head.graph.input}
    computed = [name for index in sorted(folded) for name in head.graph.node[index].output
                if name in used]

    probe = onnx.ModelProto()
    probe.CopyFrom(head)
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in computed)
    session = open_session(probe.SerializeToString(), providers=["CPUExecutionProvider"],
                           source="the head (for its folded constants)", error=InvalidModelError,
                           remedy="check that the head is valid ONNX")
    values = session.run(computed, {input_name: sample}) if computed else []

    model = onnx.ModelProto()
    model.CopyFrom(head)
    del model.graph.node[:], model.graph.initializer[:]
    model.graph.node.extend(kept)
    model.graph.initializer.extend(init for init in head.graph.initializer if init.name in used)
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(value), name)
                                   for name, value in zip(computed, values))
    onnx.checker.check_model(model)
    return model


def _specialize_constants(module, sample: np.ndarray):
    """Re-trace the interpreted head as an aten graph in which constant operands are Python values.

    The interpreter passes a Reshape's shape, a Slice's bounds, a Pad's pads... as tensors and reads
    them inside ``forward`` (``torch.any(shape == 0)``, ``.tolist()``), which torch.export
    rejects as data-dependent. ``make_fx`` in real mode runs the module once on ``sample`` and
    lets those reads happen in Python. A read of the *input's* values would be frozen the same
    way: it is refused when the graph shows it (an ``.item()`` downstream of the input), and
    the traced graph is checked against the module on a second input for reads it does not show.
    """
    import torch
    from torch.fx.experimental.proxy_tensor import make_fx

    read = torch.ops.aten._local_scalar_dense.default
    with torch.no_grad():
        traced = make_fx(module, tracing_mode="real", _error_on_data_dependent_ops=False)(
            torch.from_numpy(sample))
    from_input: set = set()
    for node in traced.graph.nodes:
        if node.op == "placeholder" or any(arg in from_input for arg in node.all_input_nodes):
            from_input.add(node)
    same = not any(node.target is read for node in from_input)
    # The reads stay in the graph as unused ``.item()`` nodes (and the ops feeding them),
    # which the converter would try to lower.
    for node in reversed(traced.graph.nodes):
        if node.op == "call_function" and node.target is read and not node.users:
            traced.graph.erase_node(node)
    traced.graph.eliminate_dead_code()
    traced.recompile()
    other = torch.from_numpy(np.random.default_rng(0).normal(size=sample.shape).astype(np.float32))
    try:
        with torch.no_grad():
            expected, actual = module(other), traced(other)
        same = same and actual.shape == expected.shape and torch.allclose(
            actual.double(), expected.double(), rtol=1e-4, atol=1e-4)
    except Exception:  # e.g. a shape frozen from the sample's values does not fit `other`
        same = False
    if not same:
        raise TfliteConversionError(f"the head's computation depends on its input's values in a "
                                    f"way a static LiteRT graph cannot express; {_REMEDY}")
    return traced.eval()


def _interpreter(data: bytes):
    from ai_edge_litert.interpreter import Interpreter

    with capture_native_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        interpreter = Interpreter(model_content=data)
        interpreter.allocate_tensors()
    return interpreter


def _layout(onnx_shape: tuple[int, ...], tflite_shape, which: str) -> str:
    """Name the flatbuffer's axis order by matching its shape against the ONNX head's."""
    onnx_shape = tuple(int(d) for d in onnx_shape)
    tflite_shape = tuple(int(d) for d in tflite_shape)
    rank = len(onnx_shape)
    if tflite_shape == onnx_shape and rank in _SAME_ORDER:
        return _SAME_ORDER[rank]
    if rank in _CHANNELS_LAST and tflite_shape == (onnx_shape[0], *onnx_shape[2:], onnx_shape[1]):
        return _CHANNELS_LAST[rank]
    raise TfliteConversionError(f"the LiteRT head's {which} has shape {list(tflite_shape)}, which is "
                                f"not the ONNX head's {list(onnx_shape)} in any known layout; {_REMEDY}")


def _to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """ONNX (channels-first) order → ``layout``."""
    return np.moveaxis(x, 1, -1) if layout in _CHANNELS_LAST.values() else x


def _from_layout(y: np.ndarray, layout: str) -> np.ndarray:
    """``layout`` → ONNX (channels-first) order."""
    return np.moveaxis(y, -1, 1) if layout in _CHANNELS_LAST.values() else y
