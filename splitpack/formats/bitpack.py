"""Bit packing of quantized codes, and the field checks every wire module reports with.

Codes of ``bits`` < 8 are packed as one little-endian bit stream: bit ``j`` of code ``i`` is
bit ``(i * bits + j) % 8`` of byte ``(i * bits + j) // 8``, so the first code sits in the least
significant bits, and a 6-bit code may straddle two bytes. The padding bits of the last byte are
zero, and decoding checks that.

Errors are :class:`~splitpack.errors.WireFormatError` naming the field, as for the rest of the
wire payload (:mod:`splitpack.formats.wire`). Runs on devices: numpy and the standard library
only.
"""

from __future__ import annotations

from collections.abc import Container

import numpy as np

from splitpack.errors import WireFormatError

__all__ = ["CODE_BITS", "WIRE_BITS", "data_bytes", "packed_size", "pack_codes", "unpack_codes",
           "round_trip_codes"]

CODE_BITS = (1, 2, 4, 6, 8)
WIRE_BITS = (1, 2, 4, 6, 8, 16, 32)


def _describe(allowed: Container) -> str:
    if isinstance(allowed, range):
        return f"{allowed.start}..{allowed.stop - 1}"
    return "one of " + ", ".join(repr(value) for value in allowed)


def _fail(field: str, found: object, allowed: str, remedy: str = "") -> WireFormatError:
    """``found`` is a value (shown as repr) or a str that describes it (shown as is)."""
    found = found if isinstance(found, str) else repr(found)
    message = f"wire payload field '{field}': found {found}, allowed {allowed}"
    return WireFormatError(f"{message} ({remedy})" if remedy else message)


def _check_int(field: str, value: int, allowed: Container, remedy: str = "") -> int:
    # int() first: a numpy integer is not on range's fast path and would be searched linearly
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise _fail(field, repr(value), _describe(allowed), remedy)
    if int(value) not in allowed:
        raise _fail(field, int(value), _describe(allowed), remedy)
    return int(value)


def data_bytes(count: int, bits: int) -> int:
    """Bytes of uncompressed data for ``count`` elements at any wire bit width.

    Args:
        count: Number of elements (>= 0).
        bits: 1, 2, 4, 6, 8 (codes), 16 (float16) or 32 (float32).

    Returns:
        ``ceil(count * bits / 8)``.
    """
    bits = _check_int("bits", bits, WIRE_BITS)
    return (_check_int("count", count, range(0, 2**63)) * bits + 7) // 8


def packed_size(count: int, bits: int) -> int:
    """:func:`data_bytes` for code widths only (bits 1, 2, 4, 6 or 8)."""
    return data_bytes(count, _check_int("bits", bits, CODE_BITS))


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Pack integer codes in [0, 2**bits) into bytes, little-endian within each byte.

    Args:
        codes: Integer array of any shape, read in C order.
        bits: Bits per code: 1, 2, 4, 6 or 8.

    Returns:
        ``packed_size(codes.size, bits)`` bytes; the last byte's padding bits are zero.
    """
    bits = _check_int("bits", bits, CODE_BITS)
    values = np.asarray(codes)
    if values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.integer):
        raise _fail("codes", f"dtype {values.dtype}", "integer dtypes", "use .astype(np.uint8)")
    flat = values.reshape(-1)
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        found = f"values in [{int(flat.min())}, {int(flat.max())}]"
        raise _fail("codes", found, f"values in [0, {(1 << bits) - 1}] for bits={bits}")
    flat = flat.astype(np.uint8, copy=False)
    if bits == 8:
        return flat.tobytes()
    if 8 % bits:  # codes straddle bytes: through the bit stream itself
        stream = (flat[:, None] >> np.arange(bits, dtype=np.uint8)) & np.uint8(1)
        return np.packbits(stream.reshape(-1), bitorder="little").tobytes()
    per_byte = 8 // bits
    if flat.size % per_byte:
        flat = np.concatenate([flat, np.zeros(-flat.size % per_byte, dtype=np.uint8)])
    groups = flat.reshape(-1, per_byte)
    packed = groups[:, 0].copy()
    for slot in range(1, per_byte):  # at most 7 whole-column operations, none per element
        packed |= groups[:, slot] << np.uint8(slot * bits)
    return packed.tobytes()


def unpack_codes(data: bytes, bits: int, count: int) -> np.ndarray:
    """Unpack codes written by :func:`pack_codes` (its exact inverse).

    Args:
        data: Exactly ``packed_size(count, bits)`` bytes, with zero padding bits.
        bits: Bits per code: 1, 2, 4, 6 or 8.
        count: Number of codes.

    Returns:
        A new, writable uint8 array of ``count`` codes.
    """
    expected = packed_size(count, bits)
    if len(data) != expected:
        raise _fail("data", f"{len(data)} bytes", f"{expected} for {count} codes of {bits} bits")
    packed = np.frombuffer(data, dtype=np.uint8)
    if bits == 8:
        return packed.copy()
    if 8 % bits:
        stream = np.unpackbits(packed, bitorder="little")
        if stream[count * bits:].any():
            raise _fail("data", "nonzero padding bits in the last byte", "zero padding bits")
        weights = (np.uint8(1) << np.arange(bits, dtype=np.uint8))
        return (stream[:count * bits].reshape(count, bits) * weights).sum(axis=1, dtype=np.uint8)
    per_byte, mask = 8 // bits, np.uint8((1 << bits) - 1)
    groups = np.empty((packed.size, per_byte), dtype=np.uint8)
    for slot in range(per_byte):  # column-wise: 10x faster than broadcasting over slots
        np.bitwise_and(packed >> np.uint8(slot * bits), mask, out=groups[:, slot])
    codes = groups.reshape(-1)
    if codes[count:].any():
        raise _fail("data", "nonzero padding bits in the last byte", "zero padding bits")
    return codes[:count]


def round_trip_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """``codes`` as a tail receives them: packed to ``bits`` bits and unpacked again.

    Args:
        codes: Integer codes in [0, 2**bits), any shape.
        bits: Bits per code: 1, 2, 4, 6 or 8.

    Returns:
        A uint8 array of the same shape.
    """
    codes = np.asarray(codes)
    return unpack_codes(pack_codes(codes, bits), bits, codes.size).reshape(codes.shape)
