"""Entropy coding of quantized codes: rANS with static per-channel tables calibrated at compile time.

A bundle's split variant may send its codes entropy-coded instead of bit-packed. The tables are
per-channel histograms of the training codes (:func:`calibrate_tables`), smoothed so that every
symbol stays encodable, stored in the bundle (:func:`tables_to_bytes`, :func:`load_tables`) and
hashed like every artifact. Coding is ``constriction``'s ANS coder (a stack: last in, first
out) with one categorical model per channel; each channel's symbols go through one call, so
no Python loop runs per symbol. Where channels hold only a few codes each (a pooled vector of
one sample), one call codes every symbol with its channel's probabilities instead, which is
cheaper than a call per channel; constriction documents both as the same code (its
``perfect=False`` models are built the same way, eagerly or lazily), and a test checks it.

Channel axis of a codes array (batch first): ``(N, C, H, W)`` is axis 1; ``(N, T, D)`` and
``(N, D)`` the last axis (token tensors compress along D). Symbols are coded channel-major:
every symbol of channel 0 in C order of the other axes, then channel 1, and so on.

Stream layout (the ``data`` of a wire message with compression ``entropy``):

=========  ===========  =====================================================================
field      bytes        content
=========  ===========  =====================================================================
crc32      4 [<I]       ``zlib.crc32`` of the codes as uint8 in C order, before coding
words      4 * k [<I]   constriction's ``AnsCoder.get_compressed()``, little-endian u32 words
=========  ===========  =====================================================================

The decoded size is fixed by the shape the caller passes (the wire header's), never by the
stream; a stream that leaves words over, or whose codes fail their crc32 (truncated, corrupted,
or coded with other tables or another coder version), is a :class:`WireFormatError`.

Runs on devices and on the edge: numpy, constriction and the standard library only.
"""

from __future__ import annotations

import io
import math
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import constriction
import numpy as np

from splitpack.errors import InvalidBundleError, InvalidConfigError
from splitpack.formats.bitpack import CODE_BITS, _fail

__all__ = [
    "TABLES_FORMAT", "TABLES_VERSION", "PRECISION_BITS", "EntropyTables", "channel_axis",
    "calibrate_tables", "encode_codes", "decode_codes", "max_encoded_bytes", "tables_to_bytes",
    "save_tables", "load_tables",
]  # fmt: skip

TABLES_FORMAT = "splitpack-entropy-tables"
TABLES_VERSION = 1
PRECISION_BITS = 24  # constriction's default models: each symbol costs at most 24 bits
TABLE_TOTAL = 2**16  # calibrated rows are scaled to about this sum: an unseen code costs <= ~16 bits
MAX_FREQUENCY = 2**24  # float32 holds every integer up to here exactly
MAX_CHANNELS = 2**16
MAX_TABLES_BYTES = 64 * 2**20
_TABLE_KEYS = ("format", "version", "bits", "frequencies", "probe_crc32", "coder")
_CALIBRATION_BLOCK = 4_000_000  # codes per bincount call: bounds the index array's memory
_CODER_ERRORS = (ValueError, RuntimeError, OverflowError, TypeError)
# One call for all symbols when (codes per channel) x (alphabet) is at most this: the lazy
# models cost ~1 ns per table entry and symbol, a call per channel ~0.7 us (measured).
_ONE_CALL_MAX_ENTRIES = 512
_FAMILY = constriction.stream.model.Categorical(perfect=False)


def _coder_version() -> str:
    try:
        return metadata.version("constriction")
    except metadata.PackageNotFoundError:  # an unpackaged build: name it by what it is
        return "unknown"


CODER = f"constriction {_coder_version()} stream.stack.AnsCoder, model.Categorical(perfect=False)"


@dataclass(frozen=True, eq=False)
class EntropyTables:
    """Static per-channel symbol frequencies for codes of ``bits`` bits.

    Attributes:
        bits: Bits per code: 1, 2, 4, 6 or 8; the alphabet is ``0 .. 2**bits - 1``.
        frequencies: uint32 array (channels, 2**bits), every entry in 1 .. 2**24, so that any
            code is encodable. Stored read-only.
    """

    bits: int
    frequencies: np.ndarray
    _models: tuple = field(init=False, repr=False)
    _probabilities: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or self.bits not in CODE_BITS:
            raise InvalidConfigError(f"entropy tables: bits {self.bits!r} is not allowed; "
                                     f"allowed: {', '.join(map(str, CODE_BITS))}")
        values = np.asarray(self.frequencies)
        symbols = 1 << self.bits
        if values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.integer):
            raise InvalidConfigError(f"entropy tables: frequencies of dtype {values.dtype}; "
                                     "expected integers (uint32)")
        if values.ndim != 2 or values.shape[1] != symbols or not 1 <= values.shape[0] <= MAX_CHANNELS:
            raise InvalidConfigError(
                f"entropy tables: frequencies of shape {values.shape}; expected (channels, "
                f"{symbols}) for {self.bits}-bit codes, with 1..{MAX_CHANNELS} channels")
        low, high = int(values.min()), int(values.max())
        if low < 1 or high > MAX_FREQUENCY:
            raise InvalidConfigError(
                f"entropy tables: frequencies in [{low}, {high}]; every entry must be in "
                f"[1, {MAX_FREQUENCY}] so that every code stays encodable")
        frozen = values.astype(np.uint32)  # a copy the caller cannot change
        frozen.flags.writeable = False
        object.__setattr__(self, "frequencies", frozen)
        # float32 holds these integers exactly: encoder and decoder build identical models.
        probabilities = frozen.astype(np.float32)
        models = tuple(constriction.stream.model.Categorical(row, perfect=False)
                       for row in probabilities)
        object.__setattr__(self, "_models", models)
        object.__setattr__(self, "_probabilities", probabilities)

    @property
    def channels(self) -> int:
        """Number of channels the tables cover."""
        return int(self.frequencies.shape[0])



def channel_axis(rank: int) -> int:
    """The channel axis of a codes array of ``rank`` (batch included): 1 for (N, C, H, W), the
    last axis for (N, T, D) and (N, D).

    Raises:
        WireFormatError: for any other rank.
    """
    if rank == 4:
        return 1
    if rank in (2, 3):
        return rank - 1
    raise _fail("shape", f"rank {rank}", "rank 2 (N, D), 3 (N, T, D) or 4 (N, C, H, W) for "
                "entropy-coded codes")


def max_encoded_bytes(count: int) -> int:
    """The most bytes :func:`encode_codes` can produce for ``count`` codes, whatever the tables.

    Each code costs at most ``PRECISION_BITS`` bits; the coder adds at most two words.
    """
    return 4 + 4 * (-(-count * PRECISION_BITS // 32) + 2)


def calibrate_tables(codes: np.ndarray, bits: int) -> EntropyTables:
    """Per-channel histograms of training codes, smoothed so that every code is encodable.

    Each channel's counts get one more per symbol (Laplace smoothing) and are scaled to sum to
    about ``TABLE_TOTAL``, every entry at least 1: a code never seen in calibration costs at
    most about 16 bits, and the common ones lose almost nothing.

    Args:
        codes: Integer codes in [0, 2**bits), batch first: (N, C, H, W), (N, T, D) or (N, D).
        bits: Bits per code: 1, 2, 4, 6 or 8.

    Returns:
        The tables, one row per channel.
    """
    if isinstance(bits, bool) or bits not in CODE_BITS:
        raise InvalidConfigError(f"calibrate_tables: bits {bits!r} is not allowed; allowed: "
                                 f"{', '.join(map(str, CODE_BITS))}")
    values = np.asarray(codes)
    if values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.integer):
        raise InvalidConfigError(f"calibrate_tables: codes of dtype {values.dtype}; expected "
                                 "integer codes (uint8)")
    if values.ndim not in (2, 3, 4) or values.size == 0:
        raise InvalidConfigError(f"calibrate_tables: codes of shape {values.shape}; expected a "
                                 "non-empty (N, C, H, W), (N, T, D) or (N, D) array")
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= 1 << bits:
        raise InvalidConfigError(f"calibrate_tables: codes in [{low}, {high}]; {bits}-bit codes "
                                 f"are in [0, {(1 << bits) - 1}]")
    axis, symbols = channel_axis(values.ndim), 1 << bits
    channels = values.shape[axis]
    if channels > MAX_CHANNELS:
        raise InvalidConfigError(f"calibrate_tables: {channels} channels; at most {MAX_CHANNELS}")
    counts = np.zeros(channels * symbols, dtype=np.int64)
    offsets = (np.arange(channels, dtype=np.int64) * symbols)[:, np.newaxis]
    per_sample = values[0].size
    step = max(1, _CALIBRATION_BLOCK // per_sample)
    for start in range(0, len(values), step):
        block = np.moveaxis(values[start:start + step], axis, 0).reshape(channels, -1)
        counts += np.bincount((block + offsets).reshape(-1), minlength=channels * symbols)
    smoothed = counts.reshape(channels, symbols) + 1
    scaled = np.rint(smoothed * (TABLE_TOTAL / smoothed.sum(axis=1, keepdims=True)))
    return EntropyTables(bits, np.maximum(scaled, 1).astype(np.uint32))


def _check_codes(codes: np.ndarray, tables: EntropyTables) -> np.ndarray:
    values = np.asarray(codes)
    if values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.integer):
        raise _fail("codes", f"dtype {values.dtype}", "integer codes", "use .astype(np.uint8)")
    axis = channel_axis(values.ndim)
    if values.shape[axis] != tables.channels:
        raise _fail("codes", f"{values.shape[axis]} channels (shape {values.shape})",
                    f"{tables.channels}, the channels of the entropy tables")
    if values.size == 0:
        raise _fail("codes", f"shape {values.shape}", "at least one code")
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= 1 << tables.bits:
        raise _fail("codes", f"values in [{low}, {high}]",
                    f"values in [0, {(1 << tables.bits) - 1}] for bits={tables.bits}")
    return np.ascontiguousarray(values, dtype=np.uint8)


def _one_call(per_channel: int, tables: EntropyTables) -> bool:
    return per_channel << tables.bits <= _ONE_CALL_MAX_ENTRIES


def _encode_symbols(symbols: np.ndarray, tables: EntropyTables, *,
                    one_call: bool | None = None) -> np.ndarray:
    """ANS words of ``symbols`` (channels, count), channel 0 decoded first."""
    coder = constriction.stream.stack.AnsCoder()
    per_channel = symbols.shape[1]
    if _one_call(per_channel, tables) if one_call is None else one_call:
        rows = np.repeat(tables._probabilities, per_channel, axis=0)  # channel-major, as symbols
        coder.encode_reverse(symbols.reshape(-1), _FAMILY, rows)
        return coder.get_compressed()
    for channel in range(tables.channels - 1, -1, -1):  # a stack: the last pushed pops first
        coder.encode_reverse(symbols[channel], tables._models[channel])
    return coder.get_compressed()


def _decode_symbols(coder, per_channel: int, tables: EntropyTables, *,
                    one_call: bool | None = None) -> np.ndarray:
    """The inverse of :func:`_encode_symbols`: (channels, per_channel) int32 symbols."""
    if _one_call(per_channel, tables) if one_call is None else one_call:
        rows = np.repeat(tables._probabilities, per_channel, axis=0)
        return coder.decode(_FAMILY, rows).reshape(tables.channels, per_channel)
    symbols = np.empty((tables.channels, per_channel), dtype=np.int32)
    for channel in range(tables.channels):
        symbols[channel] = coder.decode(tables._models[channel], per_channel)
    return symbols


def encode_codes(codes: np.ndarray, tables: EntropyTables) -> bytes:
    """Entropy-code one codes array (see the module doc for the layout).

    Args:
        codes: uint8 (or other integer) codes in [0, 2**tables.bits), batch first, with the
            tables' number of channels on the channel axis.
        tables: The variant's tables.

    Returns:
        The stream: crc32 of the codes, then the ANS words; at most ``max_encoded_bytes``.
    """
    values = _check_codes(codes, tables)
    axis = channel_axis(values.ndim)
    symbols = np.moveaxis(values, axis, 0).reshape(tables.channels, -1).astype(np.int32)
    words = _encode_symbols(symbols, tables).astype("<u4", copy=False)
    return struct.pack("<I", zlib.crc32(values)) + words.tobytes()


def decode_codes(data: bytes, shape: tuple[int, ...], tables: EntropyTables) -> np.ndarray:
    """Decode a stream of :func:`encode_codes`, bit-exact.

    Args:
        data: The stream (any bytes-like object).
        shape: The codes' shape, batch first (from the wire header): it alone fixes how many
            codes are decoded.
        tables: The tables the sender coded with.

    Returns:
        A new, writable uint8 array of ``shape``.

    Raises:
        WireFormatError: naming what is wrong with the stream or the shape.
    """
    shape = tuple(int(dim) for dim in shape)
    axis = channel_axis(len(shape))
    if min(shape) < 1:
        raise _fail("shape", shape, "dims >= 1")
    if shape[axis] != tables.channels:
        raise _fail("shape", f"{shape[axis]} channels (shape {shape})",
                    f"{tables.channels}, the channels of the variant's entropy tables")
    count = math.prod(shape)
    view = memoryview(data).cast("B")
    if len(view) < 4 or len(view) % 4 or len(view) > max_encoded_bytes(count):
        raise _fail("data", f"an entropy-coded stream of {len(view)} bytes",
                    f"4 bytes of crc32 plus whole 32-bit words, at most {max_encoded_bytes(count)} "
                    f"bytes for {count} codes", "the stream was truncated or is not entropy-coded")
    (checksum,) = struct.unpack_from("<I", view, 0)
    words = np.frombuffer(view, dtype="<u4", offset=4).astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        symbols = _decode_symbols(coder, count // tables.channels, tables)
        left_over = not coder.is_empty()
    except _CODER_ERRORS as error:
        raise _fail("data", f"an invalid entropy-coded stream ({error})",
                    "a stream written by encode_codes", "it was truncated or corrupted") from None
    if left_over:
        raise _fail("data", f"an entropy-coded stream with words left after the last of {count} "
                    "codes", "a stream that ends with its last code",
                    "it was truncated or corrupted, or coded with other tables")
    moved = (shape[axis],) + tuple(dim for i, dim in enumerate(shape) if i != axis)
    codes = np.ascontiguousarray(np.moveaxis(symbols.astype(np.uint8).reshape(moved), 0, axis))
    actual = zlib.crc32(codes)
    if actual != checksum:
        raise _fail("data", f"decoded codes with crc32 {actual:#010x}",
                    f"the sender's crc32 {checksum:#010x}",
                    "the payload was corrupted, or the device and the edge code with other tables "
                    "or entropy coder versions; deploy one bundle on both")
    return codes


def _probe_crc32(tables: EntropyTables) -> int:
    """crc32 of the words that code every symbol once per channel: it tells whether this
    host's coder turns the tables into the same models as the one that calibrated them."""
    probe = np.tile(np.arange(1 << tables.bits, dtype=np.int32), (tables.channels, 1))
    return zlib.crc32(_encode_symbols(probe, tables).astype("<u4", copy=False).tobytes())


def tables_to_bytes(tables: EntropyTables) -> bytes:
    """The tables as an ``.npz`` file (``format``, ``version``, ``bits``, ``frequencies``,
    ``probe_crc32``, ``coder``), read back by :func:`load_tables`."""
    buffer = io.BytesIO()
    np.savez(buffer, format=np.array(TABLES_FORMAT), version=np.array(TABLES_VERSION),
             bits=np.array(tables.bits), frequencies=tables.frequencies,
             probe_crc32=np.array(_probe_crc32(tables), dtype=np.uint32), coder=np.array(CODER))
    return buffer.getvalue()


def save_tables(tables: EntropyTables, path: str | os.PathLike[str]) -> Path:
    """Write :func:`tables_to_bytes` to ``path`` (conventionally ``entropy_tables.npz``)."""
    target = Path(path)
    target.write_bytes(tables_to_bytes(tables))
    return target


def _scalar(arrays: dict[str, np.ndarray], key: str, kind: str, problem) -> object:
    value = arrays[key]
    if value.ndim != 0 or value.dtype.kind not in kind:
        raise problem(f"'{key}' is a {value.dtype} array of shape {value.shape}; expected a scalar")
    return value.item()


def load_tables(source: str | os.PathLike[str] | bytes, *, expect_bits: int | None = None,
                expect_channels: int | None = None, name: str | None = None) -> EntropyTables:
    """Read and check tables written by :func:`tables_to_bytes` / :func:`save_tables`.

    Args:
        source: The ``.npz`` file or its bytes.
        expect_bits, expect_channels: What the variant sends; tables for other codes are refused.
        name: How errors name the file (default: the path, or ``<bytes>``).

    Returns:
        The tables.

    Raises:
        InvalidBundleError: naming the file and what is wrong: unreadable, not this format or
            version, bad frequencies, tables for other bits or channels, or a coder on this
            host that would code them differently from the one that calibrated them.
    """
    is_bytes = isinstance(source, (bytes, bytearray, memoryview))
    label = name or ("<bytes>" if is_bytes else str(source))

    def problem(reason: str) -> InvalidBundleError:
        return InvalidBundleError(f"entropy tables {label}: {reason}; recompile the bundle (its "
                                  "entropy tables are written by the compiler)")

    if is_bytes:
        raw = bytes(source)
    else:
        try:
            raw = Path(source).read_bytes()
        except OSError as exc:
            raise problem(f"cannot be read ({exc.strerror})") from None
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            unpacked = sum(member.file_size for member in archive.infolist())
        if unpacked > MAX_TABLES_BYTES:
            raise problem(f"unpacks to {unpacked} bytes, over {MAX_TABLES_BYTES}")
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise problem(f"not a readable .npz file ({exc})") from None
    missing = [key for key in _TABLE_KEYS if key not in arrays]
    unknown = sorted(set(arrays) - set(_TABLE_KEYS))
    if missing or unknown:
        raise problem(f"keys {sorted(arrays)}; missing {missing}, unknown {unknown} (expected "
                      f"{', '.join(_TABLE_KEYS)})")
    if _scalar(arrays, "format", "U", problem) != TABLES_FORMAT:
        raise problem(f"format {arrays['format'].item()!r}; expected {TABLES_FORMAT!r}")
    version = _scalar(arrays, "version", "iu", problem)
    if version != TABLES_VERSION:
        raise problem(f"version {version}; this splitpack reads version {TABLES_VERSION}")
    bits, probe = _scalar(arrays, "bits", "iu", problem), _scalar(arrays, "probe_crc32", "u", problem)
    coder = _scalar(arrays, "coder", "U", problem)
    frequencies = arrays["frequencies"]
    if frequencies.dtype != np.uint32:
        raise problem(f"frequencies of dtype {frequencies.dtype}; expected uint32")
    try:
        tables = EntropyTables(bits, frequencies)
    except InvalidConfigError as exc:
        raise problem(str(exc).removeprefix("entropy tables: ")) from None
    wanted = (tables.bits if expect_bits is None else expect_bits,
              tables.channels if expect_channels is None else expect_channels)
    if (tables.bits, tables.channels) != wanted:
        raise problem(f"made for {tables.bits}-bit codes of {tables.channels} channels, but the "
                      f"variant sends {wanted[0]}-bit codes of {wanted[1]} channels")
    if _probe_crc32(tables) != probe:
        raise problem(f"this host's entropy coder ({CODER}) codes them differently from the one "
                      f"that calibrated them ({coder}); install that constriction version")
    return tables
