"""The compression-unit family spliced in at a cut.

Encoder (end of the head): 1×1 convolution to C' channels, or with stride s > 1 an s×s
convolution of stride s (a strided 1×1 would drop three pixels in four; the s×s patch keeps
them all at the same output size); a linear map along D for token tensors (N, T, D) and
vectors (N, D) → clamp to [-1, 1] → uniform
quantization to b bits: code = round((z + 1) / scale), scale = 2 / (2^b − 1).
Decoder (start of the tail): dequantize (z = code·scale − 1) → 1×1 convolution back to C
channels (a transposed convolution when strided) → BatchNorm → ReLU → 1×1 convolution, so that
the decoder can reproduce signed features as well as post-ReLU ones.

compression_ratio = float32 bytes of the cut tensor ÷ bytes of the packed codes. It counts the
codes only; the wire header (36 bytes + the ids + 4 per dimension: 72–80 bytes in the demo
bundle, see ``runtimes.wire``) is reported
separately as part of ``payload_bytes``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from splitpack.errors import InvalidConfigError

__all__ = [
    "CodecSpec",
    "SUPPORTED_BITS",
    "parse_codec",
    "parse_codecs",
    "codec_space",
    "codec_ladder",
    "check_codec_fits",
    "codes_shape",
    "compression_ratio",
    "quantization_params",
    "build_codec_modules",
]

SUPPORTED_BITS = (1, 2, 4, 8)
CHANNEL_FRACTIONS = (1, 2, 4, 8, 16)  # C' = C / fraction
STRIDES = (1, 2, 4)
SPACE_BITS = (8, 4, 2, 1)

_CODEC_RE = re.compile(r"c(\d+)s(\d+)b(\d+)")


@dataclass(frozen=True, order=True)
class CodecSpec:
    """One compression unit: ``channels`` kept (C'), spatial ``stride``, quantization ``bits``."""

    channels: int
    stride: int
    bits: int

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise InvalidConfigError(
                f"codec {self.name}: {self.bits} bits is not supported; allowed: {', '.join(map(str, SUPPORTED_BITS))}"
            )
        if self.channels < 1 or self.stride < 1:
            raise InvalidConfigError(f"codec {self.name}: channels and stride must be >= 1")

    @property
    def name(self) -> str:
        """The command-line form, ``c{channels}s{stride}b{bits}``."""
        return f"c{self.channels}s{self.stride}b{self.bits}"

    def __str__(self) -> str:
        return self.name


def parse_codec(text: str) -> CodecSpec:
    """Parse ``c4s1b8`` into a ``CodecSpec``.

    Raises:
        InvalidConfigError: malformed text or unsupported bits.
    """
    match = _CODEC_RE.fullmatch(text.strip())
    if not match:
        raise InvalidConfigError(
            f"codec {text!r} is malformed; write c{{channels}}s{{stride}}b{{bits}}, e.g. c4s1b8 "
            f"(bits in {', '.join(map(str, SUPPORTED_BITS))})"
        )
    return CodecSpec(*(int(group) for group in match.groups()))


def parse_codecs(text: str) -> list[CodecSpec] | None:
    """Parse a comma-separated codec list; ``all`` gives None (the whole space of each cut)."""
    if text.strip() == "all":
        return None
    return [parse_codec(part) for part in text.split(",") if part.strip()]


def codes_shape(cut_shape: tuple[int, ...], codec: CodecSpec) -> tuple[int, ...]:
    """Per-sample shape of the codes the encoder emits."""
    check_codec_fits(cut_shape, codec)
    if len(cut_shape) == 3:
        channels, height, width = cut_shape
        return (codec.channels, height // codec.stride, width // codec.stride)
    return tuple(cut_shape[:-1]) + (codec.channels,)


def check_codec_fits(cut_shape: tuple[int, ...], codec: CodecSpec, cut_label: str = "the cut") -> None:
    """Raise ``InvalidConfigError`` when ``codec`` cannot apply to a tensor of ``cut_shape``."""
    if len(cut_shape) not in (1, 2, 3):
        raise InvalidConfigError(
            f"codec {codec}: {cut_label} has per-sample shape {cut_shape}; codecs apply to feature maps "
            "(C, H, W), tokens (T, D) and vectors (D)"
        )
    channels = cut_shape[0] if len(cut_shape) == 3 else cut_shape[-1]
    if codec.channels > channels:
        raise InvalidConfigError(
            f"codec {codec}: {codec.channels} channels is more than {cut_label} has ({channels}); "
            f"allowed: 1..{channels}"
        )
    if len(cut_shape) != 3 and codec.stride != 1:
        raise InvalidConfigError(
            f"codec {codec}: a stride applies to feature maps only; {cut_label} is a token/vector tensor "
            f"of shape {cut_shape}: use s1"
        )
    if len(cut_shape) == 3 and (cut_shape[1] % codec.stride or cut_shape[2] % codec.stride):
        raise InvalidConfigError(
            f"codec {codec}: stride {codec.stride} does not divide {cut_label}'s spatial size "
            f"{cut_shape[1]}x{cut_shape[2]}; allowed strides: "
            f"{', '.join(str(s) for s in STRIDES if cut_shape[1] % s == 0 and cut_shape[2] % s == 0)}"
        )


def compression_ratio(cut_shape: tuple[int, ...], codec: CodecSpec) -> float:
    """float32 bytes of one sample of the cut tensor ÷ bytes of its packed codes."""
    raw = 4 * math.prod(cut_shape)
    sent = math.ceil(math.prod(codes_shape(cut_shape, codec)) * codec.bits / 8)
    return raw / sent


def quantization_params(bits: int) -> tuple[float, float]:
    """(scale, offset) with value = code·scale + offset over [-1, 1]."""
    return 2.0 / (2**bits - 1), -1.0


def codec_space(cut_shape: tuple[int, ...]) -> list[CodecSpec]:
    """Every codec the compiler considers at a cut: C' = C/1 ... C/16 (at least 1), stride 1, 2
    or 4 (feature maps whose size it divides), bits 8, 4, 2, 1 — sorted by compression ratio."""
    channels = cut_shape[0] if len(cut_shape) == 3 else cut_shape[-1]
    strides = [
        s for s in STRIDES
        if len(cut_shape) == 3 and cut_shape[1] % s == 0 and cut_shape[2] % s == 0 and cut_shape[1] // s >= 1
    ] or [1]
    space = {
        CodecSpec(max(1, channels // fraction), stride, bits)
        for fraction in CHANNEL_FRACTIONS
        for stride in strides
        for bits in SPACE_BITS
    }
    return sorted(space, key=lambda c: (compression_ratio(cut_shape, c), c))


def codec_ladder(cut_shape: tuple[int, ...], count: int = 16) -> list[CodecSpec]:
    """A subset of the space for grids that cannot afford all of it: at every distinct ratio
    the codec with the most bits (stride 1 first), then, up to ``count``, the fewest-bits
    alternative at evenly spread ratios (so that the grid also sees how bits trade against
    channels at one ratio). Sorted by ratio."""
    space = codec_space(cut_shape)
    ratios = sorted({compression_ratio(cut_shape, codec) for codec in space})
    at = {r: [c for c in space if compression_ratio(cut_shape, c) == r] for r in ratios}
    primary = {r: max(at[r], key=lambda c: (c.bits, -c.stride)) for r in ratios}
    alternates = [min(at[r], key=lambda c: (c.bits, c.stride)) for r in ratios]
    alternates = [c for c, r in zip(alternates, ratios) if c != primary[r]]
    chosen = list(primary.values())
    room = max(0, count - len(chosen))
    if alternates and room:
        step = len(alternates) / min(room, len(alternates))
        chosen += [alternates[int(i * step)] for i in range(min(room, len(alternates)))]
    return sorted(chosen, key=lambda c: (compression_ratio(cut_shape, c), c))


def build_codec_modules(cut_shape: tuple[int, ...], codec: CodecSpec):
    """Build the torch encoder and decoder for one codec at one cut.

    Returns:
        ``(encoder, decoder)``: ``encoder(features) -> codes`` (uint8 in eval mode; in training
        mode it returns dequantized values through a straight-through estimator) and
        ``decoder(codes) -> features``.
    """
    from splitpack.compiler._codec_torch import build_modules

    check_codec_fits(cut_shape, codec)
    return build_modules(cut_shape, codec)
