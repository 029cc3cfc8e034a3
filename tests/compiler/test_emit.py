"""emit's wire figures: entropy tables where they pay, and the edge variant's measured upload."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import onnx.parser
import pytest

from splitpack.compiler import emit
from splitpack.compiler.input_upload import choose_input_upload
from splitpack.compiler.selection import Selection
from splitpack.errors import InvalidConfigError
from splitpack.formats.entropy import load_tables
from splitpack.formats.wire import header_bytes, message_bytes
from splitpack.quiet import forward_messages

# A head that quantizes its input straight to 8-bit codes: codes = clip(round(x * 255)).
QUANTIZE = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    quantize (float[N, 4, 8, 8] x) => (uint8[N, 4, 8, 8] codes) {
        scale = Constant<value = float {255.0}>()
        scaled = Mul(x, scale)
        low = Constant<value = float {0.0}>()
        high = Constant<value = float {255.0}>()
        clipped = Clip(scaled, low, high)
        rounded = Round(clipped)
        codes = Cast<to = 2>(rounded)
    }
""")


@dataclass
class Pixels:
    """The part of a Dataset emit reads: x in [0, 1] that are exactly u8 / 255."""

    x_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def to_uint8(self, x: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def _dataset(sparse: bool, seed: int = 0) -> Pixels:
    rng = np.random.default_rng(seed)
    if sparse:  # ReLU-like: mostly zeros, small values
        codes = np.where(rng.random((300, 4, 8, 8)) < 0.7, 0, rng.integers(0, 20, (300, 4, 8, 8)))
    else:  # every level equally likely: nothing to gain
        codes = rng.integers(0, 256, (300, 4, 8, 8))
    x = (codes / 255.0).astype(np.float32)
    return Pixels(x[:200], x[200:], rng.integers(0, 2, 100))


EIGHT_BITS = SimpleNamespace(bits=8)  # all emit reads of the codec here


def test_entropy_coding_is_kept_where_it_sends_fewer_bytes() -> None:
    dataset, lines = _dataset(sparse=True), []
    codes = emit.entropy_calibration_codes(QUANTIZE, dataset)
    assert codes.dtype == np.uint8 and codes.shape == (200, 4, 8, 8)
    packed = message_bytes((1, 4, 8, 8), 8, bundle_id="0" * 16, variant_id="v")
    with forward_messages(lines.append):  # what it logs, through the splitpack loggers
        fields, coding_ms, tables_file = emit._entropy_fields(
            "v", EIGHT_BITS, QUANTIZE, codes, dataset, packed)
    assert fields["payload_bytes"] < 0.6 * packed and fields["payload_bytes_p95"] < packed
    assert coding_ms["encode_ms"] > 0 and coding_ms["decode_ms"] > 0
    tables = load_tables(tables_file, expect_bits=8, expect_channels=4)
    assert tables.frequencies[:, 0].min() > 0.6 * tables.frequencies.sum(axis=1).max()
    assert "entropy coding" in lines[-1]


def test_bit_packing_is_kept_where_entropy_coding_would_not_pay() -> None:
    dataset, lines = _dataset(sparse=False), []
    packed = message_bytes((1, 4, 8, 8), 8, bundle_id="0" * 16, variant_id="v")
    codes = emit.entropy_calibration_codes(QUANTIZE, dataset)
    with forward_messages(lines.append):  # what it logs, through the splitpack loggers
        fields, coding_ms, tables_file = emit._entropy_fields(
            "v", EIGHT_BITS, QUANTIZE, codes, dataset, packed)
    assert (fields, coding_ms, tables_file) == (
        {"payload_bytes": packed, "payload_bytes_p95": packed}, {}, None)
    assert "keeping bit-packing" in lines[-1]


def test_the_edge_variant_records_its_upload_and_true_bytes() -> None:
    dataset = _dataset(sparse=True)
    pixels = dataset.to_uint8(dataset.x_test)[:, :1]  # one channel: an image upload
    images = Pixels(dataset.x_train[:, :1], dataset.x_test[:, :1], dataset.y_test)
    zlib_fields, zlib_ms = emit._edge_fields(images, (1, 8, 8), 91.0, None)
    assert zlib_fields["upload"] == {"format": "zlib", "quality": None}
    assert zlib_fields["accuracy"] == 91.0 and zlib_ms["encode_ms"] > 0
    header = header_bytes(4, bundle_id="0" * 16, variant_id="edge")
    assert zlib_fields["compression_ratio"] == pytest.approx(
        4 * 64 / (zlib_fields["payload_bytes"] - header))

    choice = choose_input_upload(lambda x: np.zeros((len(x), 2)), pixels, np.zeros(len(pixels), int),
                                 min_accuracy=100.0, formats=("jpeg",), qualities=(20,))
    fields, _ = emit._edge_fields(images, (1, 8, 8), 91.0, choice)
    assert fields["upload"] == {"format": choice.choice.format, "quality": choice.choice.quality}
    assert fields["payload_bytes"] == round(choice.choice.payload_bytes)
    assert fields["accuracy"] == choice.choice.accuracy == 100.0


def test_entropy_for_a_variant_that_was_not_chosen_is_refused() -> None:
    with pytest.raises(InvalidConfigError, match=r"entropy: \['nope'\] are not chosen split variants"):
        emit.emit_bundle(settings=None, out=None, work=None, model=None, cuts={}, dataset=None,
                         baseline=0.0, profile={}, selection=Selection(("a",), {}, {}, ("a",), 0.0, 0.0), predictor_json="",
                         entropy={"nope": np.zeros((1, 2), np.uint8)})
