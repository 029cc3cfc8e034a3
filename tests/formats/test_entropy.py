"""Entropy coding of codes: bit-exact round trips, calibration, bad streams and bad table files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitpack.errors import InvalidBundleError, InvalidConfigError, WireFormatError
from splitpack.formats.entropy import (
    EntropyTables, calibrate_tables, channel_axis, decode_codes, encode_codes, load_tables,
    max_encoded_bytes, save_tables, tables_to_bytes,
)  # fmt: skip
from splitpack.formats.wire import pack_codes

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAPES = st.one_of(
    st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 5), st.integers(1, 5)),
    st.tuples(st.integers(1, 3), st.integers(1, 7), st.integers(1, 9)),
    st.tuples(st.integers(1, 3), st.integers(1, 40)),
)


def relu_codes(rng: np.random.Generator, shape: tuple[int, ...], bits: int) -> np.ndarray:
    """Codes like those of a ReLU feature map: about half zeros, a decaying tail."""
    values = np.maximum(rng.standard_normal(shape) - 0.2, 0.0)
    return np.clip(np.rint(values / 3.0 * ((1 << bits) - 1)), 0, (1 << bits) - 1).astype(np.uint8)


@SETTINGS
@given(shape=SHAPES, bits=st.sampled_from([1, 2, 4, 6, 8]), seed=st.integers(0, 2**32 - 1),
       skew=st.floats(0.0, 12.0))
def test_decode_of_encode_is_bit_exact(shape, bits, seed, skew):
    """Random tables (some very skewed: symbols that calibration almost never saw) and random
    codes, including those rare symbols."""
    rng = np.random.default_rng(seed)
    channels = shape[channel_axis(len(shape))]
    weights = np.exp(skew * rng.random((channels, 1 << bits)))
    frequencies = np.maximum(1, np.rint(weights / weights.max(axis=1, keepdims=True) * 2**16))
    tables = EntropyTables(bits, frequencies.astype(np.uint32))
    codes = rng.integers(0, 1 << bits, size=shape).astype(np.uint8)
    stream = encode_codes(codes, tables)
    assert len(stream) <= max_encoded_bytes(codes.size) and len(stream) % 4 == 0
    decoded = decode_codes(stream, shape, tables)
    assert decoded.dtype == np.uint8 and decoded.shape == shape and decoded.flags.writeable
    np.testing.assert_array_equal(decoded, codes)


@SETTINGS
@given(shape=SHAPES, bits=st.sampled_from([1, 2, 4, 6, 8]), seed=st.integers(0, 2**32 - 1))
def test_calibrated_tables_code_unseen_symbols(shape, bits, seed):
    rng = np.random.default_rng(seed)
    training = np.zeros((5, *shape[1:]), dtype=np.uint8)  # calibration saw only zeros
    tables = calibrate_tables(training, bits)
    assert tables.frequencies.min() >= 1 and tables.frequencies.dtype == np.uint32
    codes = rng.integers(0, 1 << bits, size=shape).astype(np.uint8)
    np.testing.assert_array_equal(decode_codes(encode_codes(codes, tables), shape, tables), codes)


def test_calibration_follows_each_channel_and_beats_bit_packing():
    rng = np.random.default_rng(0)
    training = relu_codes(rng, (64, 16, 8, 8), 8)
    training[:, 3] = 7  # one channel is constant
    tables = calibrate_tables(training, 8)
    assert tables.channels == 16 and tables.frequencies.shape == (16, 256)
    assert tables.frequencies[3].argmax() == 7 and tables.frequencies[3, 7] > 0.9 * 2**16
    sample = relu_codes(rng, (1, 16, 8, 8), 8)
    sample[:, 3] = 7
    assert len(encode_codes(sample, tables)) < 0.8 * len(pack_codes(sample, 8))


@pytest.mark.parametrize(("shape", "axis"), [((2, 5), 1), ((2, 7, 5), 2), ((2, 5, 3, 3), 1)])
def test_channels_are_axis_1_of_feature_maps_and_the_last_axis_of_tokens(shape, axis):
    assert channel_axis(len(shape)) == axis
    codes = np.zeros(shape, np.uint8)
    assert calibrate_tables(codes, 4).channels == 5


def test_tables_survive_a_file_round_trip(tmp_path):
    tables = calibrate_tables(relu_codes(np.random.default_rng(1), (8, 4, 6), 4), 4)
    path = save_tables(tables, tmp_path / "tables.npz")
    loaded = load_tables(path, expect_bits=4, expect_channels=6)
    np.testing.assert_array_equal(loaded.frequencies, tables.frequencies)
    assert not loaded.frequencies.flags.writeable
    codes = relu_codes(np.random.default_rng(2), (1, 4, 6), 4)
    assert encode_codes(codes, loaded) == encode_codes(codes, tables)


# -- bad streams -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def coded():
    rng = np.random.default_rng(3)
    tables = calibrate_tables(relu_codes(rng, (32, 8, 8, 8), 8), 8)
    codes = relu_codes(rng, (1, 8, 8, 8), 8)
    return tables, codes, encode_codes(codes, tables)


def _with_word(stream: bytes, index: int, value: int) -> bytes:
    return stream[:index] + struct.pack("<I", value) + stream[index + 4:]


BAD_STREAMS = [
    ("empty", lambda s: b"", "4 bytes of crc32"),
    ("not whole words", lambda s: s[:-1], "whole 32-bit words"),
    ("last word cut off", lambda s: s[:-4], "words left|crc32"),
    ("first word cut off", lambda s: s[:4] + s[8:], "words left|crc32"),
    ("only the checksum", lambda s: s[:4], "words left|crc32"),
    ("word flipped", lambda s: _with_word(s, 12, struct.unpack_from("<I", s, 12)[0] ^ 1 << 7),
     "words left|crc32"),
    ("wrong checksum", lambda s: _with_word(s, 0, struct.unpack_from("<I", s, 0)[0] ^ 1),
     "crc32"),
    ("a zero last word", lambda s: s + bytes(4), "invalid entropy-coded stream|words left"),
    ("a word appended", lambda s: s + b"\x05\x00\x00\x00", "words left|crc32"),
    ("far too long", lambda s: s + bytes(4 * 2000), "at most"),
]  # fmt: skip


@pytest.mark.parametrize(("corrupt", "match"), [c[1:] for c in BAD_STREAMS],
                         ids=[c[0] for c in BAD_STREAMS])
def test_truncated_or_corrupted_streams_are_refused(coded, corrupt, match):
    tables, codes, stream = coded
    with pytest.raises(WireFormatError, match=match):
        decode_codes(corrupt(stream), codes.shape, tables)


def test_another_tables_decode_is_refused(coded):
    tables, codes, stream = coded
    other = calibrate_tables(np.zeros((1, 8, 8, 8), np.uint8), 8)
    with pytest.raises(WireFormatError, match="words left|crc32.*other tables"):
        decode_codes(stream, codes.shape, other)


@SETTINGS
@given(data=st.binary(max_size=400))
def test_random_streams_raise_only_wire_format_error(coded, data):
    tables, codes, _ = coded
    try:
        decode_codes(data, codes.shape, tables)
    except WireFormatError:
        pass


BAD_CODES = [
    ("other channels", np.zeros((1, 4, 8, 8), np.uint8), "channels"),
    ("rank 5", np.zeros((1, 8, 2, 2, 2), np.uint8), "rank 5"),
    ("rank 1", np.zeros(8, np.uint8), "rank 1"),
    ("floats", np.zeros((1, 8, 2, 2), np.float32), "dtype float32"),
    ("too large", np.full((1, 8, 2, 2), 300, np.int32), r"values in \[300, 300\]"),
]


@pytest.mark.parametrize(("codes", "match"), [c[1:] for c in BAD_CODES], ids=[c[0] for c in BAD_CODES])
def test_encode_refuses_codes_that_do_not_fit(coded, codes, match):
    with pytest.raises(WireFormatError, match=match):
        encode_codes(codes, coded[0])


@pytest.mark.parametrize(("shape", "match"), [((1, 4, 8, 8), "4 channels"), ((1, 3, 5), "5 channels"),
                                              ((1, 8, 0, 8), "dims >= 1")])
def test_decode_refuses_shapes_that_do_not_fit(coded, shape, match):
    tables, _, stream = coded
    with pytest.raises(WireFormatError, match=match):
        decode_codes(stream, shape, tables)


BAD_TABLES = [
    ("bits 3", 3, np.ones((2, 8)), "bits 3"),
    ("zero frequency", 2, np.array([[1, 0, 1, 1]]), "every code stays encodable"),
    ("too large", 2, np.full((1, 4), 2**25), "every code stays encodable"),
    ("wrong width", 2, np.ones((2, 8), np.uint32), r"expected \(channels, 4\)"),
    ("floats", 1, np.ones((2, 2)) * 0.5, "expected integers"),
    ("no channels", 1, np.ones((0, 2), np.uint32), "1..65536 channels"),
]  # fmt: skip


@pytest.mark.parametrize(("bits", "frequencies", "match"), [c[1:] for c in BAD_TABLES],
                         ids=[c[0] for c in BAD_TABLES])
def test_bad_tables_are_refused(bits, frequencies, match):
    with pytest.raises(InvalidConfigError, match=match):
        EntropyTables(bits, frequencies)


@pytest.mark.parametrize(("codes", "bits", "match"), [
    (np.zeros((4, 2), np.uint8), 5, "bits 5"),
    (np.full((4, 2), 4, np.uint8), 2, r"codes in \[4, 4\]"),
    (np.zeros((4, 2), np.float32), 8, "dtype float32"),
    (np.zeros((0, 2), np.uint8), 8, "non-empty"),
    (np.zeros((4, 2, 2, 2, 2), np.uint8), 8, "shape"),
])  # fmt: skip
def test_calibration_refuses_bad_codes(codes, bits, match):
    with pytest.raises(InvalidConfigError, match=match):
        calibrate_tables(codes, bits)


# -- bad table files ---------------------------------------------------------------------------

def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _edited(**changes) -> bytes:
    tables = calibrate_tables(np.zeros((2, 4, 3), np.uint8), 2)
    with np.load(io.BytesIO(tables_to_bytes(tables))) as npz:
        arrays = {key: npz[key] for key in npz.files}
    arrays.update(changes)
    return _npz(**{k: v for k, v in arrays.items() if v is not None})


BAD_FILES = [
    ("not a zip", b"hello", "not a readable .npz"),
    ("truncated", tables_to_bytes(calibrate_tables(np.zeros((2, 3), np.uint8), 2))[:-30],
     "not a readable .npz"),
    ("missing key", _edited(probe_crc32=None), r"missing \['probe_crc32'\]"),
    ("unknown key", _edited(extra=np.zeros(1)), r"unknown \['extra'\]"),
    ("other format", _edited(format=np.array("something-else")), "format 'something-else'"),
    ("newer version", _edited(version=np.array(2)), "version 2; this splitpack reads version 1"),
    ("bits as array", _edited(bits=np.array([2, 2])), "'bits' is a int64 array of shape"),
    ("frequency zero", _edited(frequencies=np.zeros((3, 4), np.uint32)), "stays encodable"),
    ("float frequencies", _edited(frequencies=np.ones((3, 4))), "dtype float64; expected uint32"),
    ("other coder", _edited(probe_crc32=np.array(1, np.uint32)), "codes them differently"),
    ("pickled object", _npz(format=np.array([{"a": 1}], dtype=object)), "not a readable .npz"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "match"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_table_files_are_refused_naming_the_file(data, match):
    with pytest.raises(InvalidBundleError, match=f"entropy tables variants/x/t.npz: .*{match}"):
        load_tables(data, name="variants/x/t.npz")


@pytest.mark.parametrize(("expect", "match"), [
    ({"expect_bits": 4}, "made for 2-bit codes of 3 channels, but the variant sends 4-bit codes of 3"),
    ({"expect_channels": 8}, "of 3 channels, but the variant sends 2-bit codes of 8 channels"),
])  # fmt: skip
def test_tables_for_other_codes_are_refused(expect, match):
    with pytest.raises(InvalidBundleError, match=match):
        load_tables(_edited(), **expect)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(InvalidBundleError, match=f"entropy tables {tmp_path}/none.npz: cannot be read"):
        load_tables(tmp_path / "none.npz")


def test_stream_checksum_is_of_the_codes():
    tables = calibrate_tables(np.zeros((2, 3), np.uint8), 2)
    codes = np.array([[0, 1, 3]], np.uint8)
    assert struct.unpack_from("<I", encode_codes(codes, tables))[0] == zlib.crc32(codes.tobytes())


@SETTINGS
@given(channels=st.integers(1, 20), per_channel=st.integers(1, 40), bits=st.sampled_from([1, 2, 4, 6, 8]),
       seed=st.integers(0, 2**32 - 1))
def test_one_call_and_a_call_per_channel_write_the_same_stream(channels, per_channel, bits, seed):
    """The coder picks one call for all symbols or one per channel by cost; both must be the
    same code, or a device and an edge that picked differently could not talk."""
    import constriction

    from splitpack.formats.entropy import _decode_symbols, _encode_symbols

    rng = np.random.default_rng(seed)
    tables = calibrate_tables(rng.integers(0, 1 << bits, size=(3, channels, per_channel)).astype(np.uint8)
                              .transpose(0, 2, 1), bits)
    symbols = rng.integers(0, 1 << bits, size=(channels, per_channel)).astype(np.int32)
    words = {one: _encode_symbols(symbols, tables, one_call=one) for one in (True, False)}
    np.testing.assert_array_equal(words[True], words[False])
    for one in (True, False):
        coder = constriction.stream.stack.AnsCoder(words[not one])
        np.testing.assert_array_equal(_decode_symbols(coder, per_channel, tables, one_call=one), symbols)
        assert coder.is_empty()
