"""Tests of the wire payload: bit packing, round trips, and a decoder that rejects bad bytes."""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitpack.errors import WireFormatError
from splitpack.formats.wire import (
    HEADER_MAX_BYTES,
    HEADER_MIN_BYTES,
    MAGIC,
    WIRE_VERSION,
    Payload,
    data_bytes,
    decode_payload,
    encode_payload,
    header_bytes,
    message_bytes,
    pack_codes,
    packed_size,
    payload_bytes,
    round_trip_codes,
    unpack_codes,
)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPE_BITS = [("uint8", 1), ("uint8", 2), ("uint8", 4), ("uint8", 8), ("int8", 8),
              ("float16", 16), ("float32", 32)]  # fmt: skip


def random_tensor(rng: np.random.Generator, shape: tuple[int, ...], dtype: str, bits: int):
    if dtype == "uint8":
        return rng.integers(0, 1 << bits, size=shape).astype(np.uint8)
    if dtype == "int8":
        return rng.integers(-128, 128, size=shape).astype(np.int8)
    return rng.standard_normal(shape).astype(dtype)


def craft(**fields) -> bytes:
    """A message built field by field, so a test can set any field to a bad value.

    The crc32 is computed over what was crafted unless ``crc32`` is given; ``trailing`` is
    appended after the data.
    """
    data = fields.get("data", bytes(16))
    bundle, variant = fields.get("bundle_id", b"bundle"), fields.get("variant_id", b"v1")
    shape = fields.get("shape", (1, 16))
    header = b"".join([
        fields.get("magic", MAGIC),
        struct.pack("<BBBB", fields.get("version", 1), fields.get("flags", 0),
                    fields.get("bundle_len", len(bundle)), fields.get("variant_len", len(variant))),
        bundle, variant,
        struct.pack("<BBB", fields.get("dtype", 1), fields.get("bits", 8),
                    fields.get("rank", len(shape))),
        struct.pack(f"<{len(shape)}I", *shape),
        struct.pack("<ddBI", fields.get("scale", 1.0), fields.get("offset", 0.0),
                    fields.get("compression", 0), fields.get("data_length", len(data))),
    ])  # fmt: skip
    checksum = fields.get("crc32", zlib.crc32(data, zlib.crc32(header)))
    return header + struct.pack("<I", checksum) + data + fields.get("trailing", b"")


def test_craft_builds_a_valid_message_equal_to_the_encoder():
    codes = np.arange(16, dtype=np.uint8).reshape(1, 16)
    message = encode_payload(codes, bundle_id="bundle", variant_id="v1", bits=8)
    assert craft(data=codes.tobytes()) == message
    payload, array = decode_payload(message)
    assert payload.shape == (1, 16) and payload.dtype == "uint8"
    np.testing.assert_array_equal(array, codes)


# --- bit packing -------------------------------------------------------------------------------


@SETTINGS
@given(bits=st.sampled_from([1, 2, 4, 6, 8]), data=st.data())
def test_pack_unpack_round_trip(bits, data):
    values = data.draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=300))
    dtype = data.draw(st.sampled_from([np.uint8, np.int32, np.int64, np.uint16]))
    codes = np.array(values, dtype=dtype)
    packed = pack_codes(codes, bits)
    assert len(packed) == packed_size(len(values), bits) == math.ceil(len(values) * bits / 8)
    unpacked = unpack_codes(packed, bits, len(values))
    assert unpacked.dtype == np.uint8 and unpacked.flags.writeable
    np.testing.assert_array_equal(unpacked, codes)


@pytest.mark.parametrize(
    ("codes", "bits", "expected"),
    [
        ([1, 0, 0, 0, 0, 0, 0, 1], 1, b"\x81"),
        ([1], 1, b"\x01"),
        ([3, 0, 0, 1], 2, bytes([0b01000011])),
        ([1, 2], 4, b"\x21"),
        ([0xF, 0x0, 0x5], 4, b"\x0f\x05"),
        ([7, 255], 8, b"\x07\xff"),
    ],
)
def test_pack_is_little_endian_within_a_byte(codes, bits, expected):
    assert pack_codes(np.array(codes), bits) == expected


def test_round_trip_codes_keeps_shape_and_values():
    codes = np.array([[[0, 3], [1, 2]], [[3, 3], [0, 1]]], dtype=np.uint8)
    again = round_trip_codes(codes, 2)
    assert again.shape == codes.shape and again.dtype == np.uint8
    assert np.array_equal(again, codes)
    with pytest.raises(WireFormatError, match="codes"):
        round_trip_codes(codes, 1)  # 3 does not fit in one bit


@pytest.mark.parametrize(
    ("codes", "bits", "match"),
    [
        (np.array([0, 4]), 2, "codes"),
        (np.array([-1, 0]), 4, "codes"),
        (np.array([256]), 8, "codes"),
        (np.array([0.0, 1.0]), 4, "codes"),
        (np.array([True, False]), 1, "codes"),
        (np.array([0, 1]), 3, "bits"),
        (np.array([0, 1]), 16, "bits"),
    ],
)
def test_pack_rejects_bad_codes(codes, bits, match):
    with pytest.raises(WireFormatError, match=match):
        pack_codes(codes, bits)


@pytest.mark.parametrize(
    ("data", "bits", "count", "match"),
    [
        (b"\x00", 4, 3, "data"),  # needs 2 bytes
        (b"\x00\x00", 4, 2, "data"),  # needs 1 byte
        (b"\xf0", 4, 1, "padding"),  # high nibble is padding and must be zero
        (b"\x00", 3, 1, "bits"),
        (b"", 4, -1, "count"),
    ],
)
def test_unpack_rejects_bad_input(data, bits, count, match):
    with pytest.raises(WireFormatError, match=match):
        unpack_codes(data, bits, count)


# --- sizes -------------------------------------------------------------------------------------


def test_sizes_match_the_encoded_messages():
    rng = np.random.default_rng(0)
    assert HEADER_MIN_BYTES == header_bytes(1, bundle_id="b", variant_id="v") == 42
    assert HEADER_MAX_BYTES == header_bytes(6, bundle_id="b" * 64, variant_id="é" * 32) == 188
    for dtype, bits in DTYPE_BITS:
        tensor = random_tensor(rng, (3, 5, 7), dtype, bits)
        message = encode_payload(tensor, bundle_id="resnet", variant_id="cut3-c8-b4", bits=bits)
        ids = {"bundle_id": "resnet", "variant_id": "cut3-c8-b4"}
        assert len(message) == message_bytes((3, 5, 7), bits, **ids)
        assert len(message) == payload_bytes((5, 7), bits, batch=3, **ids)
        assert len(message) == header_bytes(3, **ids) + data_bytes(105, bits)


# --- encode / decode ---------------------------------------------------------------------------


@SETTINGS
@given(
    dtype_bits=st.sampled_from(DTYPE_BITS),
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=6).map(tuple),
    bundle_id=st.text(min_size=1, max_size=16),
    variant_id=st.text(min_size=1, max_size=16),
    scale=st.floats(allow_nan=False, allow_infinity=False),
    offset=st.floats(allow_nan=False, allow_infinity=False),
    compression=st.sampled_from(["none", "zlib"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_encode_decode_round_trip(dtype_bits, shape, bundle_id, variant_id, scale, offset,
                                  compression, seed):  # fmt: skip
    dtype, bits = dtype_bits
    tensor = random_tensor(np.random.default_rng(seed), shape, dtype, bits)
    message = encode_payload(tensor, bundle_id=bundle_id, variant_id=variant_id, bits=bits,
                             scale=scale, offset=offset, compression=compression)  # fmt: skip
    payload, array = decode_payload(message)
    expected = Payload(bundle_id, variant_id, dtype, shape, bits, scale, offset, compression,
                       pack_codes(tensor, bits) if dtype == "uint8" else tensor.tobytes())
    assert payload == expected
    assert array.shape == shape and array.dtype == tensor.dtype and array.flags.writeable
    np.testing.assert_array_equal(array, tensor)


def test_big_endian_floats_travel_as_little_endian():
    tensor = np.arange(6, dtype=">f4").reshape(2, 3)
    message = encode_payload(tensor, bundle_id="b", variant_id="v", bits=32)
    assert message.endswith(np.arange(6, dtype="<f4").tobytes())
    _, array = decode_payload(message)
    np.testing.assert_array_equal(array, tensor)


def test_decode_accepts_bytearray_and_memoryview():
    message = craft()
    for view in (bytearray(message), memoryview(message)):
        assert decode_payload(view)[0].variant_id == "v1"


@SETTINGS
@given(st.binary(max_size=300))
def test_decode_of_random_bytes_raises_only_wire_format_error(message):
    for candidate in (message, MAGIC + bytes([WIRE_VERSION, 0]) + message):
        try:
            decode_payload(candidate)
        except WireFormatError:
            pass


@SETTINGS
@given(dtype_bits=st.sampled_from(DTYPE_BITS), compression=st.sampled_from(["none", "zlib"]),
       data=st.data())  # fmt: skip
def test_any_single_byte_change_is_rejected(dtype_bits, compression, data):
    dtype, bits = dtype_bits
    tensor = random_tensor(np.random.default_rng(0), (2, 3, 5), dtype, bits)
    message = bytearray(encode_payload(tensor, bundle_id="bundle", variant_id="variant",
                                       bits=bits, compression=compression))  # fmt: skip
    position = data.draw(st.integers(0, len(message) - 1))
    message[position] ^= data.draw(st.integers(1, 255))
    with pytest.raises(WireFormatError):
        decode_payload(bytes(message))


@pytest.mark.parametrize(("dtype", "bits"), DTYPE_BITS)
@pytest.mark.parametrize("compression", ["none", "zlib"])
def test_every_truncation_is_rejected(dtype, bits, compression):
    tensor = random_tensor(np.random.default_rng(1), (2, 9), dtype, bits)
    message = encode_payload(tensor, bundle_id="bundle", variant_id="v", bits=bits,
                             compression=compression)  # fmt: skip
    for end in range(len(message)):
        with pytest.raises(WireFormatError):
            decode_payload(message[:end])


def test_flipped_data_byte_fails_the_checksum():
    message = bytearray(craft(data=bytes(range(16))))
    message[-3] ^= 0x10
    with pytest.raises(WireFormatError, match="crc32"):
        decode_payload(bytes(message))


def zlib_bomb() -> bytes:
    stream = zlib.compress(bytes(50_000_000), 9)  # 50 MB of zeros in about 50 kB
    return craft(compression=1, data=stream)


def truncated_zlib() -> bytes:
    return craft(compression=1, data=zlib.compress(bytes(16))[:-2])


MALFORMED = [
    ("empty", b"", "magic"),
    ("bad magic", craft(magic=b"SPLX"), "magic"),
    ("version 2", craft(version=2), "version"),
    ("flags set", craft(flags=1), "flags"),
    ("empty bundle id", craft(bundle_id=b"", bundle_len=0), "bundle_id length"),
    ("bundle id over 64 bytes", craft(bundle_id=b"x" * 65), "bundle_id length"),
    ("non-UTF-8 variant id", craft(variant_id=b"\xff\xfe"), "variant_id"),
    ("unknown dtype", craft(dtype=9), "dtype"),
    ("bits 3", craft(bits=3), "bits"),
    ("bits 8 for float32", craft(dtype=4, bits=8), "bits"),
    ("rank 0", craft(rank=0, shape=()), "rank"),
    ("rank 7", craft(rank=7, shape=(1,) * 7), "rank"),
    ("zero dim", craft(shape=(1, 0, 16)), "shape"),
    ("huge shape", craft(shape=(2**31, 2**31)), "shape"),
    ("over max_elements", craft(shape=(50_000_001,)), "shape"),
    ("NaN scale", craft(scale=math.nan), "scale"),
    ("infinite offset", craft(offset=-math.inf), "offset"),
    ("unknown compression", craft(compression=7), "compression"),
    ("length mismatch", craft(data=bytes(17)), "data_length"),
    ("claimed length past the end", craft(data_length=2**32 - 1), "data_length"),
    ("empty zlib stream", craft(compression=1, data=b""), "data_length"),
    ("truncated data", craft()[:-1], "data"),
    ("bad crc", craft(crc32=12345), "crc32"),
    ("trailing bytes", craft(trailing=b"\x00"), "trailing"),
    ("zlib bomb", zlib_bomb(), "data"),
    ("not zlib", craft(compression=1, data=b"\x00" * 16), "zlib"),
    ("truncated zlib stream", truncated_zlib(), "zlib"),
    ("bytes after zlib stream", craft(compression=1, data=zlib.compress(bytes(16)) + b"x"), "zlib"),
    ("short zlib output", craft(compression=1, data=zlib.compress(bytes(15))), "15 bytes"),
    ("nonzero padding bits", craft(bits=4, shape=(1,), data=b"\xf1"), "padding"),
]


@pytest.mark.parametrize(("message", "match"), [case[1:] for case in MALFORMED],
                         ids=[case[0] for case in MALFORMED])  # fmt: skip
def test_decode_rejects_malformed_message(message, match):
    with pytest.raises(WireFormatError, match=match):
        decode_payload(message)


def test_max_elements_bounds_the_shape():
    message = encode_payload(np.zeros((4, 4), np.uint8), bundle_id="b", variant_id="v", bits=8)
    assert decode_payload(message, max_elements=16)[1].shape == (4, 4)
    with pytest.raises(WireFormatError, match="shape"):
        decode_payload(message, max_elements=15)


ENCODE_ERRORS = [
    ("int32 codes", np.zeros(4, np.int32), {}, "dtype"),
    ("bits not allowed", np.zeros(4, np.uint8), {"bits": 3}, "bits"),
    ("bits for another dtype", np.zeros(4, np.float32), {"bits": 16}, "bits"),
    ("code too large", np.full(4, 16, np.uint8), {"bits": 4}, "codes"),
    ("rank 0", np.zeros((), np.uint8), {}, "rank"),
    ("rank 7", np.zeros((1,) * 7, np.uint8), {}, "rank"),
    ("zero dim", np.zeros((2, 0), np.uint8), {}, "shape"),
    ("empty id", np.zeros(4, np.uint8), {"bundle_id": ""}, "bundle_id"),
    ("long id", np.zeros(4, np.uint8), {"variant_id": "é" * 33}, "variant_id"),
    ("NaN scale", np.zeros(4, np.uint8), {"scale": math.nan}, "scale"),
    ("string offset", np.zeros(4, np.uint8), {"offset": "0"}, "offset"),
    ("gzip", np.zeros(4, np.uint8), {"compression": "gzip"}, "compression"),
]


@pytest.mark.parametrize(("tensor", "overrides", "match"), [case[1:] for case in ENCODE_ERRORS],
                         ids=[case[0] for case in ENCODE_ERRORS])  # fmt: skip
def test_encode_rejects_bad_input(tensor, overrides, match):
    arguments = {"bundle_id": "b", "variant_id": "v", "bits": 8, **overrides}
    with pytest.raises(WireFormatError, match=match):
        encode_payload(tensor, **arguments)


# --- entropy-coded codes and image uploads ------------------------------------------------------

from splitpack.formats.entropy import EntropyTables, calibrate_tables  # noqa: E402
from splitpack.formats.wire import (  # noqa: E402
    data_length_bound, decode_data, measure_payload_bytes, read_payload,
)

ENTROPY_SHAPE = (2, 3, 4, 5)


def entropy_tables(bits: int, channels: int = 3) -> EntropyTables:
    rng = np.random.default_rng(bits)
    skewed = np.minimum(rng.geometric(0.4, size=(50, channels, 4, 5)) - 1, (1 << bits) - 1)
    return calibrate_tables(skewed.astype(np.uint8), bits)


def image_batch(seed: int, shape=(2, 3, 12, 10)) -> np.ndarray:
    """Smooth images with a little noise: what a camera gives, not what JPEG cannot compress."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, shape[-1])[None, None, None, :] + rng.integers(0, 30, size=shape)
    return np.clip(ramp, 0, 255).astype(np.uint8)


def new_mode_message(mode: str, seed: int = 0) -> tuple[bytes, dict]:
    """A valid message of ``mode`` and the decode arguments it needs."""
    ids = {"bundle_id": "bundle", "variant_id": "variant"}
    if mode == "entropy":
        tables = entropy_tables(4)
        codes = np.random.default_rng(seed).integers(0, 16, size=ENTROPY_SHAPE).astype(np.uint8)
        return encode_payload(codes, bits=4, compression="entropy", tables=tables, **ids), {
            "tables": tables}
    quality = 60 if mode in ("jpeg", "webp") else None
    return encode_payload(image_batch(seed), bits=8, compression=mode, quality=quality, **ids), {}


NEW_MODES = ["entropy", "png", "jpeg", "webp"]


@SETTINGS
@given(bits=st.sampled_from([1, 2, 4, 6, 8]), shape=st.sampled_from([(1, 3, 4, 5), (2, 7, 3), (3, 3)]),
       seed=st.integers(0, 2**32 - 1))
def test_entropy_messages_round_trip_bit_exact(bits, shape, seed):
    tables = entropy_tables(bits, channels=3)
    codes = np.random.default_rng(seed).integers(0, 1 << bits, size=shape).astype(np.uint8)
    message = encode_payload(codes, bundle_id="b", variant_id="v", bits=bits, scale=0.5,
                             offset=-1.0, compression="entropy", tables=tables)
    payload, array = decode_payload(message, tables=tables)
    assert (payload.compression, payload.shape, payload.bits) == ("entropy", shape, bits)
    assert array.dtype == np.uint8 and array.flags.writeable
    np.testing.assert_array_equal(array, codes)
    assert len(message) == message_bytes(shape, bits, bundle_id="b", variant_id="v",
                                         data_length=len(payload.data))
    assert len(payload.data) <= data_length_bound("entropy", shape, bits)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mode", ["png", "jpeg", "webp"])
def test_image_uploads_decode_to_the_header_shape(mode, channels):
    pixels = image_batch(1, shape=(3, channels, 16, 20))
    quality = 90 if mode != "png" else None
    message = encode_payload(pixels, bundle_id="b", variant_id="edge", bits=8, compression=mode,
                             quality=quality)
    payload, array = decode_payload(message)
    assert array.shape == pixels.shape and array.dtype == np.uint8
    if mode == "png":
        np.testing.assert_array_equal(array, pixels)  # lossless
    else:
        assert np.abs(array.astype(int) - pixels).mean() < 8  # lossy, but the same picture
    assert len(payload.data) <= data_length_bound(mode, pixels.shape, 8)


def test_lower_quality_sends_fewer_bytes():
    pixels = image_batch(2, shape=(1, 3, 32, 32))
    sizes = [len(encode_payload(pixels, bundle_id="b", variant_id="edge", bits=8,
                                compression="jpeg", quality=q)) for q in (10, 50, 95)]
    assert sizes[0] < sizes[1] < sizes[2]


def test_measured_payload_bytes_are_the_real_messages():
    pixels = image_batch(3, shape=(5, 1, 8, 8))
    sizes = measure_payload_bytes(pixels, bundle_id="b", variant_id="edge", bits=8,
                                  compression="jpeg", quality=30)
    real = [len(encode_payload(pixels[i:i + 1], bundle_id="b", variant_id="edge", bits=8,
                               compression="jpeg", quality=30)) for i in range(5)]
    assert (sizes.mean, sizes.max, sizes.count) == (np.mean(real), max(real), 5)
    assert sizes.p95 == pytest.approx(np.percentile(real, 95))


def test_read_payload_leaves_the_data_as_sent():
    message, arguments = new_mode_message("entropy")
    payload = read_payload(message)
    assert message.endswith(payload.data)
    np.testing.assert_array_equal(decode_data(payload, **arguments),
                                  decode_payload(message, **arguments)[1])


@SETTINGS
@given(mode=st.sampled_from(NEW_MODES), data=st.data())
def test_any_single_byte_change_of_a_new_mode_is_rejected(mode, data):
    message, arguments = new_mode_message(mode)
    changed = bytearray(message)
    position = data.draw(st.integers(0, len(changed) - 1))
    changed[position] ^= data.draw(st.integers(1, 255))
    with pytest.raises(WireFormatError):
        decode_payload(bytes(changed), **arguments)


@pytest.mark.parametrize("mode", NEW_MODES)
def test_every_truncation_of_a_new_mode_is_rejected(mode):
    message, arguments = new_mode_message(mode)
    for end in range(len(message)):
        with pytest.raises(WireFormatError):
            decode_payload(message[:end], **arguments)


@SETTINGS
@given(mode=st.sampled_from(NEW_MODES), data=st.binary(min_size=1, max_size=600))
def test_crafted_data_with_a_valid_checksum_raises_only_wire_format_error(mode, data):
    """The crc32 is right, so only the decoders themselves stand between these bytes and a crash."""
    message, arguments = new_mode_message(mode)
    header = read_payload(message)
    fields = {"compression": COMPRESSION[mode], "bits": header.bits, "shape": header.shape,
              "data": data}
    try:
        decode_payload(craft(**fields), **arguments)
    except WireFormatError:
        pass


COMPRESSION = {"none": 0, "zlib": 1, "entropy": 2, "png": 3, "jpeg": 4, "webp": 5}


def _frames(*files: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(f)) + f for f in files)


def _image_file(mode: str, size: tuple[int, int], fmt: str = "PNG") -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format=fmt)
    return buffer.getvalue()


def _entropy_data(codes: np.ndarray, tables: EntropyTables) -> bytes:
    return read_payload(encode_payload(codes, bundle_id="b", variant_id="v", bits=tables.bits,
                                       compression="entropy", tables=tables)).data


TABLES_4 = entropy_tables(4)
CODES_4 = np.random.default_rng(9).integers(0, 16, size=ENTROPY_SHAPE).astype(np.uint8)
GOOD_STREAM = _entropy_data(CODES_4, TABLES_4)

BAD_NEW_MODES = [
    ("entropy stream truncated", dict(data=GOOD_STREAM[:-4]), "words left|crc32"),
    ("entropy stream with a word more", dict(data=GOOD_STREAM + b"\x01\x00\x00\x00"),
     "words left|crc32"),
    ("entropy stream of other codes", dict(data=_entropy_data(CODES_4[::-1].copy(), TABLES_4)[:4]
                                           + GOOD_STREAM[4:]), "crc32"),
    ("entropy stream not in words", dict(data=GOOD_STREAM[:-1]), "data_length"),
    ("entropy stream over the bound", dict(data=bytes(4 * 200)), "data_length"),
    ("entropy of float32", dict(dtype=4, bits=32), "dtype"),
    ("entropy of rank 5", dict(shape=(1, 3, 2, 2, 2)), "rank"),
    ("entropy for other channels", dict(shape=(2, 5, 4, 5)), "channels"),
    ("entropy with other bits", dict(bits=8), "bits"),
    ("png of another size", dict(compression=3, bits=8, shape=(1, 1, 8, 8),
                                 data=_frames(_image_file("L", (8, 9)))), "9 pixels|8x9"),
    ("png of another mode", dict(compression=3, bits=8, shape=(1, 3, 8, 8),
                                 data=_frames(_image_file("L", (8, 8)))), "mode L"),
    ("jpeg that is a png", dict(compression=4, bits=8, shape=(1, 1, 8, 8),
                                data=_frames(_image_file("L", (8, 8)))), "not a readable jpeg"),
    ("jpeg truncated", dict(compression=4, bits=8, shape=(1, 1, 8, 8),
                            data=_frames(_image_file("L", (8, 8), "JPEG")[:-20])), "jpeg"),
    ("fewer images than the batch", dict(compression=3, bits=8, shape=(2, 1, 8, 8),
                                         data=_frames(_image_file("L", (8, 8))) + bytes(4)),
     "image 1"),
    ("bytes after the images", dict(compression=3, bits=8, shape=(1, 1, 8, 8),
                                    data=_frames(_image_file("L", (8, 8))) + b"xyzzy"),
     "after the last image"),
    ("image length past the end", dict(compression=3, bits=8, shape=(1, 1, 8, 8),
                                       data=struct.pack("<I", 10_000) + bytes(40)), "image 0 of"),
    ("image of 2 channels", dict(compression=3, bits=8, shape=(1, 2, 8, 8), data=bytes(40)),
     "shape"),
    ("image of rank 3", dict(compression=5, bits=8, shape=(1, 8, 8), data=bytes(40)), "shape"),
    ("image of 4 bits", dict(compression=4, bits=4, shape=(1, 1, 8, 8), data=bytes(40)), "dtype"),
    ("image data too short", dict(compression=4, bits=8, shape=(2, 1, 8, 8), data=bytes(9)),
     "data_length"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "match"), [case[1:] for case in BAD_NEW_MODES],
                         ids=[case[0] for case in BAD_NEW_MODES])
def test_decode_rejects_bad_entropy_and_image_messages(fields, match):
    message = craft(**{"compression": 2, "bits": 4, "shape": ENTROPY_SHAPE, "data": GOOD_STREAM,
                       **fields})
    with pytest.raises(WireFormatError, match=match):
        decode_payload(message, tables=TABLES_4)


def test_an_entropy_message_needs_the_variants_tables():
    message = craft(compression=2, bits=4, shape=ENTROPY_SHAPE, data=GOOD_STREAM)
    np.testing.assert_array_equal(decode_payload(message, tables=TABLES_4)[1], CODES_4)
    with pytest.raises(WireFormatError, match="has no entropy tables here"):
        decode_payload(message)
    with pytest.raises(WireFormatError, match="bits"):
        decode_payload(message, tables=entropy_tables(8))


NEW_ENCODE_ERRORS = [
    ("jpeg quality 0", image_batch(0), {"compression": "jpeg", "quality": 0}, r"quality.*1\.\.100"),
    ("jpeg quality 101", image_batch(0), {"compression": "jpeg", "quality": 101}, r"1\.\.100"),
    ("webp quality as text", image_batch(0), {"compression": "webp", "quality": "80"}, r"1\.\.100"),
    ("jpeg without quality", image_batch(0), {"compression": "jpeg"}, r"quality.*1\.\.100"),
    ("png with quality", image_batch(0), {"compression": "png", "quality": 80}, "takes no quality"),
    ("zlib with quality", image_batch(0), {"compression": "zlib", "quality": 80}, "takes no quality"),
    ("jpeg of floats", image_batch(0).astype(np.float32), {"compression": "jpeg", "quality": 50,
                                                           "bits": 32}, "dtype"),
    ("jpeg of 2 channels", np.zeros((1, 2, 8, 8), np.uint8), {"compression": "jpeg", "quality": 5},
     "shape"),
    ("jpeg of 4-bit codes", np.zeros((1, 1, 8, 8), np.uint8), {"compression": "jpeg", "quality": 5,
                                                              "bits": 4}, "dtype"),
    ("entropy without tables", CODES_4, {"compression": "entropy", "bits": 4}, "tables"),
    ("tables without entropy", CODES_4, {"bits": 4, "tables": TABLES_4}, "tables"),
    ("tables of other bits", CODES_4, {"compression": "entropy", "tables": TABLES_4}, "bits"),
    ("entropy of other channels", np.zeros((1, 4, 2, 2), np.uint8),
     {"compression": "entropy", "bits": 4, "tables": TABLES_4}, "channels"),
]  # fmt: skip


@pytest.mark.parametrize(("tensor", "overrides", "match"), [case[1:] for case in NEW_ENCODE_ERRORS],
                         ids=[case[0] for case in NEW_ENCODE_ERRORS])
def test_encode_rejects_bad_entropy_and_image_input(tensor, overrides, match):
    arguments = {"bundle_id": "b", "variant_id": "v", "bits": 8, **overrides}
    with pytest.raises(WireFormatError, match=match):
        encode_payload(tensor, **arguments)
