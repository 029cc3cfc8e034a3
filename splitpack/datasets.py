"""Data set specs (``digits``, ``scenes``, ``npz:PATH``, ``imagefolder:PATH``) loaded into a
:class:`Dataset`.

Every data set is held normalized: ``x`` is float32 NCHW with, per channel c,
``x = (u8 / 255 - mean[c]) / std[c]``, where ``u8`` is the 0..255 pixel a camera gives a device.
The device and edge runtimes reimplement exactly this formula from ``mean`` and ``std``, so
:meth:`Dataset.to_uint8` and :meth:`Dataset.from_uint8` use numpy only. torch, scikit-learn and
Pillow are imported inside the loaders, so importing this module stays cheap.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from splitpack.errors import InvalidConfigError, InvalidDatasetError
from splitpack.formats.variants import denormalize_pixels, normalize_pixels

__all__ = ["Dataset", "NPZ_KEYS", "load_dataset", "check_arrays", "check_fits_model", "scene_patches",
           "SCENES_SIZES"]

SPEC_FORMS = "'digits', 'scenes', 'npz:PATH', 'imagefolder:PATH'"
SCENES_GRID = 4  # regions per side of each photograph: 2 x 4 x 4 = 32 classes
SCENES_PATCH = 64
SCENES_SIZES = (4096, 512)  # train and test patches
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A normalized image classification data set: x float32 (N, C, H, W), y int64 (N,)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        splits = (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test))
        for split, x, y in splits:
            if x.shape[1:] != tuple(self.input_shape) or y.shape != (len(x),):
                raise InvalidDatasetError(f"data set {self.name!r}: {split} split has x {x.shape}, "
                                          f"y {y.shape}; expected (N, *{self.input_shape}), (N,)")
        if not len(self.mean) == len(self.std) == self.input_shape[0]:
            raise InvalidDatasetError(f"data set {self.name!r}: mean {self.mean}, std {self.std} "
                                      f"need one value per channel ({self.input_shape[0]})")

    def _check_channels(self, x: np.ndarray) -> None:
        channels = self.input_shape[0]
        if x.ndim < 3 or x.shape[-3] != channels:
            raise InvalidDatasetError(f"data set {self.name!r}: array of shape {x.shape} has no "
                                      f"{channels}-channel axis; pass (C, H, W) or (N, C, H, W)")

    def to_uint8(self, x: np.ndarray) -> np.ndarray:
        """Undo the normalization and quantize to camera pixels.

        Args:
            x: normalized float array, (C, H, W) or (N, C, H, W).

        Returns:
            uint8 array of the same shape: ``clip(rint((x * std + mean) * 255), 0, 255)``.
        """
        x = np.asarray(x, dtype=np.float32)
        self._check_channels(x)
        return denormalize_pixels(x, self.mean, self.std, 255.0, channel_axis=-3)

    def from_uint8(self, u8: np.ndarray) -> np.ndarray:
        """Normalize camera pixels: ``x = (u8 / 255 - mean) / std`` per channel.

        Args:
            u8: uint8 array, (C, H, W) or (N, C, H, W).

        Returns:
            float32 array of the same shape; ``from_uint8(to_uint8(x))`` is within
            ``0.5 / 255 / std`` of ``x`` wherever ``x`` maps inside 0..255.
        """
        u8 = np.asarray(u8)
        if u8.dtype != np.uint8:
            raise InvalidDatasetError(
                f"data set {self.name!r}: from_uint8 takes uint8 pixels, got dtype {u8.dtype}; "
                "convert with to_uint8 or .astype(np.uint8)"
            )
        self._check_channels(u8)
        return normalize_pixels(u8, self.mean, self.std, 255.0, channel_axis=-3)


def load_dataset(
    spec: str,
    *,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load a data set from its spec.

    Args:
        spec: ``digits`` (scikit-learn's bundled 8x8 digits, pixels 0..16 scaled to [0, 1],
            10 classes, stratified 75/25 split seeded by ``seed``); ``scenes`` (4,096 train and
            512 test 64x64 RGB patches of scikit-learn's two bundled photographs, 32 classes,
            drawn with ``seed``: see :func:`scene_patches`); ``npz:PATH`` (arrays
            ``x_train, y_train, x_test, y_test``; x uint8 (divided by 255) or float; NCHW, or
            NHWC when the last dim is 1 or 3 and dim 1 is not, or (N, H, W) grayscale; labels
            integers >= 0); or ``imagefolder:PATH`` (``PATH/train/<class>/*.png|jpg|jpeg|bmp``
            and ``PATH/test/<class>/...``; classes are the sorted train sub-folder names; images
            are always converted to RGB).
        image_size: square side images are resized to (bilinear); default 16 for digits (2x the
            native 8x8), 64 for imagefolder and scenes, and the stored size for npz (resized
            only when this is given).
        mean: per-channel mean of the normalization of [0, 1] pixels; default 0.5 per channel,
            ImageNet's for imagefolder. npz floats outside [0, 1] are taken as already
            normalized: their default is mean 0, std 1, and a given mean/std is recorded as
            describing them, not applied.
        std: per-channel std, > 0; defaults as for ``mean`` (0.5, ImageNet's, or 1).
        train_limit: keep only the first N training samples of a seeded shuffle.
        test_limit: keep only the first N test samples of a seeded shuffle.
        seed: seed of the digits split, of the scenes patches and of the limit shuffles (an
            integer >= 0).

    Returns:
        The :class:`Dataset`; ``num_classes`` counts classes before limits are applied
        (max label + 1 over both splits for npz).
    """
    for option, value in (("image_size", image_size), ("train_limit", train_limit),
                          ("test_limit", test_limit), ("seed", seed)):
        lowest = 0 if option == "seed" else 1
        if value is not None and (type(value) is not int or value < lowest):  # bools are not sizes
            raise InvalidConfigError(f"{option} must be an integer >= {lowest}, got {value!r}")
    limits = (train_limit, test_limit, seed)
    kind, _, location = str(spec).partition(":")
    if spec == "digits":
        return _load_digits(image_size or 16, mean, std, limits)
    if spec == "scenes":
        return _load_scenes(image_size, mean, std, limits)
    if kind == "npz" and location:
        return _load_npz(spec, Path(location).expanduser(), image_size, mean, std, limits)
    if kind == "imagefolder" and location:
        root = Path(location).expanduser()
        return _load_imagefolder(spec, root, image_size or 64, mean, std, limits)
    raise InvalidDatasetError(f"unknown data set spec {spec!r}; allowed forms: {SPEC_FORMS}")


def check_fits_model(
    dataset: Dataset, input_shape: Sequence[int | str | None], num_classes: int
) -> None:
    """Raise :class:`InvalidDatasetError` if the data set's samples or labels do not fit the model.

    Args:
        dataset: the loaded data set.
        input_shape: the model's input shape, per sample (C, H, W) or with a leading batch dim;
            ``None`` and string (symbolic) dims match any size.
        num_classes: the size of the model's output; must equal ``dataset.num_classes``.
    """
    model_shape = tuple(input_shape)
    if len(model_shape) == len(dataset.input_shape) + 1:
        model_shape = model_shape[1:]
    fits = len(model_shape) == len(dataset.input_shape) and all(
        want is None or isinstance(want, str) or want == have
        for want, have in zip(model_shape, dataset.input_shape)
    )
    if not fits:
        raise InvalidDatasetError(
            f"data set {dataset.name!r} has samples of shape {dataset.input_shape} but the model "
            f"takes {tuple(input_shape)}; resize the data with --image-size, or give the model's "
            "shape with --input-shape C,H,W (channel counts must match)"
        )
    if dataset.num_classes != num_classes:
        raise InvalidDatasetError(
            f"data set {dataset.name!r} has {dataset.num_classes} classes but the model outputs "
            f"{num_classes}; use a data set with labels 0..{num_classes - 1}, or a model with "
            f"{dataset.num_classes} outputs"
        )


def _channel_values(option: str, values, default: tuple[float, ...], channels: int):
    if values is None:
        return default
    try:
        result = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise InvalidConfigError(f"{option} must be a sequence of numbers, got {values!r}; "
                                 "pass one value per channel") from None
    if len(result) != channels:
        raise InvalidConfigError(f"{option} has {len(result)} value(s) {result} but the data set "
                                 f"has {channels} channel(s); pass one value per channel")
    if not all(np.isfinite(result)) or (option == "std" and min(result) <= 0):
        rule = "finite and > 0" if option == "std" else "finite"
        raise InvalidConfigError(f"{option} {result} must be {rule}; e.g. {(0.5,) * channels}")
    return result


def _limited(count: int, limit: int | None, seed: int, stream: int) -> np.ndarray:
    """Indices to keep: all in order, or the first ``limit`` of a seeded permutation."""
    if limit is None:
        return np.arange(count)
    return np.random.default_rng([seed, stream]).permutation(count)[:limit]


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    if x.shape[-2:] == (size, size):
        return x
    import torch
    import torch.nn.functional as F

    batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False).numpy()


def _load_digits(size: int, mean, std, limits) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    train_limit, test_limit, seed = limits
    mean = _channel_values("mean", mean, (0.5,), 1)
    std = _channel_values("std", std, (0.5,), 1)
    digits = load_digits()
    pixels = (digits.images / 16.0).astype(np.float32)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(
        pixels, digits.target.astype(np.int64), test_size=0.25, stratify=digits.target,
        random_state=seed,
    )
    keep_train = _limited(len(x_train), train_limit, seed, 0)
    keep_test = _limited(len(x_test), test_limit, seed, 1)
    x_train = normalize_pixels(_resize(x_train[keep_train], size), mean, std, 1.0)
    x_test = normalize_pixels(_resize(x_test[keep_test], size), mean, std, 1.0)
    return Dataset("digits", x_train, y_train[keep_train], x_test, y_test[keep_test], 10,
                   (1, size, size), mean, std)


def scene_patches(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random 64x64 patches of scikit-learn's two sample photographs and their labels.

    Each photo (``china.jpg`` and ``flower.jpg``, 427x640) is divided into a 4x4 grid of regions,
    one class each (32 classes): "which part of which scene is this patch from". Patch centres
    are drawn uniformly inside their region, with a brightness gain in [0.8, 1.2], so
    neighbouring classes overlap and test patches are new crops. Natural-image pixels compress
    poorly (zlib keeps about 6.6 of 12.3 KB), as a camera frame would.

    Args:
        count: Patches to draw.
        rng: The generator every draw comes from (labels, centres, gains, in that order).

    Returns:
        uint8 patches (count, 3, 64, 64) and int64 labels (count,).
    """
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two uint8 (427, 640, 3) arrays
    regions = SCENES_GRID * SCENES_GRID
    labels = rng.integers(0, 2 * regions, size=count)
    patches = np.empty((count, 3, SCENES_PATCH, SCENES_PATCH), np.uint8)
    half = SCENES_PATCH // 2
    for index, label in enumerate(labels):
        photo = photos[label // regions]
        row, col = divmod(int(label) % regions, SCENES_GRID)
        height, width = photo.shape[0] // SCENES_GRID, photo.shape[1] // SCENES_GRID
        cy = rng.integers(max(row * height, half), min((row + 1) * height, photo.shape[0] - half))
        cx = rng.integers(max(col * width, half), min((col + 1) * width, photo.shape[1] - half))
        crop = photo[cy - half:cy + half, cx - half:cx + half].astype(np.float32)
        crop *= rng.uniform(0.8, 1.2)
        patches[index] = np.clip(np.rint(crop), 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return patches, labels.astype(np.int64)


def _load_scenes(size: int | None, mean, std, limits) -> Dataset:
    train_limit, test_limit, seed = limits
    mean = _channel_values("mean", mean, (0.5,) * 3, 3)
    std = _channel_values("std", std, (0.5,) * 3, 3)
    rng = np.random.default_rng(seed)
    x_train, y_train = scene_patches(SCENES_SIZES[0], rng)
    x_test, y_test = scene_patches(SCENES_SIZES[1], rng)
    keep_train = _limited(len(x_train), train_limit, seed, 0)
    keep_test = _limited(len(x_test), test_limit, seed, 1)
    x_train = normalize_pixels(x_train[keep_train] / np.float32(255.0), mean, std, 1.0)
    x_test = normalize_pixels(x_test[keep_test] / np.float32(255.0), mean, std, 1.0)
    if size is not None:
        x_train, x_test = _resize(x_train, size), _resize(x_test, size)
    return Dataset("scenes", x_train, y_train[keep_train], x_test, y_test[keep_test],
                   2 * SCENES_GRID * SCENES_GRID, tuple(x_train.shape[1:]), mean, std)


def _read_npz(spec: str, path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise InvalidDatasetError(f"{spec}: file {str(path)!r} not found; give the path of an "
                                  f".npz holding {', '.join(NPZ_KEYS)}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            found = sorted(archive.files)
            arrays = {key: archive[key] for key in NPZ_KEYS if key in found}
    except (OSError, ValueError, TypeError, AttributeError, zipfile.BadZipFile) as error:
        raise InvalidDatasetError(f"{spec}: cannot read {str(path)!r} as an .npz of numeric "
                                  f"arrays ({error}); write it with np.savez") from None
    missing = [key for key in NPZ_KEYS if key not in arrays]
    if missing:
        raise InvalidDatasetError(
            f"{spec}: missing array(s) {missing}; found {found}; write the file with "
            f"np.savez(path, {', '.join(f'{key}=...' for key in NPZ_KEYS)})"
        )
    return arrays


def _checked_nchw(spec: str, split: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Check one npz split and return its x as NCHW (layout rules in :func:`load_dataset`)."""
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise InvalidDatasetError(f"{spec}: x_{split} has dtype {x.dtype}; allowed: uint8, float")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or len(y) == 0:
        raise InvalidDatasetError(
            f"{spec}: y_{split} must be a non-empty 1-D integer array, got {y.dtype} {y.shape}; "
            "convert with y.astype(np.int64)"
        )
    if len(x) != len(y):
        raise InvalidDatasetError(f"{spec}: x_{split} has {len(x)} samples but y_{split} has "
                                  f"{len(y)}; they must match")
    if y.min() < 0:
        raise InvalidDatasetError(f"{spec}: y_{split} has label {int(y.min())}; labels must be "
                                  "0..num_classes-1")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise InvalidDatasetError(f"{spec}: x_{split} contains NaN or inf; clean the data")
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise InvalidDatasetError(f"{spec}: x_{split} has shape {x.shape}; allowed: "
                                  "(N, C, H, W), (N, H, W, C), (N, H, W)")
    is_nhwc = x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3)
    return np.transpose(x, (0, 3, 1, 2)) if is_nhwc else x


def check_arrays(name: str, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Check the arrays of an npz data set (layout rules in :func:`load_dataset`).

    Args:
        name: What the arrays are, for messages (the spec, or ``arrays``).
        arrays: ``x_train, y_train, x_test, y_test``.

    Returns:
        ``(x_train, x_test)`` as NCHW.

    Raises:
        InvalidDatasetError: an array is missing, of the wrong dtype or shape, labels are
            negative, or the splits differ, naming the array.
    """
    missing = [key for key in NPZ_KEYS if key not in arrays]
    if missing:
        raise InvalidDatasetError(f"{name}: missing array(s) {missing}; give "
                                  f"{', '.join(NPZ_KEYS)}")
    x_train = _checked_nchw(name, "train", np.asarray(arrays["x_train"]), np.asarray(arrays["y_train"]))
    x_test = _checked_nchw(name, "test", np.asarray(arrays["x_test"]), np.asarray(arrays["y_test"]))
    if x_train.shape[1:] != x_test.shape[1:] or (x_train.dtype == np.uint8) != (x_test.dtype == np.uint8):
        raise InvalidDatasetError(
            f"{name}: splits differ: x_train {x_train.dtype} {x_train.shape[1:]}, x_test "
            f"{x_test.dtype} {x_test.shape[1:]}; both need one per-sample shape and pixel type"
        )
    return x_train, x_test


def _load_npz(spec: str, path: Path, size: int | None, mean, std, limits) -> Dataset:
    train_limit, test_limit, seed = limits
    arrays = _read_npz(spec, path)
    x_train, x_test = check_arrays(spec, arrays)
    is_uint8 = arrays["x_train"].dtype == np.uint8
    channels = x_train.shape[1]
    already_normalized = not is_uint8 and (
        min(x_train.min(), x_test.min()) < 0 or max(x_train.max(), x_test.max()) > 1
    )
    default_mean, default_std = ((0.0,), (1.0,)) if already_normalized else ((0.5,), (0.5,))
    mean = _channel_values("mean", mean, default_mean * channels, channels)
    std = _channel_values("std", std, default_std * channels, channels)
    y_train, y_test = arrays["y_train"].astype(np.int64), arrays["y_test"].astype(np.int64)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    keep_train = _limited(len(x_train), train_limit, seed, 0)
    keep_test = _limited(len(x_test), test_limit, seed, 1)
    x_train, x_test = x_train[keep_train].astype(np.float32), x_test[keep_test].astype(np.float32)
    if is_uint8:
        x_train, x_test = x_train / 255.0, x_test / 255.0
    if not already_normalized:
        x_train, x_test = normalize_pixels(x_train, mean, std, 1.0), normalize_pixels(x_test, mean, std, 1.0)
    if size is not None:  # bilinear resizing commutes with the per-channel normalization
        x_train, x_test = _resize(x_train, size), _resize(x_test, size)
    return Dataset(spec, x_train, y_train[keep_train], x_test, y_test[keep_test], num_classes,
                   tuple(x_train.shape[1:]), mean, std)


def _class_folders(spec: str, folder: Path) -> list[str]:
    if not folder.is_dir():
        raise InvalidDatasetError(
            f"{spec}: folder {str(folder)!r} not found; expected layout PATH/train/<class>/*.png "
            f"and PATH/test/<class>/*.png (images: {', '.join(IMAGE_SUFFIXES)})"
        )
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name[0] != ".")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _load_imagefolder(spec: str, root: Path, size: int, mean, std, limits) -> Dataset:
    train_limit, test_limit, seed = limits
    mean = _channel_values("mean", mean, IMAGENET_MEAN, 3)
    std = _channel_values("std", std, IMAGENET_STD, 3)
    classes = _class_folders(spec, root / "train")
    test_classes = _class_folders(spec, root / "test")
    if not classes:
        raise InvalidDatasetError(f"{spec}: {str(root / 'train')!r} has no class sub-folders; "
                                  "expected train/<class>/*.png")
    if classes != test_classes:
        raise InvalidDatasetError(
            f"{spec}: train and test class folders differ: only in train "
            f"{sorted(set(classes) - set(test_classes))}, only in test "
            f"{sorted(set(test_classes) - set(classes))}; both need the same class names"
        )
    splits = {}
    for split, limit, stream in (("train", train_limit, 0), ("test", test_limit, 1)):
        files = {name: _image_files(root / split / name) for name in classes}
        empty = [name for name in classes if not files[name]]
        if (split == "train" and empty) or len(empty) == len(classes):
            raise InvalidDatasetError(
                f"{spec}: no images ({', '.join(IMAGE_SUFFIXES)}) in {split}/ class folder(s) "
                f"{empty}; add images or remove those folders"
            )
        samples = [(path, label) for label, name in enumerate(classes) for path in files[name]]
        samples = [samples[i] for i in _limited(len(samples), limit, seed, stream)]
        pixels = np.stack([_read_image(spec, path, size) for path, _ in samples])
        labels = np.asarray([label for _, label in samples], dtype=np.int64)
        splits[split] = (normalize_pixels(pixels, mean, std, 1.0), labels)
    return Dataset(spec, *splits["train"], *splits["test"], len(classes), (3, size, size),
                   mean, std)


def _read_image(spec: str, path: Path, size: int) -> np.ndarray:
    """One image as float32 (3, size, size) in [0, 1], resized with Pillow's bilinear filter."""
    try:
        from PIL import Image
    except ImportError:
        raise InvalidConfigError("imagefolder data sets need Pillow: pip install pillow") from None
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, ValueError) as error:
        raise InvalidDatasetError(f"{spec}: cannot read image {str(path)!r} ({error}); remove "
                                  "or replace the file") from None
    return np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
