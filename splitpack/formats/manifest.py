"""The typed, versioned ``manifest.json`` of a bundle.

Every model is closed (``extra="forbid"``) and frozen: an unknown key is an error that names
the key, and a loaded manifest cannot be changed in place. A new or renamed key means a new
:data:`SCHEMA_VERSION`; :func:`parse_manifest` refuses versions it does not know.

Manifest integrity: ``bundle_id`` is the sha256 (hex) of the manifest's canonical JSON with
``bundle_id`` left out (:func:`compute_bundle_id`); :func:`parse_manifest` recomputes and checks
it. The manifest holds the sha256 of every file, so the id fixes the whole bundle: any edited
manifest value or artifact byte is detected on load, and the wire payload's ``bundle_id``
(64 bytes, the wire's maximum) tells the edge which exact bundle a device runs. It detects
edits and corruption, not an adversary, who could recompute it: sign the archive for that.
Runs on devices: the standard library and pydantic only.
"""

from __future__ import annotations

import hashlib
import json
import re
import types
import typing
from typing import Annotated, Any, Literal, Mapping, Union

from pydantic import (
    AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError,
    field_validator, model_validator,
)  # fmt: skip

from splitpack.errors import InvalidBundleError
from splitpack.formats.variants import VariantProfile

__all__ = [
    "SCHEMA_VERSION", "MANIFEST_NAME", "CODINGS", "UPLOAD_FORMATS", "TensorSpec", "Preprocessing",
    "Quantization", "Artifacts", "InputUpload", "LatencyProfile", "TfliteLayout", "Variant",
    "FileEntry", "Samples", "Manifest",
    "safe_relpath", "compute_bundle_id", "build_manifest", "parse_manifest", "manifest_to_json",
]  # fmt: skip

# 2: quantization.coding, artifacts.entropy_tables, the edge variant's upload, payload_bytes_p95.
SCHEMA_VERSION = 2
CODINGS = ("bitpack", "entropy")
UPLOAD_FORMATS = ("zlib", "png", "jpeg", "webp")
_LOSSY_UPLOADS = ("jpeg", "webp")
MANIFEST_NAME = "manifest.json"
_DRIVE = re.compile(r"^[A-Za-z]:")
_PLACEHOLDER_ID = "0" * 64


def safe_relpath(path: str) -> str:
    """Check that ``path`` is a relative POSIX path that stays inside the bundle.

    One spelling per file: no absolute path, drive letter, ``..`` or ``.`` component, empty
    component (``a//b``, trailing ``/``), backslash, colon or NUL.

    Args:
        path: A path relative to the bundle root, e.g. ``"variants/l3/head.onnx"``.

    Returns:
        ``path`` unchanged.

    Raises:
        InvalidBundleError: naming the path and what is wrong with it.
    """
    if not isinstance(path, str) or not path:
        reason = "it is empty" if path == "" else f"it is a {type(path).__name__}, not a str"
    elif path.startswith("/"):
        reason = "it is absolute"
    elif _DRIVE.match(path):
        reason = "it starts with a drive letter"
    elif "\\" in path or ":" in path or "\x00" in path:
        reason = "it contains a backslash, colon or NUL"
    elif ".." in path.split("/"):
        reason = "it has a '..' component that leaves the bundle"
    elif any(part in ("", ".") for part in path.split("/")):
        reason = "it has an empty or '.' component"
    else:
        return path
    raise InvalidBundleError(
        f"path {path!r} is not allowed in a bundle: {reason}; use a relative POSIX path "
        f"inside the bundle such as 'variants/l3/head.onnx'")


RelPath = Annotated[str, AfterValidator(safe_relpath)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
# Variant ids travel in wire headers (1..64 bytes) and name npz keys and folders.
VariantId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Layout = Annotated[str, StringConstraints(pattern=r"^[A-Z]{1,8}$")]
Name = Annotated[str, StringConstraints(min_length=1)]
Dim = Annotated[int, Field(ge=1)]
TensorDtype = Literal["bool", "uint8", "int8", "uint16", "int16", "int32", "int64", "float16",
                      "float32", "float64"]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TensorSpec(_Closed):
    """Name, dtype and shape of a tensor; a str dim is symbolic (``"batch"``)."""

    name: Name
    dtype: TensorDtype
    shape: list[Dim | Name]


class Preprocessing(_Closed):
    """How the edge turns a raw upload into the model input: ``(u8 / input_range - mean) / std``.

    ``mean`` and ``std`` have one value per channel (or a single value for all channels).
    """

    mean: list[float] = Field(min_length=1)
    std: list[Annotated[float, Field(gt=0)]] = Field(min_length=1)
    input_range: float = Field(default=255.0, gt=0)

    @model_validator(mode="after")
    def _matching(self) -> "Preprocessing":
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
        return self


class Quantization(_Closed):
    """The codes at the cut: ``bits``-bit integers. The per-channel dequantization is a constant of
    the tail graph, so ``scale`` and ``offset`` are what the wire header carries (1 and 0 for
    bundles of this schema: the codes travel as integers).

    ``codes_shape`` is the shape of the codes of one sample (no batch dimension). ``coding``
    says how the codes travel: ``bitpack`` (bit-packed) or ``entropy`` (rANS with the static
    tables in ``artifacts.entropy_tables``; the edge still accepts bit-packed codes).
    """

    bits: Literal[1, 2, 4, 6, 8]
    scale: float = Field(gt=0)
    offset: float
    codes_shape: list[Dim] = Field(min_length=1)
    coding: Literal["bitpack", "entropy"] = "bitpack"


class Artifacts(_Closed):
    """Files of a variant, as paths relative to the bundle root (None when absent):
    its models, and for an entropy-coded split variant its tables (``.npz``)."""

    head: RelPath | None
    head_tflite: RelPath | None
    tail: RelPath | None
    entropy_tables: RelPath | None = None


class InputUpload(_Closed):
    """How the ``edge`` variant uploads the input: ``zlib`` or ``png`` (lossless), or ``jpeg`` /
    ``webp`` at ``quality`` 1..100 (chosen at compile time as the lowest that meets the floor)."""

    format: Literal["zlib", "png", "jpeg", "webp"]
    quality: int | None = Field(default=None, ge=1, le=100)

    @model_validator(mode="after")
    def _quality(self) -> "InputUpload":
        if self.format in _LOSSY_UPLOADS and self.quality is None:
            raise ValueError(f"upload format {self.format!r} needs a quality in 1..100")
        if self.format not in _LOSSY_UPLOADS and self.quality is not None:
            raise ValueError(f"upload format {self.format!r} is lossless and takes no quality "
                             f"(found {self.quality}); only {', '.join(_LOSSY_UPLOADS)} do")
        return self


class LatencyProfile(_Closed):
    """Measured cost of a variant where ``Manifest.profiles`` says it was measured."""

    head_ms: float = Field(ge=0)
    encode_ms: float = Field(default=0.0, ge=0)
    decode_ms: float = Field(default=0.0, ge=0)
    tail_ms: float = Field(ge=0)
    result_bytes: int = Field(ge=0)
    device_memory_bytes: int = Field(ge=0)


class TfliteLayout(_Closed):
    """Tensor layouts (``"NCHW"``, ``"NHWC"``, ``"NC"``...) and names of a LiteRT head."""

    input_layout: Layout
    output_layout: Layout
    input_name: Name
    output_name: Name


class Variant(_Closed):
    """One deployable plan: a split at ``cut`` with a codec, or ``local`` / ``edge`` whole model.

    Accuracies are top-1 in percent. ``split`` variants have a cut, codec, quantization, head
    and tail; ``local`` runs the whole model as its head, ``edge`` as its tail, fed by the
    input as ``upload`` says (None: zlib, lossless). ``payload_bytes`` is what one sample's
    message really takes on the wire, header included (the mean where it depends on the
    content), ``payload_bytes_p95`` its 95th percentile.
    """

    id: VariantId
    kind: Literal["split", "local", "edge"]
    cut: str | None
    cut_label: str | None
    codec: str | None
    compression_ratio: float = Field(gt=0)
    payload_bytes: int = Field(ge=0)
    payload_bytes_p95: int | None = Field(default=None, ge=0)
    accuracy: float = Field(ge=0, le=100)
    predicted_accuracy: float | None = Field(ge=0, le=100)
    artifacts: Artifacts
    head_output: TensorSpec | None
    tail_input: TensorSpec | None
    quantization: Quantization | None
    latency: LatencyProfile
    tflite: TfliteLayout | None = None
    tflite_max_abs_diff: float | None = Field(default=None, ge=0)
    upload: InputUpload | None = None

    def profile(self) -> VariantProfile:
        """What planning reads of this variant: its costs, sizes and accuracy."""
        latency = self.latency
        return VariantProfile(
            id=self.id, kind=self.kind, head_ms=latency.head_ms, encode_ms=latency.encode_ms,
            decode_ms=latency.decode_ms, tail_ms=latency.tail_ms, payload_bytes=self.payload_bytes,
            result_bytes=latency.result_bytes, accuracy=self.accuracy,
            device_memory_bytes=latency.device_memory_bytes, cut=self.cut,
            compression_ratio=self.compression_ratio)

    @model_validator(mode="after")
    def _kind_fields(self) -> "Variant":
        needed, unset = _KIND_RULES[self.kind]
        absent = [name for name in needed if _dotted(self, name) is None]
        present = [name for name in unset if _dotted(self, name) is not None]
        if absent or present:
            raise ValueError(f"{self.kind} variant '{self.id}' " + "; ".join(
                ([f"needs {', '.join(absent)}"] if absent else [])
                + ([f"must not set {', '.join(present)}"] if present else [])))
        if self.kind == "local":
            nonzero = [name for name in ("payload_bytes", "latency.tail_ms", "latency.decode_ms",
                                         "latency.result_bytes") if _dotted(self, name) != 0]
            nonzero += ["payload_bytes_p95"] if self.payload_bytes_p95 not in (None, 0) else []
            if nonzero:
                raise ValueError(f"local variant '{self.id}' sends nothing and runs nothing "
                                 f"on the edge, so {', '.join(nonzero)} must be 0")
        entropy = self.quantization is not None and self.quantization.coding == "entropy"
        if entropy != (self.artifacts.entropy_tables is not None):
            raise ValueError(f"variant '{self.id}': quantization.coding 'entropy' and "
                             "artifacts.entropy_tables go together (the tables file codes the "
                             "codes); set both or neither")
        tflite_fields = (self.tflite, self.tflite_max_abs_diff)
        if self.artifacts.head_tflite is None and tflite_fields != (None, None):
            raise ValueError(f"variant '{self.id}' sets tflite / tflite_max_abs_diff but has no "
                             "artifacts.head_tflite")
        return self


# Per variant kind: the fields it needs, and the fields it must leave None.
_KIND_RULES = {
    "split": (("cut", "codec", "quantization", "artifacts.head", "artifacts.tail"), ("upload",)),
    "local": (("artifacts.head",), ("cut", "cut_label", "codec", "quantization", "artifacts.tail",
                                    "upload")),
    "edge": (("artifacts.tail",), ("cut", "cut_label", "codec", "quantization", "artifacts.head",
                                   "artifacts.head_tflite")),
}


def _dotted(model: BaseModel, name: str) -> Any:
    for part in name.split("."):
        model = getattr(model, part)
    return model


class FileEntry(_Closed):
    """Size in bytes and lowercase hex sha256 of one bundle file."""

    sha256: Sha256
    size: int = Field(ge=0)


class Samples(_Closed):
    """Sample inputs and every variant's expected outputs, for ``verify`` on the target.

    ``path`` is an .npz with ``inputs`` (``count`` samples of ``input_dtype``);
    ``expected_outputs`` is an .npz with one array per variant id (it may be the same file).
    """

    path: RelPath
    count: int = Field(ge=1)
    input_dtype: Literal["uint8", "float32"]
    expected_outputs: RelPath


class Manifest(_Closed):
    """The contents of ``manifest.json``: what a bundle holds and how to check it.

    ``bundle_id`` seals the rest (see the module doc); accuracies are top-1 in percent;
    ``predictor`` is the relative path of the accuracy predictor's JSON; ``profiles`` says
    where and how latencies were measured (host, threads, provider); ``files`` maps every
    relative path the bundle holds (not ``manifest.json``) to its sha256 and size.
    """

    schema_version: int
    bundle_id: Sha256
    model_id: Name
    created_by: str
    input: TensorSpec
    output: TensorSpec
    num_classes: int = Field(ge=1)
    preprocessing: Preprocessing | None
    baseline_accuracy: float = Field(ge=0, le=100)
    variants: list[Variant] = Field(min_length=2)
    predictor: RelPath | None
    profiles: dict[str, str | float | int]
    samples: Samples | None
    files: dict[RelPath, FileEntry]

    @field_validator("schema_version")
    @classmethod
    def _version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(_version_message(value))
        return value

    @field_validator("files")
    @classmethod
    def _not_itself(cls, value: dict[str, FileEntry]) -> dict[str, FileEntry]:
        if MANIFEST_NAME in value:
            raise ValueError(f"files must not list {MANIFEST_NAME} itself (bundle_id covers it)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        ids = [v.id for v in self.variants]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"variant ids must be unique; repeated: {repeated}")
        for kind in ("local", "edge"):
            found = [v.id for v in self.variants if v.kind == kind]
            if len(found) != 1:
                raise ValueError(f"a bundle has exactly one {kind} variant; found {len(found)} "
                                 f"({found}) among ids {ids}")
        named = {"predictor": self.predictor}
        if self.samples is not None:
            named.update({"samples.path": self.samples.path,
                          "samples.expected_outputs": self.samples.expected_outputs})
        for v in self.variants:
            named.update({f"variants[{v.id}].artifacts.{k}": p
                          for k, p in v.artifacts.model_dump().items()})
        unlisted = [f"{key} = {path!r}" for key, path in named.items()
                    if path is not None and path not in self.files]
        if unlisted:
            raise ValueError(f"paths not listed in files: {'; '.join(unlisted)}; every file the "
                             "manifest names must be listed in files with its sha256 and size")
        return self


def _version_message(version: object) -> str:
    return (f"schema version {version!r} is not supported by this splitpack (supports "
            f"{SCHEMA_VERSION}); upgrade splitpack or recompile the bundle")


def _canonical(manifest: Manifest) -> bytes:
    body = manifest.model_dump(mode="json", exclude={"bundle_id"})
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def compute_bundle_id(manifest: Manifest) -> str:
    """The sha256 (hex) of ``manifest``'s canonical JSON without ``bundle_id``.

    Args:
        manifest: Any manifest; its own ``bundle_id`` is ignored.

    Returns:
        64 lowercase hex digits.
    """
    return hashlib.sha256(_canonical(manifest)).hexdigest()


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model that holds the key at ``loc`` (for 'unknown key' messages)."""
    current: Any = Manifest
    for part in loc[:-1]:
        if isinstance(current, type) and issubclass(current, BaseModel):
            if part not in current.model_fields:
                return []
            current = current.model_fields[part].annotation
        elif typing.get_origin(current) in (list, dict):
            current = typing.get_args(current)[-1]
        else:
            return []
        if typing.get_origin(current) in (Union, types.UnionType):
            models = [a for a in typing.get_args(current) if a is not type(None)]
            current = models[0] if len(models) == 1 else current
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _key_path(loc: tuple[Any, ...]) -> str:
    """'variants.0.cut' from a pydantic location, without union member tags."""
    parts = [str(p) for p in loc if not (isinstance(p, str) and (
        p in ("str", "int", "float", "bool") or p.startswith(("constrained-", "function-"))))]
    if parts and parts[-1] == "[key]":
        return f"{'.'.join(parts[:-2])}[{json.dumps(parts[-2])}]"
    return ".".join(parts)


def _raise_validation(exc: ValidationError, source: str) -> typing.NoReturn:
    problems: dict[str, list[str]] = {}  # key path -> messages (a union reports one per member)
    found: dict[str, str] = {}
    for error in exc.errors():
        loc, path = tuple(error["loc"]), _key_path(tuple(error["loc"]))
        if error["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc)
            hint = f" (allowed keys: {', '.join(allowed)})" if allowed else ""
            problems.setdefault(f"unknown key '{path}'{hint}", [])
        elif error["type"] == "missing":
            problems.setdefault(f"missing key '{path}'", [])
        else:
            messages = problems.setdefault(f"'{path}'" if path else "", [])
            messages.append(str(error["msg"]).removeprefix("Value error, "))
            if not isinstance(error.get("input"), (dict, list)):
                text = repr(error.get("input"))
                found[f"'{path}'" if path else ""] = text if len(text) <= 80 else text[:77] + "..."
    described = [key + (": " if key and messages else "") + " or ".join(dict.fromkeys(messages))
                 + (f" (found {found[key]})" if key in found else "")
                 for key, messages in problems.items()]
    raise InvalidBundleError(
        f"{source}: {'; '.join(described)}; fix these keys or recompile the bundle with this "
        f"splitpack (schema version {SCHEMA_VERSION})") from None


def build_manifest(fields: Mapping[str, Any], *, source: str = MANIFEST_NAME) -> Manifest:
    """Validate manifest fields (without ``bundle_id``) and seal them with their bundle id.

    Values are coerced where lossless (numpy scalars, ints for floats).

    Args:
        fields: Every manifest key except ``bundle_id``.
        source: Name used in error messages.

    Returns:
        The manifest, with ``bundle_id = compute_bundle_id(manifest)``.
    """
    if "bundle_id" in fields:
        raise InvalidBundleError(
            f"{source}: 'bundle_id' is computed from the other fields; remove it from the fields")
    try:
        draft = Manifest.model_validate({**fields, "bundle_id": _PLACEHOLDER_ID})
    except ValidationError as exc:
        _raise_validation(exc, source)
    return draft.model_copy(update={"bundle_id": compute_bundle_id(draft)})


def parse_manifest(text_or_dict: str | bytes | Mapping[str, Any], *,
                   source: str = MANIFEST_NAME) -> Manifest:
    """Parse and check a manifest: schema version, keys, types, and its ``bundle_id``.

    Validation is strict (no ``"91.2"`` for a float). The version is read first, so that a
    newer bundle is refused with an upgrade hint rather than a list of unknown keys.

    Args:
        text_or_dict: The JSON text of ``manifest.json`` or its decoded dict.
        source: Name used in error messages.

    Returns:
        The validated manifest.

    Raises:
        InvalidBundleError: naming the offending key path(s), the version, or a bundle_id that
            does not match the contents.
    """
    data: Any = text_or_dict
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidBundleError(f"{source}: not valid UTF-8 JSON ({exc}); re-copy the bundle "
                                     "or recompile it") from None
    if not isinstance(data, Mapping):
        raise InvalidBundleError(f"{source}: the top level must be a JSON object; got "
                                 f"{type(data).__name__}")
    if "schema_version" not in data:
        raise InvalidBundleError(f"{source}: missing key 'schema_version'; this is not a "
                                 "splitpack manifest, or it was truncated")
    version = data["schema_version"]
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        raise InvalidBundleError(f"{source}: {_version_message(version)}")
    try:
        manifest = Manifest.model_validate(dict(data), strict=True)
    except ValidationError as exc:
        _raise_validation(exc, source)
    expected = compute_bundle_id(manifest)
    if manifest.bundle_id != expected:
        raise InvalidBundleError(
            f"{source}: bundle_id {manifest.bundle_id[:12]}… does not match the manifest's "
            f"contents (sha256 {expected[:12]}…); the manifest was edited or corrupted — "
            "recompile or re-copy the bundle")
    return manifest


def manifest_to_json(manifest: Manifest) -> str:
    """Stable JSON text of a manifest: sorted keys, 2-space indent, trailing newline.

    Args:
        manifest: The manifest to write.

    Returns:
        The text of ``manifest.json``.
    """
    body = manifest.model_dump(mode="json")
    return json.dumps(body, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
