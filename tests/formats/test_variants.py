"""The variant record's helpers: split ids built and parsed in one place, the result message's
true size, and the one pixel normalization (compiler, device and edge alike)."""

from __future__ import annotations

import numpy as np
import pytest

from splitpack.datasets import load_dataset
from splitpack.errors import InvalidBundleError, InvalidConfigError
from splitpack.formats.manifest import Preprocessing
from splitpack.formats.variants import (
    WIRE_ID_PLACEHOLDER, denormalize_to_uint8, normalize_uint8, parse_split_variant_id, result_bytes,
    split_variant_id,
)  # fmt: skip
from splitpack.formats.wire import WIRE_BUNDLE_ID_LENGTH, encode_payload


@pytest.mark.parametrize("index, codec", [(3, "c8s1b4"), (12, "q8"), (0, "c16s2b2t")])
def test_split_ids_round_trip(index, codec) -> None:
    vid = split_variant_id(index, codec)
    assert vid.startswith("cut") and parse_split_variant_id(vid) == (index, codec)


@pytest.mark.parametrize("vid", ["edge", "local", "cut3-c8s1b4", "cutAB-q8", "cut03-", 7])
def test_ids_that_are_not_a_split_variants_are_refused(vid) -> None:
    with pytest.raises(InvalidConfigError, match="cutNN-CODEC"):
        parse_split_variant_id(vid)


@pytest.mark.parametrize("vid", ["edge", "cut03-c8s1b4", "cut117-c64s2b8t"])
def test_result_bytes_is_the_length_of_the_edges_answer(vid) -> None:
    answer = encode_payload(np.zeros((1, 10), np.float32), bundle_id="f" * WIRE_BUNDLE_ID_LENGTH,
                            variant_id=vid, bits=32)
    assert result_bytes(10, vid) == len(answer)
    assert len(WIRE_ID_PLACEHOLDER) == WIRE_BUNDLE_ID_LENGTH


def test_a_longer_variant_id_makes_a_longer_answer() -> None:
    # the manifest once recorded every variant's answer at the size of "edge"'s
    assert result_bytes(10, "cut03-c8s1b4") == result_bytes(10, "edge") + len("cut03-c8s1b4") - 4


def test_the_datasets_and_the_manifests_normalization_are_one() -> None:
    dataset = load_dataset("digits", test_limit=16, train_limit=16)
    pixels = dataset.to_uint8(dataset.x_test)
    preprocessing = Preprocessing(mean=list(dataset.mean), std=list(dataset.std))
    np.testing.assert_array_equal(dataset.from_uint8(pixels), normalize_uint8(pixels, preprocessing))
    np.testing.assert_array_equal(dataset.from_uint8(pixels[0]), normalize_uint8(pixels, preprocessing)[0])
    np.testing.assert_array_equal(denormalize_to_uint8(dataset.from_uint8(pixels), preprocessing), pixels)


def test_three_channel_normalization_is_the_float32_formula_on_both_paths() -> None:
    """``(u8 / 255 - mean) / std`` in float32, bit for bit: a data set's (C, H, W) samples and a
    manifest's batches (N, C, H, W) alike."""
    from splitpack.datasets import Dataset

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(4, 3, 5, 5), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    formula = ((pixels.astype(np.float32) / np.float32(255.0)
                - np.asarray(mean, np.float32).reshape(1, 3, 1, 1))
               / np.asarray(std, np.float32).reshape(1, 3, 1, 1)).astype(np.float32)
    x = formula.copy()
    dataset = Dataset("three", x, np.zeros(4, np.int64), x, np.zeros(4, np.int64), 1, (3, 5, 5), mean, std)
    np.testing.assert_array_equal(dataset.from_uint8(pixels[2]), formula[2])
    np.testing.assert_array_equal(normalize_uint8(pixels, Preprocessing(mean=list(mean), std=list(std))),
                                  formula)
    np.testing.assert_array_equal(dataset.to_uint8(formula), pixels)


def test_per_channel_normalization_and_its_errors() -> None:
    pixels = np.arange(2 * 3 * 2 * 2, dtype=np.uint8).reshape(2, 3, 2, 2)
    preprocessing = Preprocessing(mean=[0.1, 0.2, 0.3], std=[0.5, 1.0, 2.0])
    x = normalize_uint8(pixels, preprocessing)
    expected = (pixels[:, 1] / np.float32(255) - np.float32(0.2)) / np.float32(1.0)
    np.testing.assert_allclose(x[:, 1], expected, rtol=1e-6)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(denormalize_to_uint8(x, preprocessing), pixels)
    with pytest.raises(InvalidBundleError, match="3 mean/std values but the input has 1 channels"):
        normalize_uint8(pixels[:, :1], preprocessing)
    np.testing.assert_array_equal(normalize_uint8(pixels, None), pixels.astype(np.float32))
