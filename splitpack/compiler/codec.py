"""The compression-unit family spliced in at a cut: a ladder that starts lossless.

Three methods, one notation each:

* ``q{B}`` — **calibrated quantization** of the cut tensor itself, B bits, no training: per
  channel, ``code = clip(round((x - low_c) / step_c), 0, 2^B - 1)`` and ``x̂ = code·step_c +
  low_c``, with ``low_c``/``step_c`` chosen on the training features (the clipping range among
  min/max and a few percentiles that gives the least squared error, per channel). All channels
  are kept; the compression ratio is 32/B.
* ``c{C}s{S}b{B}`` — a **learned unit**, the model frozen: the encoder projects to C channels
  (a 1×1 convolution, an S×S convolution of stride S, or a linear map along D for tokens and
  vectors), then quantizes per channel as above with a *learned* range (initialized by the
  calibration, trained through the rounding with a straight-through estimator). The decoder
  dequantizes, projects back (1×1, or a transposed S×S convolution) and adds a small residual
  refinement (3×3 conv → ReLU → 1×1 conv, whose last layer starts at zero). The projections
  start at the principal components of the training features (of S×S patches when strided),
  and a unit that keeps all channels at stride 1 starts at the identity: before training it
  *is* calibrated quantization, and training only keeps a result that is better on held-out
  training features, so it is never worse than ``q{B}`` by construction.
* ``c{C}s{S}b{B}t`` — the same learned unit, then the **tail fine-tuned**: the decoder and the
  rest of the model (what runs on the edge) trained by distillation from the original model's
  outputs, with the head and encoder fixed, so the device's artifacts do not change.

The per-channel quantization parameters are constants inside the head (encoder) and the tail
(decoder) graphs; on the wire the codes travel as integers (scale 1, offset 0).

compression_ratio = float32 bytes of the cut tensor ÷ bytes of the bit-packed codes. It counts
the codes only; the wire header (36 bytes + the ids + 4 per dimension: 72–80 bytes in the demo
bundle, see ``formats.wire``) and entropy coding are reported separately in ``payload_bytes``.
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
    "METHODS",
    "cut_channels",
    "kept_channels",
    "calibrated_codecs",
    "codec_space",
    "codec_ladder",
    "check_codec_fits",
    "codes_shape",
    "compression_ratio",
    "quantization_params",
]

SUPPORTED_BITS = (1, 2, 4, 6, 8)
CHANNEL_FRACTIONS = (1, 2, 4, 8, 16)  # C' = C / fraction
STRIDES = (1, 2, 4)
SPACE_BITS = (8, 4, 2, 1)

METHODS = ("calibrated", "learned", "finetuned")

_CODEC_RE = re.compile(r"c(\d+)s(\d+)b(\d+)(t?)")
_CALIBRATED_RE = re.compile(r"q(\d+)")


@dataclass(frozen=True, order=True)
class CodecSpec:
    """One compression unit: ``channels`` kept (C'), spatial ``stride``, quantization ``bits``,
    and the ``method`` (see the module docstring). A calibrated codec keeps every channel of the
    cut; its ``channels`` is 0 ("all") and its stride 1."""

    channels: int
    stride: int
    bits: int
    method: str = "learned"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidConfigError(f"codec method {self.method!r} is unknown; allowed: {', '.join(METHODS)}")
        if self.bits not in SUPPORTED_BITS:
            raise InvalidConfigError(
                f"codec {self.name}: {self.bits} bits is not supported; allowed: {', '.join(map(str, SUPPORTED_BITS))}"
            )
        if self.method == "calibrated":
            if self.channels != 0 or self.stride != 1:
                raise InvalidConfigError(f"codec {self.name}: calibrated quantization keeps every channel at "
                                         "stride 1 (channels=0, stride=1); use c{C}s{S}b{B} for a projection")
        elif self.channels < 1 or self.stride < 1:
            raise InvalidConfigError(f"codec {self.name}: channels and stride must be >= 1")

    @classmethod
    def calibrated(cls, bits: int) -> "CodecSpec":
        """Calibrated quantization of the cut tensor at ``bits`` bits (``q{bits}``)."""
        return cls(0, 1, bits, "calibrated")

    @property
    def name(self) -> str:
        """The command-line form: ``q{bits}``, ``c{channels}s{stride}b{bits}`` or with ``t``."""
        if self.method == "calibrated":
            return f"q{self.bits}"
        suffix = "t" if self.method == "finetuned" else ""
        return f"c{self.channels}s{self.stride}b{self.bits}{suffix}"

    @property
    def trains_tail(self) -> bool:
        """True when the tail (decoder + rest of the model) is fine-tuned by distillation."""
        return self.method == "finetuned"

    def with_method(self, method: str) -> "CodecSpec":
        """The same projection and bits with another learned method (``learned``/``finetuned``)."""
        return CodecSpec(self.channels, self.stride, self.bits, method)

    def __str__(self) -> str:
        return self.name


def parse_codec(text: str) -> CodecSpec:
    """Parse ``q8``, ``c4s1b8`` or ``c4s1b8t`` into a ``CodecSpec``.

    Raises:
        InvalidConfigError: malformed text or unsupported bits.
    """
    text = text.strip()
    calibrated = _CALIBRATED_RE.fullmatch(text)
    if calibrated:
        return CodecSpec.calibrated(int(calibrated.group(1)))
    match = _CODEC_RE.fullmatch(text)
    if not match:
        raise InvalidConfigError(
            f"codec {text!r} is malformed; write q{{bits}} (calibrated quantization), "
            f"c{{channels}}s{{stride}}b{{bits}} (learned unit) or c{{channels}}s{{stride}}b{{bits}}t "
            f"(learned unit + tail fine-tuning), e.g. q8, c4s1b8, c4s1b8t "
            f"(bits in {', '.join(map(str, SUPPORTED_BITS))})"
        )
    channels, stride, bits, tail = match.groups()
    return CodecSpec(int(channels), int(stride), int(bits), "finetuned" if tail else "learned")


def parse_codecs(text: str) -> list[CodecSpec] | None:
    """Parse a comma-separated codec list; ``all`` gives None (the whole space of each cut)."""
    if text.strip() == "all":
        return None
    return [parse_codec(part) for part in text.split(",") if part.strip()]


def cut_channels(cut_shape: tuple[int, ...]) -> int:
    """C: the channels of a feature map (C, H, W), or the size along D of tokens and vectors."""
    return cut_shape[0] if len(cut_shape) == 3 else cut_shape[-1]


def kept_channels(cut_shape: tuple[int, ...], codec: CodecSpec) -> int:
    """C': the channels (or the size along D of tokens and vectors) that the codes keep."""
    return cut_channels(cut_shape) if codec.method == "calibrated" else codec.channels


def codes_shape(cut_shape: tuple[int, ...], codec: CodecSpec) -> tuple[int, ...]:
    """Per-sample shape of the codes the encoder emits."""
    check_codec_fits(cut_shape, codec)
    channels = kept_channels(cut_shape, codec)
    if len(cut_shape) == 3:
        _, height, width = cut_shape
        return (channels, height // codec.stride, width // codec.stride)
    return tuple(cut_shape[:-1]) + (channels,)


def check_codec_fits(cut_shape: tuple[int, ...], codec: CodecSpec, cut_label: str = "the cut") -> None:
    """Raise ``InvalidConfigError`` when ``codec`` cannot apply to a tensor of ``cut_shape``."""
    if len(cut_shape) not in (1, 2, 3):
        raise InvalidConfigError(
            f"codec {codec}: {cut_label} has per-sample shape {cut_shape}; codecs apply to feature maps "
            "(C, H, W), tokens (T, D) and vectors (D)"
        )
    channels = cut_channels(cut_shape)
    if codec.method == "calibrated":
        return
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
    """(scale, offset) of the codes on the wire: (1.0, 0.0) for every width, since the
    per-channel dequantization is a constant of the tail graph (the codes travel as integers)."""
    if bits not in SUPPORTED_BITS:
        raise InvalidConfigError(f"{bits} bits is not supported; allowed: {', '.join(map(str, SUPPORTED_BITS))}")
    return 1.0, 0.0


def calibrated_codecs() -> list[CodecSpec]:
    """``q8``, ``q6``, ``q4``, ``q2``, ``q1``: calibrated quantization at every supported width (4× to 32×)."""
    return [CodecSpec.calibrated(bits) for bits in sorted(SUPPORTED_BITS, reverse=True)]


def codec_space(cut_shape: tuple[int, ...]) -> list[CodecSpec]:
    """Every codec the compiler considers at a cut: C' = C/1 ... C/16 (at least 1), stride 1, 2
    or 4 (feature maps whose size it divides), bits 8, 4, 2, 1 — sorted by compression ratio."""
    channels = cut_channels(cut_shape)
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
    """A subset of the space for grids that cannot afford all of it, sorted by ratio.

    It starts with the units that keep every channel at stride 1 and lower the bits (8, 4, 2,
    1: 4× to 32×, no projection: they start at calibrated quantization), since on the CIFAR
    ResNet-20 grid these kept more accuracy at 16× and 32× than projecting to fewer channels at
    8 bits, and their codes keep the cut's own statistics (a ReLU output's zeros), which the
    entropy coder uses. Above that, at ``count`` minus those evenly spread higher ratios (the
    largest kept), the codec with the most bits (stride 1 first); room left over goes to the
    fewest-bits alternative at evenly spread ratios, so that the grid also sees how bits trade
    against channels at one ratio."""
    space = codec_space(cut_shape)
    full = cut_channels(cut_shape)
    chosen = [c for c in space if c.channels == full and c.stride == 1][:count]
    top = max((compression_ratio(cut_shape, c) for c in chosen), default=0.0)
    ratios = sorted({compression_ratio(cut_shape, c) for c in space})
    higher = [r for r in ratios if r > top]
    at = {r: [c for c in space if compression_ratio(cut_shape, c) == r] for r in higher}
    primary = [max(at[r], key=lambda c: (c.bits, -c.stride)) for r in higher]
    room = count - len(chosen)
    if 0 < room < len(primary):  # evenly spread, the largest ratio kept
        picks = sorted({round((i + 1) * len(primary) / room) - 1 for i in range(room)})
        primary = [primary[i] for i in picks]
    chosen += primary[:max(0, room)]
    alternates = [min(at[r], key=lambda c: (c.bits, c.stride)) for r in higher]
    alternates = [c for c in alternates if c not in chosen]
    room = count - len(chosen)
    if alternates and room > 0:
        step = len(alternates) / min(room, len(alternates))
        chosen += [alternates[int(i * step)] for i in range(min(room, len(alternates)))]
    return sorted(chosen, key=lambda c: (compression_ratio(cut_shape, c), c))


