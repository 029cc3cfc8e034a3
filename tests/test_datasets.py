"""Tests of splitpack.datasets: the spec forms, the uint8 round trip, limits and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from splitpack.datasets import SCENES_SIZES, Dataset, check_fits_model, load_dataset, scene_patches
from splitpack.errors import InvalidConfigError, InvalidDatasetError

DIGITS_TOTAL = 1797  # scikit-learn's bundled digits


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def write_npz(path, x_train, x_test, y_train=None, y_test=None):
    y_train = np.arange(len(x_train)) % 3 if y_train is None else y_train
    y_test = np.arange(len(x_test)) % 3 if y_test is None else y_test
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return f"npz:{path}"


def write_imagefolder(root, classes=("cat", "dog"), test_classes=None, per_class=2):
    """Tiny PNGs: class i is a flat image of gray level 40 * (i + 1); one of them grayscale."""
    for split, names in (("train", classes), ("test", test_classes or classes)):
        for label, name in enumerate(names):
            (root / split / name).mkdir(parents=True)
            for index in range(per_class):
                mode = "L" if index == 0 else "RGB"
                level = 40 * (label + 1)
                color = level if mode == "L" else (level, level, level)
                Image.new(mode, (10, 7), color).save(root / split / name / f"{index}.png")
    return f"imagefolder:{root}"


def test_digits_shapes_dtypes_and_split(digits):
    assert digits.name == "digits"
    assert digits.input_shape == (1, 16, 16)
    assert digits.num_classes == 10
    assert digits.x_train.dtype == np.float32 and digits.x_test.dtype == np.float32
    assert digits.y_train.dtype == np.int64 and digits.y_test.dtype == np.int64
    assert digits.x_train.shape == (1347, 1, 16, 16)
    assert digits.x_test.shape == (450, 1, 16, 16)
    assert len(digits.x_train) + len(digits.x_test) == DIGITS_TOTAL
    assert set(np.unique(digits.y_test)) == set(range(10))  # stratified: every class in test
    assert digits.mean == (0.5,) and digits.std == (0.5,)
    # pixels in [0, 1] normalized with mean 0.5, std 0.5 lie in [-1, 1]
    assert digits.x_train.min() >= -1.0 - 1e-6 and digits.x_train.max() <= 1.0 + 1e-6


def test_digits_is_deterministic_per_seed(digits):
    again = load_dataset("digits")
    np.testing.assert_array_equal(again.x_train, digits.x_train)
    other = load_dataset("digits", seed=1, image_size=8)
    assert other.input_shape == (1, 8, 8)
    assert not np.array_equal(other.y_train, digits.y_train)


def test_scenes_are_seeded_crops_of_the_photographs_labelled_by_region():
    scenes = load_dataset("scenes", test_limit=64)
    assert scenes.input_shape == (3, 64, 64) and scenes.num_classes == 32
    assert (len(scenes.x_train), len(scenes.x_test)) == (SCENES_SIZES[0], 64)
    assert set(np.unique(scenes.y_train)) == set(range(32))  # every region drawn
    pixels = scenes.to_uint8(scenes.x_test)
    assert len(np.unique(pixels.reshape(64, -1), axis=0)) == 64  # real crops, not one image
    x, y = scene_patches(8, np.random.default_rng(3))
    again, labels = scene_patches(8, np.random.default_rng(3))
    assert x.dtype == np.uint8 and np.array_equal(x, again) and np.array_equal(y, labels)
    assert not np.array_equal(x, scene_patches(8, np.random.default_rng(4))[0])
    small = load_dataset("scenes", image_size=32, train_limit=8, test_limit=8, seed=1)
    assert small.input_shape == (3, 32, 32) and len(small.x_train) == 8


def test_uint8_round_trip(digits):
    x = digits.x_test[:16]
    u8 = digits.to_uint8(x)
    assert u8.dtype == np.uint8 and u8.shape == x.shape
    back = digits.from_uint8(u8)
    assert back.dtype == np.float32 and back.shape == x.shape
    np.testing.assert_allclose(back, x, rtol=0, atol=0.5 / 255 / 0.5 + 1e-6)
    np.testing.assert_array_equal(digits.to_uint8(back), u8)  # quantized values are fixed points
    single = digits.to_uint8(x[0])  # one (C, H, W) sample works too
    np.testing.assert_array_equal(single, u8[0])


def test_uint8_formula_is_per_channel():
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.25, 0.5)
    u8 = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(1, 3, 2, 2) * 20
    x = ((u8 / 255.0 - np.reshape(mean, (3, 1, 1))) / np.reshape(std, (3, 1, 1))).astype(np.float32)
    data = Dataset("manual", x, np.zeros(1, np.int64), x, np.zeros(1, np.int64), 1, (3, 2, 2),
                   mean, std)
    np.testing.assert_allclose(data.from_uint8(u8), x, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(data.to_uint8(x), u8)


@pytest.mark.parametrize(
    "layout, make_x",
    [
        ("nchw float", lambda rng, n: rng.random((n, 3, 6, 5), dtype=np.float32)),
        ("nhwc float", lambda rng, n: rng.random((n, 6, 5, 3), dtype=np.float32)),
        ("nhw float", lambda rng, n: rng.random((n, 6, 5), dtype=np.float32)),
        ("nhwc uint8", lambda rng, n: rng.integers(0, 256, (n, 6, 5, 1), dtype=np.uint8)),
    ],
)
def test_npz_layouts(tmp_path, layout, make_x):
    rng = np.random.default_rng(0)
    x_train, x_test = make_x(rng, 12), make_x(rng, 5)
    data = load_dataset(write_npz(tmp_path / "data.npz", x_train, x_test))
    channels = 1 if layout.startswith("nhw ") or "uint8" in layout else 3
    assert data.input_shape == (channels, 6, 5)
    assert data.x_train.shape == (12, channels, 6, 5) and data.x_train.dtype == np.float32
    assert data.y_train.dtype == np.int64 and data.num_classes == 3
    assert data.mean == (0.5,) * channels and data.std == (0.5,) * channels
    # Undoing the normalization gives back the stored pixels, in NCHW.
    to_nchw = {"nchw": lambda x: x, "nhwc": lambda x: x.transpose(0, 3, 1, 2),
               "nhw": lambda x: x[:, None]}
    expected = to_nchw[layout.split()[0]](x_test)
    pixels = expected / 255.0 if x_test.dtype == np.uint8 else expected
    np.testing.assert_allclose(data.x_test * 0.5 + 0.5, pixels, rtol=0, atol=1e-6)
    if x_test.dtype == np.uint8:
        np.testing.assert_array_equal(data.to_uint8(data.x_test), expected)


def test_npz_already_normalized_floats_and_resize(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.normal(size=(8, 2, 4, 4)).astype(np.float32)
    x_test = rng.normal(size=(4, 2, 4, 4)).astype(np.float32)
    y_train = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    spec = write_npz(tmp_path / "norm.npz", x_train, x_test, y_train, np.array([0, 1, 6, 1]))
    data = load_dataset(spec)
    assert data.mean == (0.0, 0.0) and data.std == (1.0, 1.0)
    np.testing.assert_array_equal(data.x_train, x_train)  # not normalized a second time
    assert data.num_classes == 7  # max label over both splits + 1
    described = load_dataset(spec, mean=(0.4, 0.5), std=(0.2, 0.3), image_size=8)
    assert described.mean == (0.4, 0.5) and described.std == (0.2, 0.3)
    assert described.input_shape == (2, 8, 8)


def test_imagefolder(tmp_path):
    spec = write_imagefolder(tmp_path / "images", classes=("zebra", "ant", "cat"))
    data = load_dataset(spec, image_size=16)
    assert data.input_shape == (3, 16, 16) and data.num_classes == 3
    assert data.x_train.shape == (6, 3, 16, 16) and data.x_test.shape == (6, 3, 16, 16)
    assert data.mean == (0.485, 0.456, 0.406) and data.std == (0.229, 0.224, 0.225)
    np.testing.assert_array_equal(data.y_train, [0, 0, 1, 1, 2, 2])  # sorted: ant, cat, zebra
    # ant (label 0) was written as level 80 = 40 * 2, cat 120, zebra 40; grayscale went to RGB.
    levels = data.to_uint8(data.x_train)[:, :, 0, 0]
    np.testing.assert_array_equal(levels, np.repeat([[80], [120], [40]], 2, axis=0).repeat(3, 1))
    assert load_dataset(spec).input_shape == (3, 64, 64)


def test_limits(tmp_path, digits):
    limited = load_dataset("digits", train_limit=50, test_limit=20, seed=0)
    assert limited.x_train.shape == (50, 1, 16, 16) and limited.x_test.shape == (20, 1, 16, 16)
    assert limited.num_classes == 10
    # the kept samples are real digits samples, picked by a seeded shuffle
    assert any(np.array_equal(limited.x_train[0], sample) for sample in digits.x_train)
    again = load_dataset("digits", train_limit=50, test_limit=20, seed=0)
    np.testing.assert_array_equal(again.y_train, limited.y_train)
    assert len(load_dataset("digits", test_limit=10_000).x_test) == 450
    spec = write_imagefolder(tmp_path / "images", per_class=3)
    small = load_dataset(spec, image_size=4, train_limit=2, test_limit=1)
    assert small.x_train.shape == (2, 3, 4, 4) and small.x_test.shape == (1, 3, 4, 4)
    assert small.num_classes == 2


def test_check_fits_model_accepts_matching_and_dynamic_shapes(digits):
    check_fits_model(digits, (1, 16, 16), 10)
    check_fits_model(digits, (1, 1, 16, 16), 10)
    check_fits_model(digits, ("N", 1, None, 16), 10)


def _bad_npz(tmp_path, kind):
    x = np.zeros((4, 1, 5, 5), np.float32)
    if kind == "missing key":
        np.savez(tmp_path / "bad.npz", x_train=x, y_train=np.zeros(4, np.int64), x_test=x)
    elif kind == "lengths":
        write_npz(tmp_path / "bad.npz", x, x, np.zeros(3, np.int64))
    elif kind == "negative label":
        write_npz(tmp_path / "bad.npz", x, x, np.array([0, 1, -1, 0]))
    elif kind == "float label":
        write_npz(tmp_path / "bad.npz", x, x, np.zeros(4, np.float32))
    elif kind == "shapes":
        write_npz(tmp_path / "bad.npz", x, np.zeros((4, 1, 6, 6), np.float32))
    elif kind == "not npz":
        (tmp_path / "bad.npz").write_text("hello")
    return f"npz:{tmp_path / 'bad.npz'}"


def _bad_folder(tmp_path, kind):
    root = tmp_path / "images"
    if kind == "no train":
        (root / "test" / "a").mkdir(parents=True)
    elif kind == "no test":
        (root / "train" / "a").mkdir(parents=True)
    elif kind == "classes":
        write_imagefolder(root, classes=("a", "b"), test_classes=("a", "c"))
    elif kind == "empty class":
        write_imagefolder(root, classes=("a",))
        (root / "train" / "b").mkdir()
        (root / "test" / "b").mkdir()
    elif kind == "broken image":
        write_imagefolder(root, classes=("a",))
        (root / "train" / "a" / "broken.png").write_bytes(b"not a png")
    return f"imagefolder:{root}"


@pytest.mark.parametrize(
    "make_spec, options, error, match",
    [
        (lambda tmp: "mnist", {}, InvalidDatasetError,
         r"unknown data set spec 'mnist'.*digits.*npz:PATH"),
        (lambda tmp: "npz:", {}, InvalidDatasetError, r"allowed forms"),
        (lambda tmp: f"npz:{tmp / 'none.npz'}", {}, InvalidDatasetError, r"none\.npz' not found"),
        (lambda tmp: _bad_npz(tmp, "missing key"), {}, InvalidDatasetError,
         r"missing array\(s\) \['y_test'\]; found \['x_test', 'x_train', 'y_train'\]"),
        (lambda tmp: _bad_npz(tmp, "lengths"), {}, InvalidDatasetError,
         r"x_train has 4 samples but y_train has 3"),
        (lambda tmp: _bad_npz(tmp, "negative label"), {}, InvalidDatasetError, r"label -1"),
        (lambda tmp: _bad_npz(tmp, "float label"), {}, InvalidDatasetError, r"integer array"),
        (lambda tmp: _bad_npz(tmp, "shapes"), {}, InvalidDatasetError, r"splits differ"),
        (lambda tmp: _bad_npz(tmp, "not npz"), {}, InvalidDatasetError, r"cannot read"),
        (lambda tmp: _bad_folder(tmp, "no train"), {}, InvalidDatasetError,
         r"train' not found; expected layout PATH/train/<class>"),
        (lambda tmp: _bad_folder(tmp, "no test"), {}, InvalidDatasetError,
         r"test' not found; expected layout"),
        (lambda tmp: _bad_folder(tmp, "classes"), {}, InvalidDatasetError,
         r"only in train \['b'\], only in test \['c'\]"),
        (lambda tmp: _bad_folder(tmp, "empty class"), {}, InvalidDatasetError,
         r"no images .* train/ class folder\(s\) \['b'\]"),
        (lambda tmp: _bad_folder(tmp, "broken image"), {}, InvalidDatasetError,
         r"cannot read image .*broken\.png"),
        (lambda tmp: "digits", {"image_size": 0}, InvalidConfigError,
         r"image_size must be an integer >= 1"),
        (lambda tmp: "digits", {"image_size": 3.5}, InvalidConfigError, r"image_size"),
        (lambda tmp: "digits", {"train_limit": -1}, InvalidConfigError, r"train_limit"),
        (lambda tmp: "digits", {"seed": -1}, InvalidConfigError, r"seed must be an integer >= 0"),
        (lambda tmp: "digits", {"std": (0.0,)}, InvalidConfigError,
         r"std \(0\.0,\) must be finite and > 0"),
        (lambda tmp: "digits", {"mean": (0.5, 0.5)}, InvalidConfigError,
         r"mean has 2 value\(s\).*1 channel"),
        (lambda tmp: "digits", {"mean": "abc"}, InvalidConfigError, r"sequence of numbers"),
    ],
)
def test_bad_input(tmp_path, make_spec, options, error, match):
    with pytest.raises(error, match=match):
        load_dataset(make_spec(tmp_path), **options)


@pytest.mark.parametrize(
    "input_shape, num_classes, match",
    [
        ((1, 28, 28), 10, r"shape \(1, 16, 16\) but the model takes \(1, 28, 28\).*--image-size"),
        ((3, 16, 16), 10, r"--input-shape"),
        ((16, 16), 10, r"model takes \(16, 16\)"),
        ((1, 16, 16), 1000, r"10 classes but the model outputs 1000"),
    ],
)
def test_check_fits_model_mismatches(digits, input_shape, num_classes, match):
    with pytest.raises(InvalidDatasetError, match=match):
        check_fits_model(digits, input_shape, num_classes)


def test_dataset_rejects_inconsistent_arrays_and_pixels(digits):
    with pytest.raises(InvalidDatasetError, match=r"train split has x"):
        Dataset("bad", digits.x_train, digits.y_test, digits.x_test, digits.y_test, 10,
                (1, 32, 32), (0.5,), (0.5,))
    with pytest.raises(InvalidDatasetError, match=r"takes uint8 pixels, got dtype float32"):
        digits.from_uint8(digits.x_test[:1])
    with pytest.raises(InvalidDatasetError, match=r"no 1-channel axis"):
        digits.to_uint8(np.zeros((2, 3, 32, 32), np.float32))
