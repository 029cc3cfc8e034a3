"""LiteRT heads: convert small torch-exported heads, run them in the LiteRT interpreter and compare
with ONNX Runtime. ai_edge_litert and litert_torch are imported unconditionally: CI installs them,
so a missing one fails these tests instead of skipping them."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import warnings

import ai_edge_litert.interpreter  # noqa: F401  (fail, not skip, when LiteRT is missing)
import litert_torch
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from splitpack.compiler.tflite import (
    TfliteConversionError,
    compare_tflite,
    export_tflite,
    run_tflite,
)
from splitpack.compiler.train import run_onnx
from splitpack.errors import InvalidModelError
from tests import onnx_graphs

INPUT_SHAPE = (3, 16, 16)
FLOAT_ATOL = 1e-4
# Codes: ONNX Runtime and LiteRT evaluate conv → clamp → (z + 1) / scale in different float op
# orders (and LiteRT may fold the division into a multiplication), so a value within an ulp of a
# .5 rounding boundary can round to the neighbouring code. That moves a code by exactly 1, rarely.
CODE_MAX_DIFF = 1
CODE_MISMATCH_FRACTION = 0.01


class Classifier(nn.Module):
    """The ``local`` variant's head: the whole model, float logits (N, classes)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, stride=2)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


class QuantizerHead(nn.Module):
    """conv → clamp(-1, 1) → round((z + 1) / scale) → uint8, like splitpack's encoder."""

    def __init__(self, bits: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, stride=2)
        self.encoder = nn.Conv2d(8, 4, 1)
        self.scale = 2.0 / (2**bits - 1)

    def forward(self, x):
        z = torch.clamp(self.encoder(torch.relu(self.conv(x))), -1.0, 1.0)
        return torch.round((z + 1.0) / self.scale).to(torch.uint8)


class ResidualHead(nn.Module):
    """stem → basic residual block (conv-bn-relu-conv-bn + skip) → relu; float features.

    Both norms share their statistics, so the folded conv biases are equal and the TorchScript
    exporter stores one initializer and an ``Identity`` copy.
    """

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        mean, var = torch.empty(8).uniform_(-0.5, 0.5), torch.empty(8).uniform_(0.5, 2.0)
        for bn in (self.bn1, self.bn2):
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)

    def forward(self, x):
        stem = torch.relu(self.stem(x))
        y = torch.relu(self.bn1(self.conv1(stem)))
        return torch.relu(self.bn2(self.conv2(y)) + stem)


def _export_onnx(module: nn.Module, output_name: str) -> onnx.ModelProto:
    module = module.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (torch.randn(2, *INPUT_SHAPE),), buffer, dynamo=False,
                          opset_version=17, input_names=["input"], output_names=[output_name],
                          dynamic_axes={"input": {0: "batch"}, output_name: {0: "batch"}})
    model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model)
    return model


def _build(name: str) -> onnx.ModelProto:
    torch.manual_seed(1)
    if name == "classifier":
        return _export_onnx(Classifier(), "logits")
    if name == "quantizer":
        return _export_onnx(QuantizerHead(bits=8), "codes")
    if name == "residual":
        return _export_onnx(ResidualHead(), "features")
    if name == "pyramid":  # onnx.helper-built, opset 11, Resize + Concat branches
        return onnx_graphs.pyramid_classifier(opset=11)
    return onnx_graphs.shape_flatten_mlp(opset=12)  # Shape → Gather → Concat → Reshape


# name → (input shape per sample, output shape per sample, output dtype, output layout,
#         an op type the ONNX head must contain: the construct this case covers)
HEADS = {
    "classifier": (INPUT_SHAPE, (5,), "float32", "NC", "Gemm"),
    "quantizer": (INPUT_SHAPE, (4, 8, 8), "uint8", "NCHW", "Cast"),
    "residual": (INPUT_SHAPE, (8, 16, 16), "float32", "NCHW", "Identity"),
    "pyramid": (INPUT_SHAPE, (5,), "float32", "NC", "Resize"),
    "shape_flatten": ((2, 4, 4), (3,), "float32", "NC", "Shape"),
}


@pytest.fixture(scope="module")
def converted():
    """Each head, converted once: name → (onnx head, artifact)."""
    rng = np.random.default_rng(0)
    result = {}
    for name, (input_shape, *_) in HEADS.items():
        head = _build(name)
        result[name] = (head, export_tflite(head, rng.normal(size=(2, *input_shape)).astype(np.float32)))
    return result


def _inputs(name: str) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(8, *HEADS[name][0])).astype(np.float32)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_artifact_records_interface(converted, name):
    head, artifact = converted[name]
    input_shape, output_shape, output_dtype, output_layout, covered_op = HEADS[name]
    assert covered_op in {node.op_type for node in head.graph.node}
    assert artifact.input_shape == (1, *input_shape)
    assert artifact.input_dtype == "float32"
    # litert-torch keeps torch's channels-first interface (no NHWC transposes at the boundary).
    assert artifact.input_layout == "NCHW"
    assert artifact.output_shape == (1, *output_shape)
    assert artifact.output_dtype == output_dtype
    assert artifact.output_layout == output_layout
    assert artifact.input_name and artifact.output_name
    assert artifact.data[4:8] == b"TFL3"  # the flatbuffer's file identifier


@pytest.mark.parametrize("name", sorted(HEADS))
def test_tflite_matches_onnx_runtime(converted, name):
    head, artifact = converted[name]
    _, output_shape, output_dtype, _, _ = HEADS[name]
    inputs = _inputs(name)
    expected = run_onnx(head, inputs)
    actual = run_tflite(artifact.data, inputs)
    assert actual.shape == expected.shape == (len(inputs), *output_shape)
    assert actual.dtype == expected.dtype == np.dtype(output_dtype)

    check = compare_tflite(head, artifact, inputs)
    if output_dtype == "uint8":
        assert check.max_abs_diff <= CODE_MAX_DIFF
        assert check.mismatch_fraction <= CODE_MISMATCH_FRACTION
        assert len(np.unique(actual)) > 10  # the codes use the range, so the check means something
    else:
        np.testing.assert_allclose(actual, expected, rtol=0, atol=FLOAT_ATOL)
        assert check.max_abs_diff <= FLOAT_ATOL
        assert check.mismatch_fraction == 0.0


def test_compare_reports_code_differences(converted):
    head, artifact = converted["quantizer"]
    check = compare_tflite(_with_constant_output_offset(head, 1.0), artifact, _inputs("quantizer"))
    assert check.max_abs_diff >= 1
    assert check.mismatch_fraction > 0.5


def _with_constant_output_offset(head: onnx.ModelProto, offset: float) -> onnx.ModelProto:
    """The same head with ``offset`` added before the final Round (codes move by ``offset``)."""
    model = onnx.ModelProto()
    model.CopyFrom(head)
    round_node = next(node for node in model.graph.node if node.op_type == "Round")
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(offset, np.float32), "offset"))
    shifted = onnx.helper.make_node("Add", [round_node.input[0], "offset"], ["shifted"])
    round_node.input[0] = "shifted"
    model.graph.node.insert(list(model.graph.node).index(round_node), shifted)
    onnx.checker.check_model(model)
    return model


UNSUPPORTED_OP = onnx.parser.parse_model(
    """
    <ir_version: 8, opset_import: ["" : 17]>
    shrink (float[N, 4] input) => (float[N, 4] output) {
        output = Shrink<lambd: float = 0.5>(input)
    }
    """
)


# Tile whose repeat count is computed from the input's values: no static graph computes it.
DATA_DEPENDENT_SHAPE = onnx.parser.parse_model(
    """
    <ir_version: 8, opset_import: ["" : 17]>
    tile_by_value (float[N, 2] input) => (float[N, M] output)
        <float one = {1.0}, int64[1] axis0 = {0}, int64[1] ones = {1}>
    {
        top = ReduceMax<keepdims = 0>(input)
        magnitude = Abs(top)
        rounded = Ceil(magnitude)
        times = Max(rounded, one)
        count = Cast<to = 7>(times)
        counts = Unsqueeze(count, axis0)
        repeats = Concat<axis = 0>(ones, counts)
        output = Tile(input, repeats)
    }
    """
)


@pytest.mark.parametrize(
    ("head", "sample", "error", "match"),
    [
        (UNSUPPORTED_OP, np.zeros((1, 4), np.float32), TfliteConversionError,
         r"could not convert the head to torch.*Shrink.*--no-tflite"),
        (DATA_DEPENDENT_SHAPE, np.full((1, 2), 0.5, np.float32), TfliteConversionError,
         r"depends on its input's values.*--no-tflite"),
        (onnx_graphs.two_input_model(), np.zeros((1, 4), np.float32), TfliteConversionError,
         r"one-input, one-output.*\['a', 'b'\].*--no-tflite"),
        (onnx_graphs.feature_pyramid(), np.zeros((1, 3, 8, 8), np.float32), TfliteConversionError,
         r"one-input, one-output.*\['p_fine', 'p_coarse'\]"),
        (UNSUPPORTED_OP, np.zeros((0, 4), np.float32), InvalidModelError, r"at least one sample"),
        (UNSUPPORTED_OP, np.zeros(4, np.float32), InvalidModelError, r"batch axis first"),
        (UNSUPPORTED_OP, np.zeros((1, 5), np.float32), InvalidModelError, r"does not run on a sample"),
    ],
)
def test_export_rejects(head, sample, error, match):
    with pytest.raises(error, match=match):
        export_tflite(head, sample)


def test_run_tflite_rejects_wrong_sample_shape(converted):
    _, artifact = converted["residual"]
    with pytest.raises(InvalidModelError, match=r"samples of shape \(3, 16, 16\).*\(2, 3, 8, 8\)"):
        run_tflite(artifact.data, np.zeros((2, 3, 8, 8), np.float32))


def test_run_tflite_runs_a_dynamic_batch_at_once():
    """Flatbuffers from elsewhere may have a dynamic batch: one resized call, same results."""
    module = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    data = litert_torch.convert(module, (torch.randn(2, *INPUT_SHAPE),),
                                dynamic_shapes=({0: batch},)).model_content()
    inputs = _inputs("residual")
    with torch.no_grad():
        expected = module(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(run_tflite(data, inputs), expected, rtol=0, atol=FLOAT_ATOL)


def test_conversion_and_interpreter_write_nothing_to_stderr(capfd):
    """absl's "I0000 ... flatbuffer_export.cc" lines and LiteRT's delegate line are captured."""
    sample = _inputs("classifier")
    capfd.readouterr()
    artifact = export_tflite(_build("classifier"), sample)
    run_tflite(artifact.data, sample)
    assert capfd.readouterr().err == ""


def test_device_side_needs_no_torch(converted, tmp_path):
    """Importing the module and running a head (what a device does) loads no torch."""
    _, artifact = converted["quantizer"]
    (tmp_path / "head.tflite").write_bytes(artifact.data)
    np.save(tmp_path / "x.npy", _inputs("quantizer"))
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import splitpack.compiler.tflite as tflite
        assert "torch" not in sys.modules, "import loaded torch"
        codes = tflite.run_tflite(open({str(tmp_path / "head.tflite")!r}, "rb").read(),
                                  np.load({str(tmp_path / "x.npy")!r}))
        assert codes.shape == (8, 4, 8, 8) and codes.dtype == np.uint8, (codes.shape, codes.dtype)
        heavy = sorted(m for m in ("torch", "litert_torch") if m in sys.modules)
        assert not heavy, heavy
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
