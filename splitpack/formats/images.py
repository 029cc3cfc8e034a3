"""Image uploads on the wire: uint8 pixels (N, C, H, W), C = 1 or 3, one PNG, JPEG or WebP per image.

The ``edge`` variant uploads the input as a user would: lossless, or JPEG / WebP at a quality
the compiler chose (see :mod:`splitpack.compiler.input_upload`). Data layout of a wire message
with an image compression: for each of the N images, its byte length (u32, little-endian) and
the encoded file. Decoding checks every length, opens each file with the one Pillow plugin of
its format, and compares its size and mode with the header's shape before any pixel is decoded.

WebP has no grayscale mode: a one-channel image travels as RGB and is turned back into one
channel on decoding. Runs on devices and on the edge: numpy and Pillow only.
"""

from __future__ import annotations

import io
import struct

import numpy as np

from splitpack.errors import WireFormatError
from splitpack.formats.bitpack import _check_int, _fail

__all__ = ["IMAGE_FORMATS", "LOSSY_FORMATS", "QUALITY_RANGE", "check_quality", "encode_images",
           "decode_images", "max_image_data_bytes"]

IMAGE_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}  # wire name -> Pillow format
LOSSY_FORMATS = ("jpeg", "webp")
QUALITY_RANGE = range(1, 101)
_MODES = {1: "L", 3: "RGB"}
# An image file is never larger than this many times its pixels plus a fixed overhead (JPEG of
# noise at quality 100 measured 1.6x + 0.6 kB): bounds a message before anything is decoded.
_WORST_RATIO, _WORST_OVERHEAD = 4, 2048


def check_quality(compression: str, quality: int | None) -> int | None:
    """``quality`` if it fits ``compression``: 1..100 for jpeg / webp, None for every other mode.

    Raises:
        WireFormatError: naming the allowed range.
    """
    if compression in LOSSY_FORMATS:
        return _check_int("quality", quality, QUALITY_RANGE, f"for {compression}")
    if quality is not None:
        raise _fail("quality", repr(quality), "None", f"{compression!r} takes no quality; only "
                    f"{' and '.join(LOSSY_FORMATS)} do")
    return None


def _check_image_shape(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    if len(shape) != 4 or shape[1] not in _MODES:
        raise _fail("shape", shape, "(N, 1 or 3, H, W) for an image upload")
    return shape  # type: ignore[return-value]


def max_image_data_bytes(shape: tuple[int, ...]) -> int:
    """The largest data an image upload of ``shape`` may carry (length fields included)."""
    batch, channels, height, width = _check_image_shape(tuple(shape))
    return batch * (4 + _WORST_RATIO * channels * height * width + _WORST_OVERHEAD)


def encode_images(pixels: np.ndarray, compression: str, quality: int | None) -> bytes:
    """Encode each image of a batch with Pillow.

    Args:
        pixels: uint8 array (N, C, H, W), C = 1 or 3.
        compression: "png", "jpeg" or "webp".
        quality: 1..100 for jpeg and webp; None for png.

    Returns:
        For each image, its length (u32) and its file.
    """
    from PIL import Image

    if compression not in IMAGE_FORMATS:
        raise _fail("compression", repr(compression), ", ".join(map(repr, IMAGE_FORMATS)))
    quality = check_quality(compression, quality)
    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        raise _fail("dtype", array.dtype.name, "uint8 for an image upload")
    _check_image_shape(array.shape)
    if compression == "webp":
        from PIL import features

        if not features.check("webp"):
            raise WireFormatError("this Pillow was built without WebP, so 'webp' uploads cannot be encoded; "
                                  "use 'jpeg' or 'png', or install a Pillow wheel with WebP support")
    options = {} if quality is None else {"quality": quality}
    frames = []
    for image in array:
        channels_last = np.ascontiguousarray(image[0] if len(image) == 1 else image.transpose(1, 2, 0))
        picture = Image.fromarray(channels_last)  # (H, W) uint8 is L, (H, W, 3) is RGB
        if compression == "webp" and picture.mode == "L":
            picture = picture.convert("RGB")
        buffer = io.BytesIO()
        picture.save(buffer, format=IMAGE_FORMATS[compression], **options)
        frames += [struct.pack("<I", buffer.tell()), buffer.getvalue()]
    return b"".join(frames)


def decode_images(data: bytes, shape: tuple[int, ...], compression: str) -> np.ndarray:
    """Decode the images of :func:`encode_images`.

    Args:
        data: The message's data.
        shape: (N, C, H, W) from the wire header; each image must have exactly H x W pixels of
            the mode C implies.
        compression: "png", "jpeg" or "webp".

    Returns:
        A new uint8 array of ``shape``.

    Raises:
        WireFormatError: naming the image and what is wrong with it.
    """
    from PIL import Image

    batch, channels, height, width = _check_image_shape(tuple(shape))
    plugin = IMAGE_FORMATS[compression]
    view = memoryview(data).cast("B")
    pixels = np.empty((batch, channels, height, width), dtype=np.uint8)
    position = 0
    for index in range(batch):
        if len(view) - position < 4:
            raise _fail("data", f"image {index} of {batch} missing", f"{batch} {compression} images")
        (length,) = struct.unpack_from("<I", view, position)
        position += 4
        if length == 0 or length > len(view) - position:
            raise _fail("data", f"image {index} of {length} bytes with {len(view) - position} left",
                        f"1..{len(view) - position} bytes", "the message was cut short")
        frame = bytes(view[position:position + length])
        position += length
        try:
            with Image.open(io.BytesIO(frame), formats=[plugin]) as picture:
                if picture.size != (width, height):
                    raise _fail("data", f"image {index} of {picture.size[0]}x{picture.size[1]} "
                                f"pixels", f"{width}x{height} as the header's shape {shape} says")
                wanted = {_MODES[channels]} | ({"RGB"} if compression == "webp" else set())
                if picture.mode not in wanted:
                    raise _fail("data", f"image {index} in mode {picture.mode}",
                                f"mode {_MODES[channels]} for {channels} channel(s)")
                picture.load()
                if picture.mode != _MODES[channels]:
                    picture = picture.convert(_MODES[channels])
                decoded = np.asarray(picture, dtype=np.uint8)
        except WireFormatError:
            raise
        except (OSError, SyntaxError, ValueError, EOFError, struct.error,
                Image.DecompressionBombError) as error:
            raise _fail("data", f"image {index}, not a readable {compression} file ({error})",
                        f"a {compression} image", "it was truncated or corrupted") from None
        pixels[index] = decoded[np.newaxis] if channels == 1 else decoded.transpose(2, 0, 1)
    if position != len(view):
        raise _fail("data", f"{len(view) - position} byte(s) after the last image", "none")
    return pixels
