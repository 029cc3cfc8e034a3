"""How the ``edge`` variant uploads the input: the lowest JPEG / WebP quality whose accuracy
through the model still meets the floor, or lossless when none does.

This is what a user would do instead of splitting the model (sc2bench's finding: most
split-computing codecs do not beat a JPEG of the input at equal accuracy), so it is measured
as honestly as the split variants: every image goes through a real wire message
(:func:`~splitpack.formats.wire.encode_payload`, then ``decode_payload`` as the edge does),
its bytes are the message's (header included), and the decoded pixels are normalized with the
manifest's preprocessing and run through the model.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from splitpack.errors import InvalidConfigError
from splitpack.formats.images import LOSSY_FORMATS, QUALITY_RANGE
from splitpack.formats.manifest import Preprocessing
from splitpack.formats.variants import WIRE_ID_PLACEHOLDER, normalize_uint8
from splitpack.formats.wire import decode_payload, encode_payload
from splitpack.runtimes.backends import RAW_OFFSET, RAW_SCALE, OnnxBackend

__all__ = ["DEFAULT_QUALITIES", "LOSSLESS_FORMATS", "UploadPoint", "InputUploadChoice",
           "measure_upload", "choose_input_upload"]

DEFAULT_QUALITIES = tuple(range(5, 100, 5))  # 5, 10, ..., 95
LOSSLESS_FORMATS = ("zlib", "png")

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class UploadPoint:
    """One measured upload setting.

    Attributes:
        format: "zlib" or "png" (lossless), "jpeg" or "webp".
        quality: 1..100 for jpeg / webp, None for lossless.
        payload_bytes, payload_bytes_p95: Mean and 95th percentile of one image's wire message.
        accuracy: Top-1 in percent of the model on the decoded images.
    """

    format: str
    quality: int | None
    payload_bytes: float
    payload_bytes_p95: float
    accuracy: float

    def as_dict(self) -> dict:
        """The point as JSON-ready values (the grid's ``input_baselines`` entries)."""
        return asdict(self)


@dataclass(frozen=True)
class InputUploadChoice:
    """The chosen upload, the curve it was chosen from and the floor it had to meet.

    Attributes:
        choice: The chosen point (the lossless one when no lossy point meets the floor).
        curve: Every measured point: lossless first, then each format by increasing quality.
        min_accuracy: The floor, top-1 in percent.
    """

    choice: UploadPoint
    curve: tuple[UploadPoint, ...]
    min_accuracy: float

    def manifest_fields(self) -> dict:
        """The ``edge`` variant's manifest fields this choice sets: ``upload``, ``accuracy``,
        ``payload_bytes`` (mean, rounded) and ``payload_bytes_p95`` (rounded up)."""
        point = self.choice
        return {"upload": {"format": point.format, "quality": point.quality},
                "accuracy": point.accuracy, "payload_bytes": round(point.payload_bytes),
                "payload_bytes_p95": math.ceil(point.payload_bytes_p95)}


def _predictor(model, threads: int | None) -> Predict:
    if callable(model):
        return model
    if hasattr(model, "SerializeToString"):  # an onnx.ModelProto, without importing onnx
        model = model.SerializeToString()
    if isinstance(model, (bytes, bytearray, str, os.PathLike)):
        backend = OnnxBackend(model, providers=["CPUExecutionProvider"], threads=threads)
        return backend.run
    raise InvalidConfigError(f"model: found a {type(model).__name__}; expected a callable "
                             "(float32 batch -> logits), an onnx.ModelProto, ONNX bytes or a path")


def _check_images(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images, labels = np.asarray(images), np.asarray(labels).reshape(-1)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise InvalidConfigError(f"images: found {images.dtype} {images.shape}; expected uint8 "
                                 "pixels (N, 1 or 3, H, W), as a camera gives them")
    if len(images) == 0 or len(labels) != len(images):
        raise InvalidConfigError(f"labels: found {len(labels)} for {len(images)} images; expected "
                                 "one class index per image, and at least one image")
    return images, labels


def _check_ladder(formats: Sequence[str], qualities: Sequence[int], lossless: str) -> list[int]:
    unknown = [f for f in formats if f not in LOSSY_FORMATS]
    if unknown:
        raise InvalidConfigError(f"formats: {unknown} are not lossy upload formats; allowed: "
                                 f"{', '.join(LOSSY_FORMATS)}")
    if lossless not in LOSSLESS_FORMATS:
        raise InvalidConfigError(f"lossless: found {lossless!r}; allowed: {', '.join(LOSSLESS_FORMATS)}")
    bad = [q for q in qualities if isinstance(q, bool) or not isinstance(q, int) or q not in QUALITY_RANGE]
    if bad or not qualities:
        raise InvalidConfigError(f"qualities: {bad or 'none given'} out of range; each quality is an "
                                 f"int in {QUALITY_RANGE.start}..{QUALITY_RANGE.stop - 1}")
    return sorted(set(qualities))


def measure_upload(predict: Predict, images: np.ndarray, labels: np.ndarray, *, compression: str,
                   quality: int | None, preprocessing: Preprocessing | None,
                   batch_size: int = 256) -> UploadPoint:
    """Send every image through one-image wire messages and the model.

    Args:
        predict: float32 model input (batch first) -> logits.
        images: uint8 pixels (N, 1 or 3, H, W).
        labels: Class index of each image.
        compression: "zlib", "png", "jpeg" or "webp".
        quality: 1..100 for jpeg / webp, None otherwise.
        preprocessing: The manifest's (what the edge normalizes with).
        batch_size: Images per model call.

    Returns:
        The measured point.
    """
    images, labels = _check_images(images, labels)
    sizes, decoded = np.empty(len(images)), np.empty_like(images)
    for index in range(len(images)):
        message = encode_payload(images[index:index + 1], bundle_id=WIRE_ID_PLACEHOLDER,
                                 variant_id="edge", bits=8, scale=RAW_SCALE, offset=RAW_OFFSET,
                                 compression=compression, quality=quality)
        sizes[index], decoded[index] = len(message), decode_payload(message)[1][0]
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = predict(normalize_uint8(decoded[start:start + batch_size], preprocessing))
        correct += int(np.sum(np.asarray(logits).argmax(axis=-1) == labels[start:start + batch_size]))
    return UploadPoint(compression, quality, float(sizes.mean()), float(np.percentile(sizes, 95)),
                       100.0 * correct / len(images))


def choose_input_upload(
    model: Predict | object, images: np.ndarray, labels: np.ndarray, *,
    min_accuracy: float | None = None, max_accuracy_drop: float | None = None,
    preprocessing: Preprocessing | Mapping | None = None,
    formats: Sequence[str] = LOSSY_FORMATS, qualities: Sequence[int] = DEFAULT_QUALITIES,
    lossless: str = "zlib", batch_size: int = 256, threads: int | None = None,
    log: Callable[[str], None] | None = None, confirm: tuple[np.ndarray, np.ndarray] | None = None,
) -> InputUploadChoice:  # fmt: skip
    """Measure the upload curve and choose the cheapest upload that meets the floor.

    Per lossy format, the candidate is the lowest quality of the ladder whose accuracy meets the
    floor; the choice is the candidate (or the lossless upload) with the fewest mean bytes.

    Args:
        model: A callable (float32 batch -> logits), an ``onnx.ModelProto``, ONNX bytes or a
            path (run with ONNX Runtime on CPU, as an edge without a GPU would).
        images: uint8 test pixels (N, 1 or 3, H, W).
        labels: Their class indices.
        min_accuracy: The floor, top-1 in percent; or instead
        max_accuracy_drop: points below the lossless upload's accuracy on these same images
            (the fair floor when ``images`` is a subset of the test set).
        preprocessing: The manifest's (``mean``, ``std``, ``input_range``); None passes pixels
            as float32.
        formats: Lossy formats to try ("jpeg", "webp").
        qualities: The quality ladder, each 1..100.
        lossless: The lossless upload, "zlib" (the default edge upload) or "png".
        batch_size: Images per model call.
        threads: ONNX Runtime threads when ``model`` is ONNX.
        log: Where one line per measured point goes, if anywhere.
        confirm: (images, labels) on which the chosen setting is measured again, e.g. the whole
            test set when the curve was measured on a subset; the choice then carries those
            figures (the curve keeps the subset's).

    Returns:
        The choice and the whole measured curve.
    """
    if (min_accuracy is None) == (max_accuracy_drop is None):
        raise InvalidConfigError("choose_input_upload: give exactly one of min_accuracy (a floor "
                                 "in percent) and max_accuracy_drop (points below lossless)")
    ladder = _check_ladder(formats, qualities, lossless)
    images, labels = _check_images(images, labels)
    if isinstance(preprocessing, Mapping):
        preprocessing = Preprocessing(**preprocessing)
    predict = _predictor(model, threads)

    def measure(compression: str, quality: int | None) -> UploadPoint:
        point = measure_upload(predict, images, labels, compression=compression, quality=quality,
                               preprocessing=preprocessing, batch_size=batch_size)
        if log is not None:
            log(f"    upload {compression}{'' if quality is None else f' q{quality}'}: "
                f"{point.payload_bytes:.0f} B mean, {point.accuracy:.2f}%")
        return point

    reference = measure(lossless, None)
    floor = min_accuracy if min_accuracy is not None else reference.accuracy - max_accuracy_drop
    curve, candidates = [reference], [reference]
    for compression in formats:
        points = [measure(compression, quality) for quality in ladder]
        curve += points
        meeting = [p for p in points if p.accuracy >= floor - 1e-9]
        if meeting:
            candidates.append(meeting[0])  # the lowest quality that meets the floor
    affordable = [p for p in candidates if p.accuracy >= floor - 1e-9] or [reference]
    choice = min(affordable, key=lambda p: (p.payload_bytes, p.format != lossless))
    if confirm is not None:  # the chosen setting measured on the whole test set, like every variant
        confirm_images, confirm_labels = _check_images(*confirm)
        choice = measure_upload(predict, confirm_images, confirm_labels, compression=choice.format,
                                quality=choice.quality, preprocessing=preprocessing, batch_size=batch_size)
    return InputUploadChoice(choice=choice, curve=tuple(curve), min_accuracy=float(floor))
