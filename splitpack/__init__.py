"""splitpack: compile a trained DNN into a bundle of head/tail variants for end-edge co-inference.

The Python surface (README "Python"), loaded on first use so that ``import splitpack`` on a
device imports neither torch nor the compiler:

* :func:`compile` — a model (``nn.Module``, ONNX, spec string) and a data set into a bundle;
* :func:`load_bundle`, :func:`verify` — open a bundle (hashes, schema), run its artifacts;
* :class:`DeviceRuntime` — run a bundle on a device against an edge: ``infer``, ``pin``,
  ``unpin``, ``current_variant``, ``stats``;
* :func:`serve` — the edge: every tail of a bundle over HTTP;

and the typed errors every one of them raises.
"""

from splitpack._version import __version__
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

_LAZY = {
    "compile": "splitpack.api",
    "load_bundle": "splitpack.api",
    "verify": "splitpack.api",
    "serve": "splitpack.api",
    "DeviceRuntime": "splitpack.runtimes.device",
}

__all__ = [
    "__version__",
    "compile",
    "load_bundle",
    "verify",
    "serve",
    "DeviceRuntime",
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


def __getattr__(name: str):
    """Import the public functions and classes on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'splitpack' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
