"""Export a bundle's tails as a Triton Inference Server model repository.

:func:`export_triton` writes one model per tail (each split variant's, and the ``edge``
variant's whole model; the ``local`` variant runs on the device and has none)::

    REPO/README.md                    how to serve the repository and how a device reaches it
    REPO/<variant id>/config.pbtxt    platform onnxruntime_onnx, inputs, outputs, batching
    REPO/<variant id>/1/model.onnx    the bundle's tail, byte for byte

Each model's signature is read from the ONNX file itself with ONNX Runtime (so the names are
the ones Triton will find) and checked against the manifest (codes shape for split tails, the
model input for ``edge``, the model output). Each ``config.pbtxt`` is parsed back with Triton's
own schema (``tritonclient.grpc.model_config_pb2``) and compared with what was meant; each
``model.onnx`` is hashed after writing and compared with the manifest's sha256. The repository
is built in a temporary sibling folder and moved into place only when complete.

Triton speaks KServe v2 (HTTP and gRPC), not splitpack's wire format: see the README that is
written into the repository. Needs ``tritonclient[grpc]`` (``pip install 'splitpack[triton]'``)
for the schema, and onnxruntime; never torch or onnx.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitpack.errors import InternalError, InvalidBundleError, InvalidConfigError
from splitpack.formats.bundle import Bundle, read_bundle
from splitpack.formats.manifest import Manifest, Variant
from splitpack.runtimes.backends import open_session

__all__ = [
    "DEFAULT_MAX_BATCH_SIZE", "INSTANCE_KINDS", "TRITON_DTYPES", "TritonTensor", "TritonModel",
    "tail_models", "model_config_text", "check_model_config", "export_triton",
]  # fmt: skip

DEFAULT_MAX_BATCH_SIZE = 64
INSTANCE_KINDS = ("KIND_GPU", "KIND_CPU")
MODEL_FILE = "model.onnx"
VERSION = "1"
TRITON_DTYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "int8": "TYPE_INT8",
    "int16": "TYPE_INT16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
    "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
}  # fmt: skip
_ORT_DTYPES = {
    "tensor(bool)": "bool", "tensor(uint8)": "uint8", "tensor(uint16)": "uint16",
    "tensor(int8)": "int8", "tensor(int16)": "int16", "tensor(int32)": "int32",
    "tensor(int64)": "int64", "tensor(float16)": "float16", "tensor(float)": "float32",
    "tensor(double)": "float64",
}  # fmt: skip
_TRITON_HINT = "install it with: pip install 'splitpack[triton]'"


@dataclass(frozen=True)
class TritonTensor:
    """One input or output as Triton declares it: ``dims`` exclude the batch when the model
    batches, and -1 marks a variable dim."""

    name: str
    dtype: str
    dims: tuple[int, ...]

    @property
    def data_type(self) -> str:
        """Triton's name of the dtype, e.g. ``TYPE_UINT8``."""
        return TRITON_DTYPES[self.dtype]


@dataclass(frozen=True)
class TritonModel:
    """One tail as a Triton model.

    Attributes:
        name: The model (and folder) name: the variant id.
        variant: The manifest's variant.
        input, output: The tail's signature.
        max_batch_size: 0 when the tail's batch dim is fixed (Triton then sees it in ``dims``).
        relpath: The tail's path in the bundle.
    """

    name: str
    variant: Variant
    input: TritonTensor
    output: TritonTensor
    max_batch_size: int
    relpath: str


def _signature(model_bytes: bytes, source: str) -> tuple[tuple, tuple]:
    """((name, dtype, shape), (name, dtype, shape)) of a one-input, one-output ONNX model."""
    session = open_session(model_bytes, providers=["CPUExecutionProvider"], source=source)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise InvalidBundleError(f"{source}: has {len(inputs)} inputs and {len(outputs)} "
                                 "outputs; tails have exactly one of each")
    described = []
    for arg in (inputs[0], outputs[0]):
        if arg.type not in _ORT_DTYPES:
            raise InvalidBundleError(f"{source}: tensor {arg.name!r} is {arg.type}, which Triton's "
                                     f"onnxruntime backend is not given here; allowed: "
                                     f"{', '.join(_ORT_DTYPES)}")
        described.append((arg.name, _ORT_DTYPES[arg.type], tuple(arg.shape)))
    return described[0], described[1]


def _expected(manifest: Manifest, variant: Variant) -> tuple[tuple[str, tuple], tuple[str, tuple]]:
    """The manifest's (dtype, per-sample shape) of a tail's input and output."""
    if variant.kind == "split":
        wanted_input = ("uint8", tuple(variant.quantization.codes_shape))
    else:
        wanted_input = (manifest.input.dtype, tuple(manifest.input.shape[1:]))
    return wanted_input, (manifest.output.dtype, tuple(manifest.output.shape[1:]))


def _tensor(found: tuple, wanted: tuple, batched: bool, what: str, source: str) -> TritonTensor:
    name, dtype, shape = found
    sample = shape[1:]
    fits = dtype == wanted[0] and len(sample) == len(wanted[1]) and all(
        not isinstance(d, int) or not isinstance(w, int) or d == w
        for d, w in zip(sample, wanted[1]))
    if not fits:
        raise InvalidBundleError(
            f"{source}: its {what} {name!r} is {dtype} {list(shape)}, but the manifest says "
            f"{wanted[0]} (batch, {', '.join(map(str, wanted[1]))}); {what} and manifest must "
            "agree — recompile the bundle")
    dims = shape[1:] if batched else shape
    return TritonTensor(name, dtype, tuple(d if isinstance(d, int) and d > 0 else -1 for d in dims))


def tail_models(bundle: Bundle, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> list[TritonModel]:
    """The Triton models of a bundle's tails, in manifest order, signatures checked.

    Args:
        bundle: A verified bundle.
        max_batch_size: Triton's ``max_batch_size`` for tails whose batch dim is dynamic.

    Returns:
        One :class:`TritonModel` per split variant and one for the ``edge`` variant.
    """
    models = []
    for variant in bundle.manifest.variants:
        if variant.kind == "local":
            continue
        relpath = variant.artifacts.tail
        source = f"variant {variant.id!r} tail ({relpath})"
        found_input, found_output = _signature(bundle.read_bytes(relpath), source)
        batch_dim = found_input[2][0] if found_input[2] else 1
        batched = max_batch_size > 0 and not (isinstance(batch_dim, int) and batch_dim > 0)
        wanted_input, wanted_output = _expected(bundle.manifest, variant)
        models.append(TritonModel(
            name=variant.id, variant=variant, relpath=relpath,
            input=_tensor(found_input, wanted_input, batched, "input", source),
            output=_tensor(found_output, wanted_output, batched, "output", source),
            max_batch_size=max_batch_size if batched else 0))  # fmt: skip
    return models


def _parameters(model: TritonModel, manifest: Manifest) -> dict[str, str]:
    """What a client needs to know about the tail, kept in the config for Triton's metadata."""
    variant = model.variant
    values = {"splitpack_model_id": manifest.model_id, "splitpack_bundle_id": manifest.bundle_id,
              "splitpack_variant_kind": variant.kind}
    if variant.quantization is not None:
        q = variant.quantization
        values.update({"splitpack_bits": str(q.bits), "splitpack_scale": repr(q.scale),
                       "splitpack_offset": repr(q.offset)})
    if variant.kind == "edge" and manifest.preprocessing is not None:
        p = manifest.preprocessing
        values["splitpack_preprocessing"] = (f"mean={p.mean} std={p.std} "
                                             f"input_range={p.input_range}")
    return values


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tensor_text(tensor: TritonTensor) -> str:
    return (f"  {{\n    name: {_quoted(tensor.name)}\n    data_type: {tensor.data_type}\n"
            f"    dims: [ {', '.join(map(str, tensor.dims))} ]\n  }}")


def model_config_text(model: TritonModel, manifest: Manifest,
                      instance_kind: str = "KIND_GPU") -> str:
    """The ``config.pbtxt`` of one model (protobuf text format of Triton's ``ModelConfig``).

    Args:
        model: The model.
        manifest: The bundle's manifest (ids and quantization go into ``parameters``).
        instance_kind: ``KIND_GPU`` or ``KIND_CPU``.

    Returns:
        The text.
    """
    lines = [f"# Written by splitpack export-triton: variant {model.variant.id!r} "
             f"({model.variant.kind}) of model {manifest.model_id!r}.",
             f"name: {_quoted(model.name)}", 'platform: "onnxruntime_onnx"',
             f"max_batch_size: {model.max_batch_size}",
             f"input [\n{_tensor_text(model.input)}\n]",
             f"output [\n{_tensor_text(model.output)}\n]"]
    if model.max_batch_size > 0:
        lines.append("dynamic_batching { }")
    lines.append(f"instance_group [\n  {{\n    kind: {instance_kind}\n    count: 1\n  }}\n]")
    lines += [f"parameters {{\n  key: {_quoted(key)}\n"
              f"  value {{ string_value: {_quoted(value)} }}\n}}"
              for key, value in _parameters(model, manifest).items()]
    return "\n".join(lines) + "\n"


def _model_config_schema() -> tuple[Any, Any]:
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise InvalidConfigError(f"checking Triton configs needs tritonclient's schema, which is "
                                 f"not importable ({exc}); {_TRITON_HINT}") from None
    return model_config_pb2, text_format


def check_model_config(text: str, model: TritonModel, instance_kind: str = "KIND_GPU") -> Any:
    """Parse a ``config.pbtxt`` with Triton's schema and check it says what ``model`` means.

    Args:
        text: The config text.
        model: The model it describes.
        instance_kind: The instance kind it should ask for.

    Returns:
        The parsed ``model_config_pb2.ModelConfig``.

    Raises:
        InternalError: the text does not parse, or parses to something else (a bug here).
    """
    model_config_pb2, text_format = _model_config_schema()
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise InternalError(f"config.pbtxt of {model.name!r} does not parse with Triton's "
                            f"ModelConfig schema: {exc}") from None
    data_type = model_config_pb2.DataType.Name
    kind = model_config_pb2.ModelInstanceGroup.Kind.Name
    found = (config.name, config.platform, config.max_batch_size,
             [(t.name, data_type(t.data_type), tuple(t.dims)) for t in config.input],
             [(t.name, data_type(t.data_type), tuple(t.dims)) for t in config.output],
             config.HasField("dynamic_batching"),
             [(kind(g.kind), g.count) for g in config.instance_group])
    meant = (model.name, "onnxruntime_onnx", model.max_batch_size,
             [(model.input.name, model.input.data_type, model.input.dims)],
             [(model.output.name, model.output.data_type, model.output.dims)],
             model.max_batch_size > 0, [(instance_kind, 1)])
    if found != meant:
        raise InternalError(f"config.pbtxt of {model.name!r} parses to {found}, expected {meant}")
    return config


def _check_target(target: Path) -> None:
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise InvalidConfigError(f"--out {target}: exists and is not a folder; pass a new or "
                                 "empty folder")
    if target.is_dir() and any(target.iterdir()):
        raise InvalidConfigError(f"--out {target}: exists and is not empty; pass a new or empty "
                                 "folder (a repository is never written over other files)")


def _write_model(folder: Path, data: bytes, expected_sha256: str, relpath: str) -> None:
    path = folder / VERSION / MODEL_FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    written = hashlib.sha256(path.read_bytes()).hexdigest()
    if written != expected_sha256:
        raise InternalError(f"{path}: sha256 {written[:12]}… after writing, but {relpath} has "
                            f"{expected_sha256[:12]}… in the manifest; check the disk")


def export_triton(bundle_path: str | os.PathLike[str] | Bundle, out_repo: str | os.PathLike[str],
                  *, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                  instance_kind: str = "KIND_GPU") -> Path:
    """Write a Triton model repository with one model per tail of a bundle.

    Args:
        bundle_path: A bundle folder or archive (verified on load), or a :class:`Bundle`.
        out_repo: The repository folder: absent or empty.
        max_batch_size: Triton's ``max_batch_size`` (>= 0; 0 turns batching off).
        instance_kind: ``KIND_GPU`` (default) or ``KIND_CPU`` for hosts without a GPU.

    Returns:
        ``out_repo`` as a Path.

    Raises:
        InvalidBundleError: the bundle is missing, corrupt, or a tail disagrees with its manifest.
        InvalidConfigError: ``out_repo`` exists and is not an empty folder, a bad setting, or
            tritonclient is missing.
    """
    if (isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int)
            or max_batch_size < 0):
        raise InvalidConfigError(f"max_batch_size: found {max_batch_size!r}; expected an int >= 0")
    if instance_kind not in INSTANCE_KINDS:
        raise InvalidConfigError(f"instance_kind: found {instance_kind!r}; allowed: "
                                 f"{', '.join(INSTANCE_KINDS)}")
    bundle = bundle_path if isinstance(bundle_path, Bundle) else read_bundle(bundle_path)
    target = Path(out_repo)
    _check_target(target)
    _model_config_schema()  # fail before writing anything when tritonclient is missing
    models = tail_models(bundle, max_batch_size)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.partial-{secrets.token_hex(8)}"
    staging.mkdir()
    try:
        for model in models:
            text = model_config_text(model, bundle.manifest, instance_kind)
            check_model_config(text, model, instance_kind)
            (staging / model.name).mkdir()
            (staging / model.name / "config.pbtxt").write_text(text, encoding="utf-8")
            _write_model(staging / model.name, bundle.read_bytes(model.relpath),
                         bundle.manifest.files[model.relpath].sha256, model.relpath)
        (staging / "README.md").write_text(_readme(bundle.manifest, models, target, instance_kind),
                                           encoding="utf-8")
        _check_target(target)  # nobody wrote there meanwhile
        os.rename(staging, target)  # replaces an empty folder in one step on POSIX
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _readme(manifest: Manifest, models: list[TritonModel], target: Path, instance_kind: str) -> str:
    rows = []
    for model in models:
        q = model.variant.quantization
        quantization = (f"{q.bits} | {q.scale!r} | {q.offset!r}" if q is not None
                        else "— | — | —")
        rows.append(f"| `{model.name}` | {model.variant.kind} | `{model.input.name}` "
                    f"{model.input.data_type} {list(model.input.dims)} | `{model.output.name}` "
                    f"{model.output.data_type} {list(model.output.dims)} | {quantization} |")
    split = next((m for m in models if m.variant.kind == "split"), models[0])
    other_kind = "KIND_CPU" if instance_kind == "KIND_GPU" else "KIND_GPU"
    other_option = other_kind.removeprefix("KIND_").lower()
    preprocessing = manifest.preprocessing
    normalize = (f"`(pixels / {preprocessing.input_range:g} - mean) / std` with mean "
                 f"{preprocessing.mean} and std {preprocessing.std}, per channel"
                 if preprocessing is not None else "the float32 input the model expects")
    return f"""# Triton model repository of `{manifest.model_id}`

Written by `splitpack export-triton` from bundle
`{manifest.bundle_id}`.

One model per tail: the split variants' tails and the `edge` variant's whole model (the `local`
variant runs on the device and is not here). Each `config.pbtxt` asks for
`platform: "onnxruntime_onnx"`, `dynamic_batching` and one `{instance_kind}` instance; each
`1/model.onnx` is the bundle's tail, byte for byte.

## Serve it

```
tritonserver --model-repository={target.resolve()}
```

Triton answers KServe v2 over HTTP (port 8000) and gRPC (port 8001). On a host without a GPU,
export again with `--instance-kind {other_option}` (instance kind `{other_kind}`).

## Reach it from a device

Triton does not speak splitpack's wire format: there is no `SPLT` payload, no bundle-id check,
no bit-packing, no `/health` naming the bundle, so `splitpack run` and `DeviceRuntime` (which
need `splitpack serve`) do not talk to it. A device runs the variant's head itself and sends the
codes with `tritonclient` as a **uint8 tensor, one code per byte** (not packed; a `b`-bit code
is in `0 .. 2**b - 1`), batch first, named as the tail's input:

```python
import tritonclient.grpc as grpcclient

client = grpcclient.InferenceServerClient("EDGE_HOST:8001")
codes = head.run(x)                      # the variant's head: {split.input.dtype} {[-1, *split.input.dims]}
request = grpcclient.InferInput("{split.input.name}", list(codes.shape), "{split.input.data_type.removeprefix("TYPE_")}")
request.set_data_from_numpy(codes)
answer = client.infer("{split.name}", [request])
logits = answer.as_numpy("{split.output.name}")
```

The `edge` model is the whole model as ONNX Runtime runs it: it takes the float32 input after
preprocessing ({normalize}), not the raw uint8 pixels that `splitpack serve` accepts.

| model | kind | input | output | bits | scale | offset |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Quantization: a split tail dequantizes `code * scale + offset` itself (its decoder holds these
parameters, the same as the manifest's `quantization`); they are listed here, and in each
config's `parameters`, so that a device can check that its head's codes are the ones the tail
expects. The bundle's manifest remains the reference.
"""
