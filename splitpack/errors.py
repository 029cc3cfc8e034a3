"""Typed errors. Each subclass says whose fault a failure is.

Messages name the offending item, the allowed values and a remedy. Only the CLI catches
``SplitpackError`` broadly, to print the message and exit non-zero.
"""

from __future__ import annotations

__all__ = [
    "SplitpackError",
    "InvalidModelError",
    "InvalidDatasetError",
    "InvalidConfigError",
    "InvalidBundleError",
    "InvalidInputError",
    "UnsupportedCutError",
    "WireFormatError",
    "InternalError",
]


class SplitpackError(Exception):
    """Base of every error splitpack raises on purpose."""


class InvalidModelError(SplitpackError, ValueError):
    """The user's model (spec, weights, ONNX file, input shape) is unusable."""


class InvalidDatasetError(SplitpackError, ValueError):
    """The data set spec or its contents do not fit (missing folders, shapes, classes)."""


class InvalidConfigError(SplitpackError, ValueError):
    """An option or config value is malformed or outside its allowed set (codec strings, ranges)."""


class InvalidBundleError(SplitpackError, ValueError):
    """A bundle or archive is corrupt, tampered with, of an unknown version, or escapes its folder."""


class InvalidInputError(InvalidConfigError):
    """One request's input (the array given to ``DeviceRuntime.infer``) has the wrong dtype or
    shape for the bundle: the caller's data, not a setting. (A subclass of
    ``InvalidConfigError``, which such input raised before it had its own type.)"""


class UnsupportedCutError(SplitpackError):
    """The requested cut is not a valid single-tensor cut of this graph, or the graph is unsupported."""


class WireFormatError(SplitpackError, ValueError):
    """A wire payload is malformed: bad magic, version, sizes, dtype, shape or checksum."""


class InternalError(SplitpackError):
    """An invariant of splitpack itself was broken: a bug to report."""
