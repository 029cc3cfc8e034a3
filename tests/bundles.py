"""A small real bundle for the runtime, serving and format tests, built with splitpack's compiler
pieces (its fixtures are registered by ``tests/conftest.py``).

:func:`build_test_bundle` is the one place that makes it, so that it can later be replaced by
a ``splitpack compile`` of a tiny model. The codecs are untrained (the runtimes only need the
artifacts to chain and to be deterministic), and the latencies are plausible numbers chosen so
that the selector's choice moves with the uplink: split variant ``cut_a`` (tiny payload) wins
at low bandwidth, ``cut_b`` (large payload, cheap head) at high bandwidth, ``local`` never
while the edge answers (its head is profiled as slow).

``build_test_bundle(..., coding="entropy", upload=...)`` makes the same bundle with its split
variants entropy-coded (tables calibrated on the codes of extra random inputs) and the edge
variant uploading in a lossy format; payload sizes are then the mean of the real messages.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from splitpack.formats import read_bundle, write_bundle
from splitpack.formats.entropy import calibrate_tables, tables_to_bytes
from splitpack.formats.manifest import SCHEMA_VERSION
from splitpack.formats.variants import normalize_uint8
from splitpack.formats.wire import measure_payload_bytes, message_bytes, round_trip_codes
from splitpack.runtimes.backends import wire_bundle_id

INPUT_SHAPE = (1, 1, 16, 16)
NUM_CLASSES = 10
SAMPLE_COUNT = 8
MEAN, STD = (0.5,), (0.5,)
_PLACEHOLDER_WIRE_ID = "0" * 16  # payload sizes only depend on the id's length
# (cut module, codec, head_ms, tail_ms, accuracy): see the module docstring.
SPLITS = (("relu1", (2, 2, 2), 2.0, 1.0, 89.5), ("relu2", (16, 1, 8), 1.0, 0.5, 89.8))


def tiny_cnn():
    """The seeded torch model of the bundle: (N, 1, 16, 16) -> (N, 10) logits."""
    import torch
    from torch import nn

    class TinyCnn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.relu1 = nn.Conv2d(1, 8, 3, padding=1), nn.ReLU()
            self.conv2, self.relu2 = nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()
            self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, NUM_CLASSES)

        def forward(self, x):
            x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
            return self.fc(torch.flatten(self.pool(x), 1))

    torch.manual_seed(0)
    return TinyCnn().eval()


def run_onnx_per_sample(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """Run a model one sample at a time on CPU, as the runtimes do for single requests."""
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _tensor(name: str, dtype: str, shape) -> dict:
    return {"name": name, "dtype": dtype, "shape": ["batch", *shape]}


def _variant(variant_id: str, kind: str, *, head_ms: float, tail_ms: float, payload_bytes: int,
             accuracy: float, artifacts: dict, result_bytes: int, **split_fields) -> dict:
    fields = {
        "id": variant_id, "kind": kind, "cut": None, "cut_label": None, "codec": None,
        "compression_ratio": 1.0, "payload_bytes": payload_bytes, "accuracy": accuracy,
        "predicted_accuracy": None, "head_output": None, "tail_input": None,
        "quantization": None,
        "artifacts": {"head": None, "head_tflite": None, "tail": None, **artifacts},
        "latency": {"head_ms": head_ms, "tail_ms": tail_ms, "result_bytes": result_bytes,
                    "device_memory_bytes": 100_000},
    }  # fmt: skip
    fields.update(split_fields)
    return fields


def build_test_bundle(tmp_dir: Path, *, coding: str = "bitpack",
                      upload: dict | None = None) -> Path:
    """Build and write the test bundle: local, edge and two split variants, with samples.

    Args:
        tmp_dir: A folder to write into.
        coding: "bitpack" or "entropy", for both split variants.
        upload: The edge variant's upload (``{"format": "jpeg", "quality": 50}``), or None.

    Returns:
        The bundle folder.
    """
    from splitpack.compiler.codec import CodecSpec, codes_shape, compression_ratio, quantization_params
    from splitpack.compiler.codec_modules import build_codec_modules
    from splitpack.compiler.cuts import find_cuts
    from splitpack.compiler.export import export_onnx
    from splitpack.formats.variants import split_variant_id
    from splitpack.compiler.splice import build_variant

    model = export_onnx(tiny_cnn(), INPUT_SHAPE)
    whole = model.SerializeToString()
    cuts = {cut.module_path: cut for cut in find_cuts(model, INPUT_SHAPE)}
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 256, size=(SAMPLE_COUNT, *INPUT_SHAPE[1:]), dtype=np.uint8)
    normalized = normalize_uint8(inputs, _preprocessing())
    result_bytes = lambda vid: message_bytes(  # noqa: E731
        (1, NUM_CLASSES), 32, bundle_id=_PLACEHOLDER_WIRE_ID, variant_id=vid)
    files = {"local/model.onnx": whole}
    expected = {"local": run_onnx_per_sample(whole, normalized),
                "edge": run_onnx_per_sample(whole, normalized)}
    raw_payload = message_bytes(INPUT_SHAPE, 8, bundle_id=_PLACEHOLDER_WIRE_ID, variant_id="edge")
    edge_fields = {}
    if upload is not None:
        sizes = measure_payload_bytes(inputs, bundle_id=_PLACEHOLDER_WIRE_ID, variant_id="edge",
                                      bits=8, compression=upload["format"],
                                      quality=upload.get("quality"))
        raw_payload = round(sizes.mean)
        edge_fields = {"upload": upload, "payload_bytes_p95": math.ceil(sizes.p95)}
    variants = [
        _variant("local", "local", head_ms=100.0, tail_ms=0.0, payload_bytes=0, accuracy=90.0,
                 artifacts={"head": "local/model.onnx"}, result_bytes=0),
        _variant("edge", "edge", head_ms=0.0, tail_ms=5.0, payload_bytes=raw_payload,
                 accuracy=90.0, artifacts={"tail": "local/model.onnx"},
                 result_bytes=result_bytes("edge"), **edge_fields),
    ]
    calibration = normalize_uint8(rng.integers(0, 256, size=(64, *INPUT_SHAPE[1:]), dtype=np.uint8),
                                  _preprocessing())
    for module, (channels, stride, bits), head_ms, tail_ms, accuracy in SPLITS:
        cut, codec = cuts[module], CodecSpec(channels, stride, bits)
        encoder, decoder = build_codec_modules(cut.shape, codec)
        head, tail = build_variant(model, cut, codec, encoder.eval(), decoder.eval())
        vid, shape = split_variant_id(cut.index, codec.name), codes_shape(cut.shape, codec)
        head_bytes, tail_bytes = head.SerializeToString(), tail.SerializeToString()
        files[f"variants/{vid}/head.onnx"], files[f"variants/{vid}/tail.onnx"] = head_bytes, tail_bytes
        codes = run_onnx_per_sample(head_bytes, normalized)
        unpacked = round_trip_codes(codes, bits)
        expected[vid] = run_onnx_per_sample(tail_bytes, unpacked)
        scale, offset = quantization_params(bits)
        quantization = {"bits": bits, "scale": scale, "offset": offset, "codes_shape": list(shape)}
        artifacts = {"head": f"variants/{vid}/head.onnx", "tail": f"variants/{vid}/tail.onnx"}
        sizes = {"payload_bytes": message_bytes((1, *shape), bits, bundle_id=_PLACEHOLDER_WIRE_ID,
                                                variant_id=vid)}
        if coding == "entropy":
            tables = calibrate_tables(run_onnx_per_sample(head_bytes, calibration), bits)
            files[f"variants/{vid}/entropy_tables.npz"] = tables_to_bytes(tables)
            artifacts["entropy_tables"] = f"variants/{vid}/entropy_tables.npz"
            quantization["coding"] = "entropy"
            measured = measure_payload_bytes(codes, bundle_id=_PLACEHOLDER_WIRE_ID, variant_id=vid,
                                             bits=bits, scale=scale, offset=offset,
                                             compression="entropy", tables=tables)
            sizes = {"payload_bytes": round(measured.mean),
                     "payload_bytes_p95": math.ceil(measured.p95)}
        variants.append(_variant(
            vid, "split", head_ms=head_ms, tail_ms=tail_ms, accuracy=accuracy, **sizes,
            artifacts=artifacts,
            result_bytes=result_bytes(vid), cut=cut.name, cut_label=cut.label, codec=codec.name,
            compression_ratio=compression_ratio(cut.shape, codec),
            head_output=_tensor("codes", "uint8", shape), tail_input=_tensor("codes", "uint8", shape),
            quantization=quantization))
    files["samples/inputs.npz"] = _npz(inputs=inputs)
    files["samples/expected.npz"] = _npz(**expected)
    fields = {
        "schema_version": SCHEMA_VERSION, "model_id": "tiny-cnn-test", "created_by": "tests",
        "input": _tensor("input", "float32", INPUT_SHAPE[1:]),
        "output": _tensor("output", "float32", (NUM_CLASSES,)),
        "num_classes": NUM_CLASSES, "preprocessing": {"mean": list(MEAN), "std": list(STD)},
        "baseline_accuracy": 90.0, "variants": variants, "predictor": None,
        "profiles": {"host": "test fixture", "provider": "CPUExecutionProvider",
                     "note": "plausible latencies, not measured"},
        "samples": {"path": "samples/inputs.npz", "count": SAMPLE_COUNT, "input_dtype": "uint8",
                    "expected_outputs": "samples/expected.npz"},
    }  # fmt: skip
    write_bundle(tmp_dir / "bundle", fields, files)
    return tmp_dir / "bundle"


def _preprocessing():
    from splitpack.formats.manifest import Preprocessing

    return Preprocessing(mean=list(MEAN), std=list(STD))


@pytest.fixture(scope="session")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the test bundle (built once per session)."""
    return build_test_bundle(tmp_path_factory.mktemp("runtime-bundle"))


@pytest.fixture(scope="session")
def bundle(bundle_path: Path):
    """The test bundle, read and verified."""
    return read_bundle(bundle_path)


ENTROPY_UPLOAD = {"format": "jpeg", "quality": 50}


@pytest.fixture(scope="session")
def entropy_bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test bundle with entropy-coded split variants and a JPEG (quality 50) edge upload."""
    return build_test_bundle(tmp_path_factory.mktemp("entropy-bundle"), coding="entropy",
                             upload=ENTROPY_UPLOAD)


@pytest.fixture(scope="session")
def entropy_bundle(entropy_bundle_path: Path):
    """The entropy-coded test bundle, read and verified."""
    return read_bundle(entropy_bundle_path)


@pytest.fixture(scope="session")
def split_ids(bundle) -> list[str]:
    """Ids of the split variants: [low-bandwidth choice, high-bandwidth choice]."""
    return [v.id for v in bundle.manifest.variants if v.kind == "split"]


@pytest.fixture(scope="session")
def wire_id(bundle) -> str:
    """The bundle id as the wire carries it."""
    return wire_bundle_id(bundle.manifest)


def follow_uplink(runtime, inputs: np.ndarray, expected: dict, low: str, high: str,
                  high_mbps: float, check) -> None:
    """Drive ``runtime`` (built on a slow shaped link) through every input, where the split
    with the smaller payload (``low``) must win; then put it on a ``high_mbps`` link, where the
    split with the cheaper head (``high``) must take over within 30 requests. ``check(result,
    expected, index)`` compares each answer with the offline outputs. On the fast link the
    edge's upload is also a right answer: which of the two is faster depends on the loads the
    runtime measures on this host (head and tail stretched by them), so either counts."""
    from splitpack.runtimes.netem import ShapedLink, constant_trace

    for index in range(len(inputs)):  # a slow uplink: the tiny payload wins
        result = runtime.infer(inputs[index])
        assert (result.mode, result.fallback) == ("split", False)
        assert result.transfer_ms > 0 and result.edge_ms > 0 and result.head_ms > 0
        check(result, expected, index)
    assert result.variant_id == low
    runtime.link = ShapedLink(constant_trace(high_mbps))
    for step in range(30):  # a fast uplink: once the estimate follows, the cheap head wins
        result = runtime.infer(inputs[step % len(inputs)])
        check(result, expected, step % len(inputs))
        if result.variant_id in (high, "edge"):
            break
    assert result.variant_id in (high, "edge"), runtime.stats


def rewrite_bundle(source: Path, target: Path, replace: dict[str, bytes]) -> Path:
    """A copy of the bundle at ``source`` with some files' contents replaced, its manifest
    re-sealed (hashes and bundle id recomputed): a bundle consistent on disk whose contents
    are wrong, which only the loaders can catch."""
    manifest = read_bundle(source).manifest
    fields = manifest.model_dump(mode="json", exclude={"bundle_id", "files"})
    files = {relpath: replace.get(relpath, source / relpath) for relpath in manifest.files}
    write_bundle(target, fields, files)
    return target
