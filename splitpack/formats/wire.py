"""Wire payload: the versioned binary message a device sends to the edge.

Runs on devices, so it imports numpy, the entropy coder (:mod:`splitpack.formats.entropy`),
Pillow (for image uploads, :mod:`splitpack.formats.images`) and the standard library only.
Every field of an incoming message is validated, in order, before it is used; no buffer is
sized from an unchecked number.

Layout (integers and floats little-endian; ``struct`` format in brackets):

============  ===========  ==================================================================
field         bytes        content
============  ===========  ==================================================================
magic         4            ``b"SPLT"``
version       1 [B]        ``WIRE_VERSION`` (1)
flags         1 [B]        reserved, must be 0
bundle_len    1 [B]        byte length of ``bundle_id``, 1..64
variant_len   1 [B]        byte length of ``variant_id``, 1..64
bundle_id     bundle_len   UTF-8
variant_id    variant_len  UTF-8
dtype         1 [B]        1 uint8, 2 int8, 3 float16, 4 float32: the decoded tensor's dtype
                           before dequantization (quantized codes are uint8)
bits          1 [B]        uint8: 1, 2, 4, 6 or 8; int8: 8; float16: 16; float32: 32
rank          1 [B]        1..6, the full shape with the batch dim
shape         4 * rank     one u32 [I] per dim, each >= 1, product <= ``max_elements``
scale         8 [d]        float64, finite; the codec defines its use (code*scale + offset)
offset        8 [d]        float64, finite
compression   1 [B]        0 none, 1 zlib, 2 entropy, 3 png, 4 jpeg, 5 webp
data_length   4 [I]        bytes of ``data`` as sent, i.e. after compression
crc32         4 [I]        ``zlib.crc32`` of every header byte before this field, then of data
data          data_length  the tensor as ``compression`` says (below)
============  ===========  ==================================================================

The header takes ``36 + bundle_len + variant_len + 4 * rank`` bytes (42 to 188). The checksum
covers the header as well as the data, so a corrupted scale or shape is caught, not used.

``data`` by compression:

* ``none``: codes of ``bits`` < 8 bit-packed as :mod:`splitpack.formats.bitpack` describes;
  other dtypes as raw little-endian array bytes. ``zlib``: the same, as one zlib stream.
* ``entropy``: uint8 codes of rank 2..4, rANS-coded with the variant's static tables (the
  stream of :func:`splitpack.formats.entropy.encode_codes`); the decoder needs those tables.
* ``png``, ``jpeg``, ``webp``: uint8 pixels (N, 1 or 3, H, W), bits 8, one image file per
  sample (:mod:`splitpack.formats.images`); jpeg and webp are lossy, at a quality the sender
  chose, which the decoder does not need.

Compressions 2..5 were added without a new ``WIRE_VERSION``: every message that was valid
before still is, byte for byte, and a decoder that predates them refuses them by name
(``compression``), which is what a version bump would have achieved.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Container
from dataclasses import dataclass, replace

import numpy as np

from splitpack.errors import InvalidConfigError, WireFormatError
from splitpack.formats.bitpack import (
    WIRE_BITS, _check_int, _describe, _fail, data_bytes, pack_codes, packed_size, round_trip_codes,
    unpack_codes,
)  # fmt: skip
from splitpack.formats.entropy import EntropyTables, decode_codes, encode_codes, max_encoded_bytes
from splitpack.formats.images import (
    IMAGE_FORMATS, check_quality, decode_images, encode_images, max_image_data_bytes,
)  # fmt: skip

__all__ = [
    "WIRE_BUNDLE_ID_LENGTH", "WIRE_VERSION", "MAGIC", "HEADER_MIN_BYTES", "HEADER_MAX_BYTES", "MAX_ID_BYTES", "MAX_RANK",
    "DEFAULT_MAX_ELEMENTS", "COMPRESSIONS", "Payload", "PayloadSizes", "pack_codes",
    "unpack_codes", "round_trip_codes", "packed_size", "data_bytes", "header_bytes",
    "message_bytes", "payload_bytes", "data_length_bound", "encode_payload", "read_payload",
    "decode_data", "decode_payload", "measure_payload_bytes",
]  # fmt: skip

WIRE_BUNDLE_ID_LENGTH = 16  # a message carries the first 16 hex digits of the bundle id

MAGIC = b"SPLT"
WIRE_VERSION = 1
MAX_ID_BYTES = 64
MAX_RANK = 6
MAX_U32 = 2**32 - 1
DEFAULT_MAX_ELEMENTS = 50_000_000
DTYPE_CODES = {"uint8": 1, "int8": 2, "float16": 3, "float32": 4}
ALLOWED_BITS = {"uint8": (1, 2, 4, 6, 8), "int8": (8,), "float16": (16,), "float32": (32,)}
COMPRESSION_CODES = {"none": 0, "zlib": 1, "entropy": 2, "png": 3, "jpeg": 4, "webp": 5}
COMPRESSIONS = tuple(COMPRESSION_CODES)
_DTYPE_BY_CODE = {code: name for name, code in DTYPE_CODES.items()}
_COMPRESSION_BY_CODE = {code: name for name, code in COMPRESSION_CODES.items()}
_FIXED_HEADER_BYTES = 36  # magic..variant_len 8, dtype/bits/rank 3, 2 f64, compression, 2 u32
HEADER_MIN_BYTES = _FIXED_HEADER_BYTES + 2 + 4
HEADER_MAX_BYTES = _FIXED_HEADER_BYTES + 2 * MAX_ID_BYTES + 4 * MAX_RANK


@dataclass(frozen=True)
class Payload:
    """The header of one wire message and its data.

    ``bundle_id`` and ``variant_id`` name the tail that consumes the tensor; ``dtype``,
    ``shape`` (batch included) and ``bits`` describe it; ``scale`` and ``offset`` are carried
    for the codec; ``compression`` says how ``data`` travelled. ``data`` is the data as sent
    (:func:`read_payload`); :func:`decode_payload` gives ``none`` and ``zlib`` messages their
    decompressed, still bit-packed bytes instead.
    """

    bundle_id: str
    variant_id: str
    dtype: str
    shape: tuple[int, ...]
    bits: int
    scale: float
    offset: float
    compression: str
    data: bytes


@dataclass(frozen=True)
class PayloadSizes:
    """Bytes of one-sample messages, header included: what really goes on the wire.

    Attributes:
        mean, p95: Mean and 95th percentile (linear interpolation) over the samples.
        max: The largest message.
        count: Number of samples measured.
    """

    mean: float
    p95: float
    max: int
    count: int


def _encode_id(field: str, value: str) -> bytes:
    if not isinstance(value, str):
        raise _fail(field, repr(value), "a str")
    encoded = value.encode("utf-8")
    if not 1 <= len(encoded) <= MAX_ID_BYTES:
        raise _fail(field, f"{len(encoded)} bytes of UTF-8", f"1..{MAX_ID_BYTES} bytes")
    return encoded


def _check_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    _check_int("rank", len(shape), range(1, MAX_RANK + 1))
    return tuple(_check_int("shape", dim, range(1, MAX_U32 + 1)) for dim in shape)


def header_bytes(rank: int, *, bundle_id: str, variant_id: str) -> int:
    """Header size of a message with this rank and these ids.

    Args:
        rank: Rank of the full tensor shape (1..6).
        bundle_id, variant_id: The ids that will be sent.

    Returns:
        Bytes, between ``HEADER_MIN_BYTES`` and ``HEADER_MAX_BYTES``.
    """
    rank = _check_int("rank", rank, range(1, MAX_RANK + 1))
    ids = len(_encode_id("bundle_id", bundle_id)) + len(_encode_id("variant_id", variant_id))
    return _FIXED_HEADER_BYTES + ids + 4 * rank


def message_bytes(shape: tuple[int, ...], bits: int, *, bundle_id: str, variant_id: str,
                  data_length: int | None = None) -> int:
    """Exact size of a message carrying a tensor of ``shape``.

    Args:
        shape: Full tensor shape, batch included.
        bits: Bits per element (1, 2, 4, 6, 8, 16, 32).
        bundle_id, variant_id: The ids that will be sent.
        data_length: The encoded data's length for a compressed message (zlib, entropy, an
            image format: it depends on the content, e.g. ``len(encode_codes(...))``); None
            for an uncompressed one, whose length follows from ``shape`` and ``bits``.

    Returns:
        Header bytes plus data bytes.
    """
    dims = _check_shape(shape)
    header = header_bytes(len(dims), bundle_id=bundle_id, variant_id=variant_id)
    if data_length is None:
        return header + data_bytes(math.prod(dims), bits)
    _check_int("bits", bits, WIRE_BITS)
    return header + _check_int("data_length", data_length, range(0, MAX_U32 + 1))


def payload_bytes(
    shape_per_sample: tuple[int, ...], bits: int, batch: int = 1, *, bundle_id: str,
    variant_id: str, data_length: int | None = None,
) -> int:  # fmt: skip
    """Bytes a variant really sends per message.

    Args:
        shape_per_sample: Shape of one sample, without the batch dim (rank 0..5).
        bits: Bits per element (1, 2, 4, 6, 8, 16, 32).
        batch: Samples per message.
        bundle_id, variant_id: The ids that will be sent.
        data_length: As in :func:`message_bytes`: the encoded length of a compressed message.

    Returns:
        ``message_bytes((batch, *shape_per_sample), bits, ...)``.
    """
    shape = (batch, *shape_per_sample)
    return message_bytes(shape, bits, bundle_id=bundle_id, variant_id=variant_id,
                         data_length=data_length)


def data_length_bound(compression: str, shape: tuple[int, ...], bits: int) -> int:
    """The largest ``data_length`` a valid message of this mode, shape and bits can have.

    Args:
        compression: One of ``COMPRESSIONS``.
        shape: Full tensor shape, batch included.
        bits: Bits per element.

    Returns:
        Bytes; an edge sizes its body limit with it, before anything is decoded.
    """
    count = math.prod(_check_shape(shape))
    if compression == "none":
        return data_bytes(count, bits)
    if compression == "zlib":  # zlib's compressBound
        size = data_bytes(count, bits)
        return size + (size >> 12) + (size >> 14) + (size >> 25) + 13
    if compression == "entropy":
        return max_encoded_bytes(count)
    if compression in IMAGE_FORMATS:
        return max_image_data_bytes(shape)
    raise _fail("compression", repr(compression), _describe(COMPRESSION_CODES))


def _check_float(field: str, value: float) -> float:
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        if math.isfinite(float(value)):
            return float(value)
    raise _fail(field, repr(value), "a finite float")


def _check_mode(compression: str, dtype: str, bits: int, shape: tuple[int, ...]) -> None:
    """What each compression carries: entropy codes of rank 2..4, images of (N, 1|3, H, W)."""
    if compression == "entropy":
        if dtype != "uint8":
            raise _fail("dtype", dtype, "uint8 for compression 'entropy' (quantized codes)")
        if len(shape) not in (2, 3, 4):
            raise _fail("rank", len(shape), "2, 3 or 4 for compression 'entropy'")
    elif compression in IMAGE_FORMATS:
        if dtype != "uint8" or bits != 8:
            raise _fail("dtype", f"{dtype} with {bits} bits", f"uint8 with 8 bits for {compression}")
        if len(shape) != 4 or shape[1] not in (1, 3):
            raise _fail("shape", shape, f"(N, 1 or 3, H, W) for {compression}")


def encode_payload(
    tensor: np.ndarray, *, bundle_id: str, variant_id: str, bits: int, scale: float = 1.0,
    offset: float = 0.0, compression: str = "none", tables: EntropyTables | None = None,
    quality: int | None = None,
) -> bytes:  # fmt: skip
    """Encode a tensor as one wire message.

    Args:
        tensor: uint8 codes (packed to ``bits``; raw-input uploads use bits=8), int8 (bits=8),
            float16 (bits=16) or float32 (bits=32); rank 1..6, batch included.
        bundle_id, variant_id: The ids of the bundle and variant (1..64 bytes of UTF-8 each).
        bits: Bits per element, allowed for the tensor's dtype (see the layout table).
        scale, offset: Quantization parameters for the codec, finite.
        compression: "none", "zlib", "entropy" (uint8 codes, with ``tables``), or "png",
            "jpeg", "webp" (uint8 pixels (N, 1 or 3, H, W), bits 8).
        tables: The variant's entropy tables (``tables.bits == bits``); only with "entropy".
        quality: 1..100 for "jpeg" and "webp"; None otherwise.

    Returns:
        The message bytes.
    """
    array = np.asarray(tensor)
    dtype = array.dtype.name
    if dtype not in ALLOWED_BITS:
        raise _fail("dtype", dtype, _describe(ALLOWED_BITS), "quantized codes must be uint8")
    _check_int("bits", bits, ALLOWED_BITS[dtype], f"for dtype {dtype}")
    shape = _check_shape(array.shape)
    bundle, variant = _encode_id("bundle_id", bundle_id), _encode_id("variant_id", variant_id)
    scale, offset = _check_float("scale", scale), _check_float("offset", offset)
    if compression not in COMPRESSION_CODES:
        raise _fail("compression", repr(compression), _describe(COMPRESSION_CODES))
    quality = check_quality(compression, quality)
    _check_mode(compression, dtype, bits, shape)
    if (tables is not None) != (compression == "entropy"):
        found = "no tables" if tables is None else f"tables with compression {compression!r}"
        raise _fail("tables", found, "EntropyTables exactly when compression is 'entropy'")
    if compression == "entropy":
        if tables.bits != bits:
            raise _fail("bits", bits, f"{tables.bits}, the bits of the entropy tables")
        data = encode_codes(array, tables)
    elif compression in IMAGE_FORMATS:
        data = encode_images(array, compression, quality)
    else:
        if dtype == "uint8":
            data = pack_codes(array, bits)
        else:
            data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        if compression == "zlib":
            data = zlib.compress(data)
    if len(data) > MAX_U32:
        raise _fail("data_length", len(data), f"at most {MAX_U32}", "send a smaller batch")
    header = struct.pack(
        f"<4sBBBB{len(bundle)}s{len(variant)}sBBB{len(shape)}IddBI",
        MAGIC, WIRE_VERSION, 0, len(bundle), len(variant), bundle, variant,
        DTYPE_CODES[dtype], bits, len(shape), *shape, scale, offset,
        COMPRESSION_CODES[compression], len(data),
    )  # fmt: skip
    checksum = zlib.crc32(data, zlib.crc32(header))
    return header + struct.pack("<I", checksum) + data


class _Reader:
    """Reads fields in order; a message that ends early names the field it ends in."""

    def __init__(self, message: bytes) -> None:
        self.view = memoryview(message).cast("B")
        self.position = 0

    def take(self, size: int, field: str) -> memoryview:
        left = len(self.view) - self.position
        if size > left:
            raise WireFormatError(
                f"wire payload truncated in field '{field}': needs {size} bytes at offset "
                f"{self.position}, found {left} (the message was cut short; resend it whole)"
            )
        self.position += size
        return self.view[self.position - size : self.position]

    def read(self, fmt: str, field: str) -> tuple:
        layout = struct.Struct(fmt)
        return layout.unpack(self.take(layout.size, field))

    def field(self, fmt: str, name: str, allowed: Container, remedy: str = ""):
        """One value, checked against ``allowed`` before anyone uses it."""
        (value,) = self.read(fmt, name)
        if value not in allowed:
            raise _fail(name, value, _describe(allowed), remedy)
        return value

    def text(self, size: int, field: str) -> str:
        raw = bytes(self.take(size, field))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise _fail(field, raw, "UTF-8 text") from error


def _inflate(data: memoryview, expected: int) -> bytes:
    """Decompress one zlib stream that must give exactly ``expected`` bytes (zip-bomb safe)."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, expected + 1)  # at most one byte more than allowed
    except zlib.error as error:
        raise _fail("data", f"an invalid zlib stream ({error})", "a zlib stream") from error
    if len(raw) > expected or inflater.unconsumed_tail:
        raise _fail("data", f"zlib output over {expected} bytes", f"exactly {expected} bytes")
    if not inflater.eof or inflater.unused_data:
        raise _fail("data", "a truncated zlib stream or bytes after it", "one whole zlib stream")
    if len(raw) != expected:
        raise _fail("data", f"zlib output of {len(raw)} bytes", f"exactly {expected} bytes")
    return raw


def _check_data_length(compression: str, data_length: int, shape: tuple[int, ...],
                       bits: int) -> None:
    expected = data_bytes(math.prod(shape), bits)
    if compression == "none" and data_length != expected:
        raise _fail("data_length", data_length, f"{expected} for shape {shape}, {bits} bits")
    if compression == "zlib" and data_length == 0:
        raise _fail("data_length", 0, "at least 1 for a zlib stream")
    if compression in ("entropy", *IMAGE_FORMATS):
        least = 4 if compression == "entropy" else 5 * shape[0]
        bound = data_length_bound(compression, shape, bits)
        words = compression != "entropy" or data_length % 4 == 0  # a crc32, then u32 words
        if not least <= data_length <= bound or not words:
            kind = "a multiple of 4 in " if compression == "entropy" else ""
            raise _fail("data_length", data_length, f"{kind}{least}..{bound} for {compression} "
                        f"of shape {shape}, {bits} bits")


def read_payload(message: bytes, *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> Payload:
    """Validate one wire message's header, lengths and checksum, without decoding its data.

    An edge reads the header first, admits it against the variant it names (and picks that
    variant's entropy tables), and only then decodes with :func:`decode_data`.

    Args:
        message: The message (any bytes-like object).
        max_elements: Largest element count accepted; bounds every allocation.

    Returns:
        The header as a :class:`Payload` whose ``data`` is the data as sent.

    Raises:
        WireFormatError: Naming the first malformed field, what it holds and what is allowed.
    """
    if isinstance(max_elements, bool) or not isinstance(max_elements, int) or max_elements < 1:
        raise InvalidConfigError(f"max_elements: found {max_elements!r}, allowed an int >= 1")
    reader = _Reader(message)
    reader.field("<4s", "magic", (MAGIC,), "not a splitpack payload")
    reader.field("<B", "version", (WIRE_VERSION,), "sender and edge speak other wire versions")
    reader.field("<B", "flags", (0,), "reserved in version 1")
    bundle_size = reader.field("<B", "bundle_id length", range(1, MAX_ID_BYTES + 1))
    variant_size = reader.field("<B", "variant_id length", range(1, MAX_ID_BYTES + 1))
    bundle_id = reader.text(bundle_size, "bundle_id")
    variant_id = reader.text(variant_size, "variant_id")
    dtype = _DTYPE_BY_CODE[reader.field("<B", "dtype", _DTYPE_BY_CODE, str(_DTYPE_BY_CODE))]
    bits = reader.field("<B", "bits", ALLOWED_BITS[dtype], f"for dtype {dtype}")
    rank = reader.field("<B", "rank", range(1, MAX_RANK + 1))
    shape = reader.read(f"<{rank}I", "shape")
    if 0 in shape:
        raise _fail("shape", shape, "dims >= 1")
    count = math.prod(shape)  # exact: Python ints, at most 6 factors below 2**32
    if count > max_elements:
        raise _fail("shape", shape, f"at most {max_elements} elements", "or raise max_elements")
    (scale,), (offset,) = reader.read("<d", "scale"), reader.read("<d", "offset")
    for field, value in (("scale", scale), ("offset", offset)):
        if not math.isfinite(value):
            raise _fail(field, value, "a finite float")
    codes = _COMPRESSION_BY_CODE
    compression = codes[reader.field("<B", "compression", codes, str(codes))]
    _check_mode(compression, dtype, bits, shape)
    (data_length,) = reader.read("<I", "data_length")
    _check_data_length(compression, data_length, shape, bits)
    header_end = reader.position
    (checksum,) = reader.read("<I", "crc32")
    data = reader.take(data_length, "data")
    if reader.position != len(reader.view):
        trailing = len(reader.view) - reader.position
        found = f"{trailing} trailing byte(s) after the data"
        raise _fail("data", found, "none", "send exactly one message per frame")
    actual = zlib.crc32(data, zlib.crc32(reader.view[:header_end]))
    if actual != checksum:
        raise WireFormatError(
            f"wire payload field 'crc32': found {checksum:#010x}, but header and data give "
            f"{actual:#010x} (the message was corrupted in transit; resend it)"
        )
    return Payload(bundle_id, variant_id, dtype, shape, bits, scale, offset, compression,
                   bytes(data))


def _decode(payload: Payload, tables: EntropyTables | None) -> tuple[np.ndarray, bytes | None]:
    """The tensor, and for none / zlib the bit-packed bytes it was unpacked from."""
    shape, bits, count = payload.shape, payload.bits, math.prod(payload.shape)
    if payload.compression == "entropy":
        if tables is None:
            raise _fail("compression", "'entropy'", "a compression this decoder has tables for",
                        f"variant {payload.variant_id!r} has no entropy tables here")
        if tables.bits != bits:
            raise _fail("bits", bits, f"{tables.bits}, the bits of the variant's entropy tables")
        return decode_codes(payload.data, shape, tables), None
    if payload.compression in IMAGE_FORMATS:
        return decode_images(payload.data, shape, payload.compression), None
    expected = data_bytes(count, bits)
    raw = payload.data if payload.compression == "none" else _inflate(payload.data, expected)
    if payload.dtype == "uint8":
        array = unpack_codes(raw, bits, count)
    else:  # astype copies into native byte order: a writable array that owns its memory
        dtype = payload.dtype
        array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
    return array.reshape(shape), raw


def decode_data(payload: Payload, *, tables: EntropyTables | None = None) -> np.ndarray:
    """Decode the data of a message :func:`read_payload` validated.

    Args:
        payload: From :func:`read_payload`.
        tables: The entropy tables of ``payload.variant_id``; needed for compression "entropy".

    Returns:
        A new, writable array of the payload's shape and dtype.

    Raises:
        WireFormatError: when the data does not decode to exactly that shape (a truncated or
            corrupted stream, an image of another size or mode, no tables for an entropy one).
    """
    return _decode(payload, tables)[0]


def decode_payload(
    message: bytes, *, max_elements: int = DEFAULT_MAX_ELEMENTS,
    tables: EntropyTables | None = None,
) -> tuple[Payload, np.ndarray]:  # fmt: skip
    """Validate and decode one wire message (:func:`read_payload`, then :func:`decode_data`).

    Args:
        message: The message (any bytes-like object).
        max_elements: Largest element count accepted; bounds every allocation.
        tables: The variant's entropy tables, for a message with compression "entropy".

    Returns:
        The header as a :class:`Payload`, and a new array of its shape and dtype.

    Raises:
        WireFormatError: Naming the first malformed field, what it holds and what is allowed.
    """
    payload = read_payload(message, max_elements=max_elements)
    array, raw = _decode(payload, tables)
    return (payload if raw is None else replace(payload, data=raw)), array


def measure_payload_bytes(samples: np.ndarray, *, bundle_id: str, variant_id: str, bits: int,
                          scale: float = 1.0, offset: float = 0.0, compression: str = "none",
                          tables: EntropyTables | None = None,
                          quality: int | None = None) -> PayloadSizes:
    """Encode each sample as its own one-sample message and summarize the true sizes.

    Args:
        samples: A batch, batch first; each row becomes one message of shape (1, ...).
        bundle_id, variant_id, bits, scale, offset, compression, tables, quality: As in
            :func:`encode_payload` (payload sizes in a manifest assume a 16-digit bundle id).

    Returns:
        Mean, p95 and max message bytes, header included.
    """
    array = np.asarray(samples)
    if array.ndim < 1 or len(array) == 0:
        raise InvalidConfigError(f"measure_payload_bytes: samples of shape {array.shape}; "
                                 "expected a non-empty batch")
    sizes = np.array([len(encode_payload(
        array[i:i + 1], bundle_id=bundle_id, variant_id=variant_id, bits=bits, scale=scale,
        offset=offset, compression=compression, tables=tables, quality=quality))
        for i in range(len(array))])  # fmt: skip
    return PayloadSizes(mean=float(sizes.mean()), p95=float(np.percentile(sizes, 95)),
                        max=int(sizes.max()), count=len(sizes))
