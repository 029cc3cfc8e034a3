"""splitpack: compile a trained DNN into a bundle of head/tail variants for end-edge co-inference."""

from splitpack.errors import (
    InternalError,
    InvalidBundleError,
    InvalidConfigError,
    InvalidDatasetError,
    InvalidInputError,
    InvalidModelError,
    SplitpackError,
    UnsupportedCutError,
    WireFormatError,
)

from splitpack._version import __version__

__all__ = [
    "__version__",
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
