"""The edge variant's upload: measured through a model with real wire messages, the lowest
quality that meets the floor chosen."""

from __future__ import annotations

import numpy as np
import onnx.parser
import pytest

from splitpack.compiler.input_upload import (
    DEFAULT_QUALITIES, choose_input_upload, measure_upload,
)  # fmt: skip
from splitpack.errors import InvalidConfigError
from splitpack.formats.wire import encode_payload

PREPROCESSING = {"mean": [0.0], "std": [1.0]}  # the model sees u8 / 255


def _images(count: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy grey 32x32 images (costly to send losslessly); class 1 also carries a faint fine
    checkerboard, the finest detail JPEG and WebP discard first at low quality."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    grid = np.indices((32, 32)).sum(axis=0) % 2 * 2 - 1
    grey = rng.integers(60, 190, size=(count, 1, 1, 1)) + rng.integers(-12, 13, size=(count, 1, 32, 32))
    images = grey + labels[:, None, None, None] * 14 * grid[None, None]
    return np.clip(images, 0, 255).astype(np.uint8), labels


CHECKERBOARD = (np.indices((32, 32)).sum(axis=0) % 2 * 2 - 1).astype(np.float32)


def detail_model(x: np.ndarray) -> np.ndarray:
    """Logits from the checkerboard's strength: a stand-in for a model that needs fine texture."""
    strength = (x * CHECKERBOARD).mean(axis=(1, 2, 3))
    return np.stack([7 / 255 - strength, strength - 7 / 255], axis=1)


def test_the_lowest_quality_that_meets_the_floor_is_chosen() -> None:
    images, labels = _images()
    result = choose_input_upload(detail_model, images, labels, min_accuracy=100.0,
                                 preprocessing=PREPROCESSING, formats=("jpeg",))
    lossless, *jpeg = result.curve
    assert (lossless.format, lossless.quality, lossless.accuracy) == ("zlib", None, 100.0)
    assert [p.quality for p in jpeg] == list(DEFAULT_QUALITIES)
    meeting = [p for p in jpeg if p.accuracy >= 100.0]
    assert meeting and meeting[0].quality > DEFAULT_QUALITIES[0]  # low qualities lose the texture
    if meeting[0].payload_bytes < lossless.payload_bytes:
        assert result.choice == meeting[0]
    else:
        assert result.choice == lossless
    assert result.min_accuracy == 100.0
    fields = result.manifest_fields()
    assert fields["upload"] == {"format": result.choice.format, "quality": result.choice.quality}
    assert fields["payload_bytes"] == round(result.choice.payload_bytes)


def test_a_floor_relative_to_lossless_and_a_coarse_model_pick_the_lowest_quality() -> None:
    images, _ = _images(seed=1)
    labels = (images.mean(axis=(1, 2, 3)) > 127).astype(int)

    def brightness(x: np.ndarray) -> np.ndarray:  # a model that needs no detail at all
        level = x.mean(axis=(1, 2, 3))
        return np.stack([127 / 255 - level, level - 127 / 255], axis=1)

    result = choose_input_upload(brightness, images, labels, max_accuracy_drop=5.0,
                                 preprocessing=PREPROCESSING, formats=("jpeg", "webp"),
                                 qualities=(5, 50, 90))
    assert result.min_accuracy == result.curve[0].accuracy - 5.0
    assert result.choice.quality == 5 and result.choice.format in ("jpeg", "webp")
    assert result.choice.payload_bytes == min(p.payload_bytes for p in result.curve
                                              if p.quality == 5)


def test_bytes_are_those_of_the_real_wire_messages() -> None:
    images, labels = _images(count=6)
    point = measure_upload(detail_model, images, labels, compression="webp", quality=40,
                           preprocessing=None)
    sizes = [len(encode_payload(images[i:i + 1], bundle_id="0" * 16, variant_id="edge", bits=8,
                                compression="webp", quality=40)) for i in range(6)]
    assert point.payload_bytes == np.mean(sizes)
    assert point.payload_bytes_p95 == pytest.approx(np.percentile(sizes, 95))


def test_an_onnx_model_is_run_with_onnx_runtime() -> None:
    """Global average of the input as the one logit pair: an ONNX graph, not a callable."""
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        mean (float[N, 1, 32, 32] x) => (float[N, 2] y) {
            pooled = GlobalAveragePool(x)
            flat = Flatten(pooled)
            y = Concat<axis = 1>(flat, flat)
        }
    """)
    images, labels = _images(count=8)
    result = choose_input_upload(model, images, np.zeros(8, int), min_accuracy=50.0,
                                 qualities=(10,), formats=("jpeg",))
    assert [p.accuracy for p in result.curve] == [100.0, 100.0]  # ties go to class 0


BAD_CALLS = [
    ("quality 0", {"qualities": (0, 50)}, r"qualities: \[0\] out of range; each quality is an int in 1\.\.100"),
    ("quality 101", {"qualities": (101,)}, r"\[101\] out of range.*1\.\.100"),
    ("quality as text", {"qualities": ("50",)}, r"\['50'\] out of range"),
    ("no qualities", {"qualities": ()}, "none given"),
    ("a lossless format as lossy", {"formats": ("png",)}, "not lossy upload formats"),
    ("unknown lossless", {"lossless": "gif"}, "lossless: found 'gif'"),
    ("both floors", {"max_accuracy_drop": 1.0}, "exactly one of min_accuracy"),
    ("not pixels", {"images": np.zeros((2, 1, 4, 4), np.float32)}, "expected uint8 pixels"),
    ("two channels", {"images": np.zeros((2, 2, 4, 4), np.uint8)}, r"\(N, 1 or 3, H, W\)"),
    ("labels short", {"labels": np.zeros(1, int)}, "found 1 for 2 images"),
    ("no model", {"model": 3}, "expected a callable"),
]  # fmt: skip


@pytest.mark.parametrize("overrides, match", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_calls_are_refused(overrides, match) -> None:
    arguments = {"model": detail_model, "images": np.zeros((2, 1, 4, 4), np.uint8),
                 "labels": np.zeros(2, int), "min_accuracy": 50.0, **overrides}
    with pytest.raises(InvalidConfigError, match=match):
        choose_input_upload(arguments.pop("model"), arguments.pop("images"), arguments.pop("labels"),
                            **arguments)
