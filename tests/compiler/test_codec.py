"""CodecSpec parsing, ratios, fit checks and the codec space."""

from __future__ import annotations

import pytest

from splitpack.compiler.codec import (
    CodecSpec,
    check_codec_fits,
    codec_ladder,
    codec_space,
    codes_shape,
    compression_ratio,
    parse_codec,
    parse_codecs,
    quantization_params,
)
from splitpack.errors import InvalidConfigError


@pytest.mark.parametrize(
    "shape, codec, ratio, codes",
    [
        ((16, 8, 8), "c16s1b8", 4.0, (16, 8, 8)),  # 16*8*8*4 bytes / (16*8*8) bytes
        ((16, 8, 8), "c4s1b4", 32.0, (4, 8, 8)),  # 4096 / (4*64*4/8 = 128)
        ((16, 8, 8), "c2s2b2", 4096 / 8, (2, 4, 4)),  # 2*16*2 bits = 8 bytes
        ((16, 8, 8), "c1s4b1", 4096 / 1, (1, 2, 2)),  # 4 bits round up to 1 byte
        ((65, 64), "c8s1b8", 65 * 64 * 4 / (65 * 8), (65, 8)),  # tokens compress along D
        ((64,), "c4s1b2", 256 / 1, (4,)),
    ],
)
def test_ratio_and_codes_shape(shape, codec, ratio, codes):
    spec = parse_codec(codec)
    assert spec.name == codec
    assert compression_ratio(shape, spec) == pytest.approx(ratio)
    assert codes_shape(shape, spec) == codes


def test_codes_travel_as_integers():
    # the per-channel dequantization is inside the tail graph; the wire carries integer codes
    for bits in (1, 2, 4, 6, 8):
        assert quantization_params(bits) == (1.0, 0.0)


@pytest.mark.parametrize(
    "text, spec, ratio, codes",
    [
        ("q8", CodecSpec(0, 1, 8, "calibrated"), 4.0, (16, 8, 8)),
        ("q2", CodecSpec(0, 1, 2, "calibrated"), 16.0, (16, 8, 8)),
        ("c4s1b4t", CodecSpec(4, 1, 4, "finetuned"), 32.0, (4, 8, 8)),
        ("c4s1b4", CodecSpec(4, 1, 4, "learned"), 32.0, (4, 8, 8)),
    ],
)
def test_methods_notation(text, spec, ratio, codes):
    parsed = parse_codec(text)
    assert parsed == spec and parsed.name == text
    assert compression_ratio((16, 8, 8), parsed) == pytest.approx(ratio)
    assert codes_shape((16, 8, 8), parsed) == codes
    assert parsed.trains_tail == text.endswith("t")
    assert CodecSpec.calibrated(4).name == "q4" and parse_codec("c4s1b4t").with_method("learned").name == "c4s1b4"


def test_codec_space_and_ladder():
    space = codec_space((16, 16, 16))
    assert len(space) == len(set(space)) == 60  # 5 channel fractions x 3 strides x 4 bits
    ratios = [compression_ratio((16, 16, 16), c) for c in space]
    assert ratios == sorted(ratios) and min(ratios) == 4 and max(ratios) == 8192
    ladder = codec_ladder((16, 16, 16))
    assert len(ladder) == 16 and set(ladder) <= set(space)
    assert compression_ratio((16, 16, 16), ladder[0]) == 4 and compression_ratio((16, 16, 16), ladder[-1]) == 8192
    # every channel kept at stride 1 first, bits lowered (4x .. 32x), then projections
    assert ladder[:4] == [CodecSpec(16, 1, bits) for bits in (8, 4, 2, 1)]
    assert all(c.channels < 16 or c.stride > 1 for c in ladder[4:])
    short = codec_ladder((16, 16, 16), 8)
    assert short[:4] == ladder[:4] and short[-1] == ladder[-1] and len(set(short)) == 8
    assert [c.bits for c in short[4:]] == [8, 8, 4, 1]  # the most bits at each higher ratio
    assert codec_ladder((16, 16, 16), 2) == ladder[:2]
    assert all(c.stride == 1 for c in codec_space((65, 64)))  # no stride on tokens
    assert parse_codecs("all") is None
    assert parse_codecs("c4s1b8, c2s2b4") == [CodecSpec(4, 1, 8), CodecSpec(2, 2, 4)]


@pytest.mark.parametrize(
    "text, message",
    [
        ("c4s1b3", r"3 bits is not supported; allowed: 1, 2, 4, 6, 8"),
        ("c4s1b16", r"16 bits is not supported"),
        ("4s1b8", r"malformed; write q\{bits\} .* c\{channels\}s\{stride\}b\{bits\}"),
        ("c4-s1-b8", r"malformed"),
        ("", r"malformed"),
        ("c0s1b8", r"channels and stride must be >= 1"),
        ("c4s0b8", r"channels and stride must be >= 1"),
        ("q3", r"3 bits is not supported"),
        ("q8t", r"malformed; write q\{bits\}"),
        ("c4s1b8x", r"malformed"),
    ],
)
def test_bad_codec_strings(text, message):
    with pytest.raises(InvalidConfigError, match=message):
        parse_codec(text)


@pytest.mark.parametrize(
    "shape, codec, message",
    [
        ((16, 8, 8), "c32s1b8", r"32 channels is more than the cut has \(16\); allowed: 1..16"),
        ((65, 64), "c8s2b8", r"a stride applies to feature maps only.*use s1"),
        ((16, 6, 6), "c4s4b8", r"stride 4 does not divide the cut's spatial size 6x6; allowed strides: 1, 2"),
        ((2, 3, 4, 5), "c1s1b8", r"codecs apply to feature maps"),
    ],
)
def test_codec_does_not_fit(shape, codec, message):
    with pytest.raises(InvalidConfigError, match=message):
        check_codec_fits(shape, parse_codec(codec))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"channels": 4, "stride": 1, "bits": 8, "method": "calibrated"}, r"calibrated quantization keeps every channel"),
        ({"channels": 4, "stride": 1, "bits": 8, "method": "pca"}, r"method 'pca' is unknown; allowed: calibrated, learned, finetuned"),
    ],
)
def test_bad_codec_specs(kwargs, message):
    with pytest.raises(InvalidConfigError, match=message):
        CodecSpec(**kwargs)
