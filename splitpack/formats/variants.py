"""The variant record, from compile to manifest to runtime, and what every layer computes
about a variant the same way: its id, the size of its result message, and the pixel
normalization that turns a camera's uint8 input into the model's.

:class:`VariantProfile` is what planning reads (costs, sizes, accuracy); a manifest
:class:`~splitpack.formats.manifest.Variant` carries one (``Variant.profile()``), and the
compiler builds them for candidates before any artifact exists. numpy and the standard library
only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Mapping

import numpy as np

from splitpack.errors import InvalidBundleError, InvalidConfigError
from splitpack.formats.wire import WIRE_BUNDLE_ID_LENGTH, message_bytes

__all__ = [
    "VARIANT_KINDS", "VariantProfile", "check_number", "split_variant_id", "parse_split_variant_id",
    "result_bytes", "WIRE_ID_PLACEHOLDER", "normalize_pixels", "denormalize_pixels", "normalize_uint8",
    "denormalize_to_uint8",
]  # fmt: skip

# Sizes depend only on the wire bundle id's length: compile-time sizes use this stand-in.
WIRE_ID_PLACEHOLDER = "0" * WIRE_BUNDLE_ID_LENGTH
_SPLIT_ID = re.compile(r"^cut(\d{2,})-(.+)$")


VARIANT_KINDS = ("split", "local", "edge")


def check_number(owner: str, name: str, value: object, *, minimum: float = 0.0,
                  strict: bool = False) -> float:
    """``value`` as a float, or InvalidConfigError naming ``owner.name`` and the value."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidConfigError(f"{owner}.{name} must be a number; got {value!r}")
    number = float(value)
    ok = number > minimum if strict else number >= minimum
    if not (math.isfinite(number) and ok):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise InvalidConfigError(f"{owner}.{name} must be finite and {bound}; got {value!r}")
    return number


@dataclass(frozen=True)
class VariantProfile:
    """Measured (or predicted) cost and accuracy of one variant.

    Attributes:
        id: Variant id, unique within a bundle (``"local"``, ``"edge"``, ``"l3_c4s1b4"``...).
        kind: ``"split"`` (head on device, tail on edge), ``"local"`` (whole model on device,
            nothing sent) or ``"edge"`` (raw uint8 input uploaded, whole model on edge).
        head_ms: Device compute of the head, encoder included, where the profile was measured.
        encode_ms: Device time of the encoder when measured apart from the head (0 if folded in).
        decode_ms: Edge time of the decoder when measured apart from the tail (0 if folded in).
        tail_ms: Edge compute of the tail.
        payload_bytes: Uplink bytes per request.
        result_bytes: Downlink bytes per request (the model output).
        accuracy: Top-1 accuracy in percent, measured or predicted.
        device_memory_bytes: Device memory the plan needs (head parameters + peak activations).
        cut: Name of the cut tensor, None for ``local`` and ``edge``.
        compression_ratio: Raw float32 bytes of the cut tensor / bytes actually sent.

    A ``local`` profile must send nothing and run nothing on the edge: ``payload_bytes``,
    ``result_bytes``, ``decode_ms`` and ``tail_ms`` are 0.
    """

    id: str
    kind: str
    head_ms: float
    encode_ms: float
    decode_ms: float
    tail_ms: float
    payload_bytes: int
    result_bytes: int
    accuracy: float
    device_memory_bytes: int
    cut: str | None = None
    compression_ratio: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise InvalidConfigError(
                f"VariantProfile.id must be a non-empty string; got {self.id!r}")
        owner = f"VariantProfile '{self.id}'"
        if self.kind not in VARIANT_KINDS:
            raise InvalidConfigError(
                f"{owner}: kind must be one of {', '.join(VARIANT_KINDS)}; got {self.kind!r}")
        for name in ("head_ms", "encode_ms", "decode_ms", "tail_ms", "payload_bytes",
                     "result_bytes", "device_memory_bytes"):
            check_number(owner, name, getattr(self, name))
        accuracy = check_number(owner, "accuracy", self.accuracy)
        if accuracy > 100.0:
            raise InvalidConfigError(f"{owner}: accuracy is in percent, <= 100; got {accuracy!r}")
        check_number(owner, "compression_ratio", self.compression_ratio, strict=True)
        if self.kind == "local":
            for name in ("payload_bytes", "result_bytes", "decode_ms", "tail_ms"):
                if getattr(self, name) != 0:
                    raise InvalidConfigError(
                        f"{owner}: a local variant sends nothing and runs nothing on the edge, "
                        f"so {name} must be 0; got {getattr(self, name)!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> "VariantProfile":
        """Build a profile from a mapping (e.g. a manifest entry); unknown keys are an error.

        Args:
            values: Field name -> value.

        Returns:
            The validated profile.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidConfigError(
                f"unknown VariantProfile key(s) {unknown}; allowed keys: {sorted(known)}")
        try:
            return cls(**values)  # type: ignore[arg-type]
        except TypeError as exc:
            raise InvalidConfigError(f"incomplete VariantProfile {dict(values)!r}: {exc}") from None


def split_variant_id(cut_index: int, codec_name: str) -> str:
    """Short, file-system-safe id of a split variant, e.g. ``cut03-c8s1b4``."""
    return f"cut{cut_index:02d}-{codec_name}"


def parse_split_variant_id(variant_id: str) -> tuple[int, str]:
    """``(cut index, codec name)`` of an id from :func:`split_variant_id`.

    Raises:
        InvalidConfigError: ``variant_id`` is not of that form.
    """
    match = _SPLIT_ID.match(variant_id) if isinstance(variant_id, str) else None
    if match is None:
        raise InvalidConfigError(f"variant id {variant_id!r} is not a split variant's; expected "
                                 "cutNN-CODEC, e.g. cut03-c8s1b4")
    return int(match.group(1)), match.group(2)


def result_bytes(num_classes: int, variant_id: str) -> int:
    """Bytes of the edge's answer to one sample of ``variant_id``: its float32 output
    (1, num_classes) as a wire message, whose header carries the variant id."""
    return message_bytes((1, int(num_classes)), 32, bundle_id=WIRE_ID_PLACEHOLDER,
                         variant_id=variant_id)


def _broadcast(mean, std, values: np.ndarray, channel_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """``mean`` and ``std`` as float32, shaped to broadcast along ``values``' channel axis."""
    mean, std = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    if mean.size > 1:
        shape = [1] * values.ndim
        shape[channel_axis] = -1
        mean, std = mean.reshape(shape), std.reshape(shape)
    return mean, std


def normalize_pixels(pixels: np.ndarray, mean, std, input_range: float = 255.0, *,
                     channel_axis: int = 1) -> np.ndarray:
    """Camera pixels to the model input, ``(u8 / input_range - mean) / std`` per channel, in
    float32: the one normalization of the compiler, the device and the edge.

    Args:
        pixels: uint8 (or pixel-valued) array.
        mean, std: One value, or one per channel of ``channel_axis``.
        input_range: What a pixel's full scale is (255 for uint8).
        channel_axis: The axis of the channels (1: batch first; -3: (C, H, W) or (N, C, H, W)).
    """
    values = np.asarray(pixels, dtype=np.float32)  # no copy of what already is float32
    mean, std = _broadcast(mean, std, values, channel_axis)
    return ((values / np.float32(input_range) - mean) / std).astype(np.float32, copy=False)


def denormalize_pixels(inputs: np.ndarray, mean, std, input_range: float = 255.0, *,
                       channel_axis: int = 1) -> np.ndarray:
    """The inverse of :func:`normalize_pixels`, rounded to the nearest pixel and clipped to
    uint8. Exact for inputs that came from uint8 pixels (up to float rounding); other inputs
    lose what does not fit 8 bits, as the ``edge`` variant would on any device."""
    values = np.asarray(inputs, dtype=np.float32)
    mean, std = _broadcast(mean, std, values, channel_axis)
    values = (values * std + mean) * np.float32(input_range)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _checked(preprocessing, values: np.ndarray) -> None:
    channels = values.shape[1] if values.ndim > 1 else 1
    size = np.asarray(preprocessing.mean).size
    if size not in (1, channels):
        raise InvalidBundleError(f"preprocessing has {size} mean/std values but the input "
                                 f"has {channels} channels; give one per channel or one for all")


def normalize_uint8(pixels: np.ndarray, preprocessing) -> np.ndarray:
    """Raw uint8 pixels (N, C, ...) to the model input as a manifest's ``preprocessing``
    (mean, std, input_range) says; None passes the pixel values through as float32.

    Raises:
        InvalidBundleError: ``preprocessing`` has neither one mean/std nor one per channel.
    """
    if preprocessing is None:
        return np.asarray(pixels).astype(np.float32)
    pixels = np.asarray(pixels)
    _checked(preprocessing, pixels)
    return normalize_pixels(pixels, preprocessing.mean, preprocessing.std,
                            preprocessing.input_range)


def denormalize_to_uint8(inputs: np.ndarray, preprocessing) -> np.ndarray:
    """The inverse of :func:`normalize_uint8` (see :func:`denormalize_pixels`)."""
    if preprocessing is None:
        return np.clip(np.rint(np.asarray(inputs, dtype=np.float32)), 0, 255).astype(np.uint8)
    inputs = np.asarray(inputs)
    _checked(preprocessing, inputs)
    return denormalize_pixels(inputs, preprocessing.mean, preprocessing.std,
                              preprocessing.input_range)
