"""Load a user's model from a spec and bring it to one checked, self-contained ONNX graph.

A model spec is one of:

* ``path/to/file.py:factory`` — a Python file and a function in it that returns an ``nn.Module``;
* ``package.module:factory`` — the same, from an importable module;
* ``path/to/model.onnx`` — an ONNX file from any exporter (opset 11 and up).

torch models are exported with the TorchScript-based exporter (``dynamo=False``): it names
nodes after module scopes (``/layer1/layer1.0/conv1/Conv``), which is how a cut is traced back
to its torch module path, and it writes one file with the weights inside.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import io
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from splitpack.compiler.weights import WEIGHTS_WRAPPER_KEYS, load_weights
from splitpack.errors import InvalidConfigError, InvalidModelError

__all__ = [
    "LoadedModel",
    "parse_input_shape",
    "check_forward",
    "load_model",
    "load_torch_module",
    "export_onnx",
    "load_onnx",
    "check_onnx",
    "DEFAULT_OPSET",
    "WEIGHTS_WRAPPER_KEYS",
]

DEFAULT_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "output"


@dataclass(frozen=True)
class LoadedModel:
    """A model brought to ONNX, with the torch module kept where there was one.

    Attributes:
        onnx_model: the checked ONNX graph with a dynamic batch axis and inferred shapes.
        input_shape: the concrete full input shape used for analysis (batch first).
        torch_module: the ``nn.Module`` in eval mode, or None for an ONNX spec.
        spec: the model spec as given.
    """

    onnx_model: onnx.ModelProto
    input_shape: tuple[int, ...]
    torch_module: Any
    spec: str


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse ``1x3x224x224`` (batch first) into a tuple of positive ints.

    Raises:
        InvalidConfigError: when the text is not of that form.
    """
    if not re.fullmatch(r"\s*\d+(\s*x\s*\d+)+\s*", text or ""):
        raise InvalidConfigError(
            f"input shape {text!r} is malformed; expected dimensions joined by 'x' with the batch "
            "first, e.g. 1x3x224x224 or 1x1x32x32"
        )
    dims = tuple(int(part) for part in text.replace(" ", "").split("x"))
    if any(dim <= 0 for dim in dims):
        raise InvalidConfigError(f"input shape {text!r} has a dimension <= 0; every dimension must be >= 1")
    return dims


def _import_factory(spec: str):
    """Resolve ``file.py:factory`` or ``package.module:factory`` to the callable."""
    location, _, factory_name = spec.rpartition(":")
    if not location or not factory_name:
        raise InvalidModelError(
            f"model spec {spec!r} is malformed; expected path/to/file.py:factory, "
            "package.module:factory or path/to/model.onnx"
        )
    if location.endswith(".py"):
        path = Path(location)
        if not path.is_file():
            raise InvalidModelError(f"model file {str(path)!r} does not exist; check the path in {spec!r}")
        module_name = f"_splitpack_user_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # the user's file failed to import: report why
            sys.modules.pop(module_name, None)
            raise InvalidModelError(f"model file {str(path)!r} failed to import: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(location)
        except ModuleNotFoundError as exc:
            raise InvalidModelError(
                f"module {location!r} of model spec {spec!r} cannot be imported ({exc}); "
                "check the module path or pass a file path like path/to/file.py:factory"
            ) from exc
    factory = getattr(module, factory_name, None)
    if factory is None or not callable(factory):
        available = sorted(
            name for name, value in vars(module).items() if callable(value) and not name.startswith("_")
            and getattr(value, "__module__", None) == module.__name__
        )
        raise InvalidModelError(
            f"factory {factory_name!r} not found in {location!r}; callables defined there: "
            f"{', '.join(available) or '(none)'}"
        )
    return factory


def load_torch_module(spec: str, weights: str | Path | None = None):
    """Build the ``nn.Module`` named by ``spec`` and load ``weights`` into it.

    Args:
        spec: ``path/to/file.py:factory`` or ``package.module:factory``.
        weights: optional checkpoint file, read with ``torch.load(weights_only=True)``. It loads
            when ``module.load_state_dict(state, strict=True)`` would accept its state_dict
            (e.g. an old one without BatchNorm's ``num_batches_tracked``). The state_dict may be
            nested under one of ``WEIGHTS_WRAPPER_KEYS`` and its keys may carry the ``module.``
            prefix of (Distributed)DataParallel, in either order; each is unwrapped only when
            that makes more keys fit the model, so a prefix the model really has is kept.

    Returns:
        The module in eval mode.

    Raises:
        InvalidModelError: missing file or factory, a factory that does not return an
            ``nn.Module``, a weights file that is not a state_dict (such as a whole pickled
            model, which ``weights_only=True`` refuses), or weights that do not fit (missing and
            unexpected keys and differing shapes listed).
    """
    import torch

    factory = _import_factory(spec)
    try:
        module = factory()
    except Exception as exc:
        raise InvalidModelError(f"factory in {spec!r} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, torch.nn.Module):
        raise InvalidModelError(
            f"factory in {spec!r} returned {type(module).__name__}, not a torch.nn.Module; "
            "the factory must build and return the model"
        )
    if weights is not None:
        load_weights(module, Path(weights))
    return module.eval()


def export_onnx(module, input_shape: tuple[int, ...], *, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Export a torch module to one self-contained ONNX graph with a dynamic batch axis.

    Args:
        module: the ``nn.Module`` (put in eval mode here).
        input_shape: full input shape, batch first (the batch becomes dynamic).
        opset: ONNX opset to target.

    Returns:
        The checked model (``full_check=True``) with inferred shapes.

    Raises:
        InvalidModelError: when the exporter fails; its reason is in the message.
    """
    import torch

    module = module.eval()
    example = torch.zeros(*input_shape, dtype=torch.float32)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidModelError(
            f"model {type(module).__name__} failed to export to ONNX: {type(exc).__name__}: {reason}. "
            "Replace data-dependent Python control flow and unsupported ops, or export it yourself "
            "and pass the .onnx file."
        ) from exc
    return check_onnx(onnx.load_from_string(buffer.getvalue()), origin=type(module).__name__)


def check_onnx(model: onnx.ModelProto, *, origin: str = "model") -> onnx.ModelProto:
    """Run the full ONNX checker and shape inference; return the model with inferred shapes."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise InvalidModelError(
            f"{origin} fails the ONNX checker: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}. "
            "Re-export it with a current exporter, or run onnx.checker.check_model on it to see the node."
        ) from exc
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        raise InvalidModelError(f"{origin}: ONNX shape inference failed: {exc}") from exc


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX file (external data next to it is resolved) and check it."""
    path = Path(path)
    if not path.is_file():
        raise InvalidModelError(f"ONNX file {str(path)!r} does not exist; check the path")
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise InvalidModelError(f"{str(path)!r} is not a readable ONNX file: {exc}") from exc
    if model.opset_import and min(
        (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=11
    ) < 11:
        raise InvalidModelError(f"{str(path)!r} uses an opset below 11; re-export it with opset 11 or newer")
    return check_onnx(model, origin=repr(str(path)))


def _graph_input_shape(model: onnx.ModelProto) -> tuple[int | None, ...]:
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    dims = inputs[0].type.tensor_type.shape.dim
    return tuple(dim.dim_value if dim.HasField("dim_value") else None for dim in dims)


def load_model(
    spec: str,
    *,
    weights: str | Path | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> LoadedModel:
    """Load any model spec into a checked ONNX graph.

    Args:
        spec: ``file.py:factory``, ``package.module:factory`` or ``model.onnx``.
        weights: state_dict for torch specs (rejected for ONNX files, which carry their weights).
        input_shape: full input shape, batch first. Required for torch specs; for ONNX files it
            fills in dynamic dimensions (a dynamic batch alone defaults to 1).

    Returns:
        A ``LoadedModel``.
    """
    if spec.endswith(".onnx"):
        if weights is not None:
            raise InvalidModelError(f"--weights is for torch models; the ONNX file {spec!r} carries its own weights")
        model = load_onnx(spec)
        declared = _graph_input_shape(model)
        if input_shape is None:
            if any(dim is None for dim in declared[1:]):
                raise InvalidModelError(
                    f"{spec!r} has dynamic input dimensions {declared}; pass --input-shape, e.g. 1x3x224x224"
                )
            input_shape = (1,) + tuple(declared[1:])
        elif len(input_shape) != len(declared) or any(
            d is not None and d != s for d, s in zip(declared[1:], input_shape[1:])
        ):
            raise InvalidConfigError(
                f"input shape {'x'.join(map(str, input_shape))} does not fit {spec!r}, whose input is "
                f"{'x'.join('?' if d is None else str(d) for d in declared)}"
            )
        return LoadedModel(model, tuple(input_shape), None, spec)
    if ":" not in spec:
        raise InvalidModelError(
            f"model spec {spec!r} is malformed; expected path/to/file.py:factory, "
            "package.module:factory or path/to/model.onnx"
        )
    if input_shape is None:
        raise InvalidConfigError(f"torch model {spec!r} needs an input shape; pass --input-shape, e.g. 1x3x224x224")
    module = load_torch_module(spec, weights)
    check_forward(module, input_shape, spec)
    return LoadedModel(export_onnx(module, input_shape), tuple(input_shape), module, spec)


def check_forward(module, input_shape: tuple[int, ...], spec: str) -> None:
    """Run the module once so that a shape mismatch is reported as such, not as an export error."""
    import torch

    try:
        with torch.no_grad():
            module(torch.zeros(*input_shape))
    except Exception as exc:
        signature = ""
        try:
            signature = str(inspect.signature(module.forward))
        except (TypeError, ValueError):
            pass
        raise InvalidModelError(
            f"model {spec!r} fails on an input of shape {'x'.join(map(str, input_shape))}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
            f"Pass the input shape it expects with --input-shape (forward{signature})."
        ) from exc
