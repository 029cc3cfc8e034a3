"""Backends: ONNX Runtime and LiteRT sessions over bundle artifacts, and the shared conventions."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest

from splitpack.errors import InvalidBundleError, InvalidConfigError
from splitpack.formats import read_bundle, read_samples, write_bundle
from splitpack.formats.manifest import Preprocessing
from splitpack.formats.variants import denormalize_to_uint8, normalize_uint8
from splitpack.runtimes.backends import (
    RAW_OFFSET, RAW_SCALE, LiteRtBackend, OnnxBackend, expected_wire_input, layout_permutation, load_backend, wire_bundle_id,
)
from tests.bundles import INPUT_SHAPE, MEAN, STD, tiny_cnn

FIXED_BATCH_RELU = """
<ir_version: 8, opset_import: ["" : 17]>
relu (float[1, 3] x) => (float[1, 3] y) { y = Relu(x) }
"""


@pytest.fixture(scope="module")
def samples(bundle):
    inputs, expected = read_samples(bundle)
    return normalize_uint8(inputs, bundle.manifest.preprocessing), expected


def test_onnx_backend_reports_signature_provider_and_matches_offline(bundle, samples) -> None:
    inputs, expected = samples
    backend = load_backend(bundle, "local")
    assert backend.provider == "CPUExecutionProvider"  # no CUDA here; read back from ORT
    assert (backend.input_name, backend.input_dtype, backend.output_dtype) == (
        "input", "float32", "float32")
    assert backend.input_shape[1:] == INPUT_SHAPE[1:] and backend.output_shape[1:] == (10,)
    output = backend.run(inputs)
    assert output.shape == (len(inputs), 10) and output.dtype == np.float32
    np.testing.assert_allclose(output, expected["local"], atol=1e-5)


def test_cuda_sessions_are_asked_for_full_float32(bundle, samples, monkeypatch) -> None:
    """On a GPU, ONNX Runtime's CUDA provider defaults to TensorFloat-32; an H100 run then
    missed the bundle's references by ~1e-3 (benchmarks/README.md). The default providers and
    a plain "CUDAExecutionProvider" both carry use_tf32=0; explicit options are left alone."""
    import onnxruntime as ort

    asked: list = []
    real_session = ort.InferenceSession

    def recording_session(model, options, providers):
        asked.append(providers)
        return real_session(model, options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", recording_session)
    model = bundle.path(bundle.manifest.variants[0].artifacts.head)
    OnnxBackend(model)
    OnnxBackend(model, providers=["CUDAExecutionProvider"])
    OnnxBackend(model, providers=[("CUDAExecutionProvider", {"use_tf32": "1"})])
    full = ("CUDAExecutionProvider", {"use_tf32": "0"})
    assert asked == [[full, "CPUExecutionProvider"], [full],
                     [("CUDAExecutionProvider", {"use_tf32": "1"})]]


def test_onnx_backend_from_path_and_bytes_agree(bundle, samples) -> None:
    inputs, _ = samples
    relpath = bundle.variant("local").artifacts.head
    from_path = OnnxBackend(bundle.path(relpath), threads=1)
    from_bytes = OnnxBackend(bundle.read_bytes(relpath), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(from_path.run(inputs[:2]), from_bytes.run(inputs[:2]))


def test_split_heads_emit_codes_that_their_tails_accept(bundle, split_ids, samples) -> None:
    inputs, expected = samples
    for vid in split_ids:
        head, tail = load_backend(bundle, vid), load_backend(bundle, vid, part="tail")
        codes = np.concatenate([head.run(inputs[i:i + 1]) for i in range(len(inputs))])
        q = bundle.variant(vid).quantization
        assert codes.dtype == np.uint8 and codes.shape[1:] == tuple(q.codes_shape)
        assert int(codes.max()) < 2**q.bits
        assert (head.output_name, head.output_dtype) == (tail.input_name, tail.input_dtype)
        outputs = np.concatenate([tail.run(codes[i:i + 1]) for i in range(len(codes))])
        np.testing.assert_allclose(outputs, expected[vid], atol=1e-5)


def test_a_fixed_batch_model_runs_sample_by_sample() -> None:
    model = onnx.parser.parse_model(FIXED_BATCH_RELU)
    backend = OnnxBackend(model.SerializeToString())
    x = np.array([[-1, 2, -3], [4, -5, 6]], dtype=np.float32)
    np.testing.assert_array_equal(backend.run(x), np.maximum(x, 0))


@pytest.mark.parametrize("x, match", [
    (np.zeros((1, 1, 16, 16), np.float64), r"input 'input': found float64 \(1, 1, 16, 16\)"),
    (np.zeros((1, 16, 16), np.float32), r"found float32 \(1, 16, 16\), expected float32"),
    (np.zeros((1, 1, 16, 15), np.float32), r"found float32 \(1, 1, 16, 15\)"),
    (np.zeros((0, 1, 16, 16), np.float32), r"found float32 \(0, 1, 16, 16\)"),
])  # fmt: skip
def test_onnx_backend_refuses_wrong_inputs(bundle, x: np.ndarray, match: str) -> None:
    with pytest.raises(InvalidConfigError, match=match):
        load_backend(bundle, "local").run(x)


def test_unreadable_or_invalid_models_are_refused(tmp_path) -> None:
    with pytest.raises(InvalidConfigError, match="cannot be read"):
        OnnxBackend(tmp_path / "missing.onnx")
    with pytest.raises(InvalidBundleError, match="ONNX Runtime cannot load it"):
        OnnxBackend(b"not a model")
    with pytest.raises(InvalidConfigError, match="threads: found 0"):
        OnnxBackend(onnx.parser.parse_model(FIXED_BATCH_RELU).SerializeToString(), threads=0)


@pytest.mark.parametrize("variant, kwargs, error, match", [
    ("local", {"part": "tail"}, InvalidBundleError, "variant 'local' \\(local\\) has no tail"),
    ("edge", {"part": "head"}, InvalidBundleError, "variant 'edge' \\(edge\\) has no head"),
    ("local", {"kind": "litert"}, InvalidBundleError, "no LiteRT head"),
    ("local", {"kind": "tensorrt"}, InvalidConfigError, "backend 'tensorrt' is not known"),
    ("local", {"part": "body"}, InvalidConfigError, "part 'body'"),
    ("nope", {}, InvalidBundleError, "no variant 'nope'; valid ids"),
])  # fmt: skip
def test_load_backend_refuses_what_the_bundle_lacks(bundle, variant, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        load_backend(bundle, variant, **kwargs)


def test_edge_variant_loads_its_tail_by_default(bundle) -> None:
    assert load_backend(bundle, "edge").source == "edge/tail (local/model.onnx)"


def test_wire_conventions(bundle, split_ids) -> None:
    manifest = bundle.manifest
    assert wire_bundle_id(manifest) == manifest.bundle_id[:16]
    split = bundle.variant(split_ids[0])
    spec = expected_wire_input(manifest, split)
    assert (spec.dtype, spec.bits, spec.shape) == ("uint8", 2, tuple(split.quantization.codes_shape))
    assert (spec.scale, spec.offset) == (split.quantization.scale, split.quantization.offset)
    raw = expected_wire_input(manifest, bundle.variant("edge"))
    assert (raw.dtype, raw.bits, raw.shape, raw.scale, raw.offset) == (
        "uint8", 8, INPUT_SHAPE[1:], RAW_SCALE, RAW_OFFSET)
    with pytest.raises(InvalidConfigError, match="'local' \\(local\\) sends nothing"):
        expected_wire_input(manifest, bundle.variant("local"))


def test_normalization_round_trips_uint8_pixels() -> None:
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    one = Preprocessing(mean=list(MEAN), std=list(STD))
    values = normalize_uint8(pixels, one)
    assert values.dtype == np.float32
    np.testing.assert_allclose(values, (pixels / 255.0 - 0.5) / 0.5, atol=1e-6)
    assert np.array_equal(denormalize_to_uint8(values, one), pixels)
    rgb = Preprocessing(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    colour = np.random.default_rng(1).integers(0, 256, (2, 3, 4, 4), dtype=np.uint8)
    normalized = normalize_uint8(colour, rgb)
    np.testing.assert_allclose(normalized[:, 2], (colour[:, 2] / 255.0 - 0.406) / 0.225, atol=1e-5)
    assert np.array_equal(denormalize_to_uint8(normalized, rgb), colour)
    assert np.array_equal(normalize_uint8(colour, None), colour.astype(np.float32))
    with pytest.raises(InvalidBundleError, match="3 mean/std values but the input has 1"):
        normalize_uint8(pixels, rgb)


def test_layout_permutation() -> None:
    assert layout_permutation("NCHW", "NHWC") == (0, 2, 3, 1)
    assert layout_permutation("NHWC", "NCHW") == (0, 3, 1, 2)
    assert layout_permutation("NC", "NC") is None
    with pytest.raises(InvalidBundleError, match="not permutations"):
        layout_permutation("NCHW", "NHW")


@pytest.fixture(scope="module")
def tflite_model(tmp_path_factory) -> bytes:
    """The bundle's whole model converted to LiteRT (batch fixed at 1, NCHW as in torch)."""
    litert_torch = pytest.importorskip("litert_torch")
    import torch

    path = tmp_path_factory.mktemp("tflite") / "model.tflite"
    litert_torch.convert(tiny_cnn(), (torch.zeros(INPUT_SHAPE),)).export(str(path))
    return path.read_bytes()


@pytest.mark.slow
def test_litert_backend_matches_onnx_runtime(bundle, samples, tflite_model, tmp_path) -> None:
    inputs, expected = samples
    backend = LiteRtBackend(tflite_model)
    assert backend.input_shape[1:] == INPUT_SHAPE[1:] and backend.provider == "litert"
    np.testing.assert_allclose(backend.run(inputs), expected["local"], atol=1e-4)  # batch of 8
    # The same model as the local variant's LiteRT head of a bundle, loaded by load_backend.
    fields = bundle.manifest.model_dump(mode="json", exclude={"bundle_id", "files"})
    local = next(v for v in fields["variants"] if v["id"] == "local")
    local["artifacts"]["head_tflite"] = "local/model.tflite"
    local["tflite"] = {"input_layout": "NCHW", "output_layout": "NC", "input_name": "x",
                       "output_name": "y"}
    files = {name: bundle.read_bytes(name) for name in bundle.manifest.files}
    write_bundle(tmp_path / "with-tflite", fields, {**files, "local/model.tflite": tflite_model})
    head = load_backend(read_bundle(tmp_path / "with-tflite"), "local", "litert")
    np.testing.assert_allclose(head.run(inputs[:3]), expected["local"][:3], atol=1e-4)


# -- entropy tables and uploads, as a bundle carries them ------------------------------------------

from splitpack.formats.entropy import calibrate_tables, tables_to_bytes  # noqa: E402
from splitpack.runtimes.backends import load_entropy_tables, upload_of  # noqa: E402
from splitpack.runtimes.device import DeviceRuntime  # noqa: E402
from splitpack.runtimes.verify import verify_bundle  # noqa: E402
from splitpack.serving.edge import create_app  # noqa: E402
from tests.bundles import ENTROPY_UPLOAD, rewrite_bundle  # noqa: E402


def test_entropy_variants_load_their_tables_and_the_edge_its_upload(entropy_bundle) -> None:
    manifest = entropy_bundle.manifest
    for variant in manifest.variants:
        tables = load_entropy_tables(entropy_bundle, variant)
        if variant.kind != "split":
            assert tables is None
            continue
        q = variant.quantization
        assert q.coding == "entropy" and tables.bits == q.bits
        assert tables.channels == q.codes_shape[0]
        assert expected_wire_input(manifest, variant).compressions == ("none", "zlib", "entropy")
    edge = entropy_bundle.variant("edge")
    assert upload_of(edge) == (ENTROPY_UPLOAD["format"], ENTROPY_UPLOAD["quality"])
    assert expected_wire_input(manifest, edge).compressions == ("none", "zlib", "png", "jpeg")


def test_a_bundle_without_upload_sends_zlib(bundle) -> None:
    assert upload_of(bundle.variant("edge")) == ("zlib", None)
    with pytest.raises(InvalidConfigError, match="uploads no input"):
        upload_of(bundle.variant("local"))


LOADERS = {
    "edge": lambda bundle: create_app(bundle),
    "device": lambda bundle: DeviceRuntime(bundle, "http://127.0.0.1:9"),
    "verify": lambda bundle: verify_bundle(bundle, tflite=False),
}


def _bad_tables(kind: str, bits: int, channels: int) -> bytes:
    if kind == "corrupted":
        return b"PK\x03\x04 not really a zip"
    if kind == "other bits":
        return tables_to_bytes(calibrate_tables(np.zeros((2, channels, 2, 2), np.uint8), 8 if bits != 8 else 4))
    return tables_to_bytes(calibrate_tables(np.zeros((2, channels + 1, 2, 2), np.uint8), bits))


BAD_BUNDLE_TABLES = [
    ("corrupted", "not a readable .npz"),
    ("other bits", r"made for \d-bit codes of \d+ channels, but the variant sends 2-bit"),
    ("other channels", r"made for 2-bit codes of 3 channels, but the variant sends 2-bit codes of 2"),
]


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("kind, match", BAD_BUNDLE_TABLES, ids=[c[0] for c in BAD_BUNDLE_TABLES])
def test_bad_tables_in_a_bundle_fail_at_load_naming_the_file(entropy_bundle_path, entropy_bundle,
                                                             tmp_path, loader, kind, match) -> None:
    variant = next(v for v in entropy_bundle.manifest.variants if v.kind == "split")
    relpath, q = variant.artifacts.entropy_tables, variant.quantization
    bad = rewrite_bundle(entropy_bundle_path, tmp_path / "bundle",
                         {relpath: _bad_tables(kind, q.bits, q.codes_shape[0])})
    with pytest.raises(InvalidBundleError, match=f"entropy tables {relpath} .*{match}"):
        LOADERS[loader](read_bundle(bad))


def test_missing_or_edited_tables_fail_at_read_naming_the_file(entropy_bundle_path, tmp_path) -> None:
    relpath = next(v.artifacts.entropy_tables for v in read_bundle(entropy_bundle_path).manifest.variants
                   if v.kind == "split")
    edited = rewrite_bundle(entropy_bundle_path, tmp_path / "edited", {})
    (edited / relpath).write_bytes(b"\x00" + (edited / relpath).read_bytes()[1:])
    with pytest.raises(InvalidBundleError, match=f"{relpath}: (size|sha256) mismatch"):
        read_bundle(edited)
    (edited / relpath).unlink()
    with pytest.raises(InvalidBundleError, match=f"{relpath}: missing"):
        read_bundle(edited)


def test_entropy_message_sizes_are_what_encode_request_sends() -> None:
    from splitpack.runtimes.backends import entropy_message_sizes
    from splitpack.formats.wire import encode_payload, message_bytes

    rng = np.random.default_rng(0)
    skewed = np.where(rng.random((40, 3, 4, 4)) < 0.8, 0, rng.integers(0, 16, (40, 3, 4, 4))).astype(np.uint8)
    tables = calibrate_tables(skewed, 4)
    unseen = rng.integers(0, 16, (6, 3, 4, 4)).astype(np.uint8)  # uniform: costs more than bit-packing
    codes = np.concatenate([skewed[:6], unseen])
    coded, sent = entropy_message_sizes(codes, bits=4, tables=tables, variant_id="v")
    packed = message_bytes((1, 3, 4, 4), 4, bundle_id="0" * 16, variant_id="v")
    assert coded.tolist() == [len(encode_payload(codes[i:i + 1], bits=4, compression="entropy", tables=tables,
                                                 bundle_id="0" * 16, variant_id="v")) for i in range(len(codes))]
    assert sent.tolist() == np.minimum(coded, packed).tolist()
    assert (sent[:6] < packed).all() and (coded[6:] > packed).all() and (sent[6:] == packed).all()
