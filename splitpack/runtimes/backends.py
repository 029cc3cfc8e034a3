"""Model runtimes for heads and tails (ONNX Runtime, LiteRT), and the bundle-level conventions
that the device and the edge must agree on.

Runs on devices and on the edge: numpy, onnxruntime (or ai-edge-litert) and the standard
library only. Never torch, onnx or the compiler.

Conventions shared by :mod:`splitpack.runtimes.device` and :mod:`splitpack.serving.edge`
(kept here so that neither side imports the other):

* the wire carries a short bundle id, the first ``WIRE_BUNDLE_ID_LENGTH`` hex digits of
  ``manifest.bundle_id`` (:func:`wire_bundle_id`), which payload sizes in the manifest assume;
* a ``split`` variant sends its head's uint8 codes with the manifest's ``quantization`` (bits,
  scale, offset, codes_shape), bit-packed (``none`` / ``zlib``) or, when its ``coding`` is
  ``entropy``, entropy-coded with the tables of ``artifacts.entropy_tables``
  (:func:`load_entropy_tables`); the ``edge`` variant sends the raw uint8 input with bits 8,
  ``RAW_SCALE`` and ``RAW_OFFSET``, losslessly or in the lossy format of its ``upload``
  (:func:`upload_of`); :func:`expected_wire_input` lists what the edge accepts;
* raw pixels become the model input as ``(u8 / input_range - mean) / std`` per channel
  (:func:`splitpack.formats.variants.normalize_uint8`); without ``preprocessing`` the pixels are passed as float32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from splitpack.errors import InternalError, InvalidBundleError, InvalidConfigError
from splitpack.formats.bundle import Bundle
from splitpack.formats.entropy import EntropyTables, channel_axis, load_tables
from splitpack.formats.manifest import Manifest, Variant
from splitpack.formats.variants import WIRE_ID_PLACEHOLDER
from splitpack.formats.wire import WIRE_BUNDLE_ID_LENGTH, encode_payload, message_bytes
from splitpack.quiet import capture_native_stderr

__all__ = [
    "RAW_SCALE", "RAW_OFFSET", "BACKEND_KINDS", "LOSSLESS_UPLOADS",
    "WireInput", "open_session", "OnnxBackend", "LiteRtBackend", "load_backend", "wire_bundle_id",
    "expected_wire_input", "upload_of", "load_entropy_tables", "encode_request",
    "entropy_message_sizes", "layout_permutation",
]  # fmt: skip

RAW_SCALE, RAW_OFFSET = 1.0, 0.0  # a raw upload's codes are the pixels themselves
BACKEND_KINDS = ("onnxruntime", "litert")
LOSSLESS_UPLOADS = ("none", "zlib", "png")  # the edge variant always accepts these
_ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(int32)": "int32",
    "tensor(int64)": "int64", "tensor(bool)": "bool",
}  # fmt: skip


def wire_bundle_id(manifest: Manifest) -> str:
    """The bundle id as the wire carries it: the first 16 hex digits of ``manifest.bundle_id``.

    A prefix keeps every header short (payload sizes in the manifest assume it); 64 bits still
    tell apart any two bundles one edge could plausibly be asked about.
    """
    return manifest.bundle_id[:WIRE_BUNDLE_ID_LENGTH]


@dataclass(frozen=True)
class WireInput:
    """What a valid request for one variant carries: dtype, bits, per-sample shape, scale,
    offset, and the wire compressions the edge accepts for it."""

    dtype: str
    bits: int
    shape: tuple[int | str, ...]
    scale: float
    offset: float
    compressions: tuple[str, ...] = ("none", "zlib")


def upload_of(variant: Variant) -> tuple[str, int | None]:
    """How the ``edge`` variant uploads the input: (wire compression, quality).

    A variant without ``upload`` sends zlib (lossless), as bundles did before uploads had a
    format.
    """
    if variant.kind != "edge":
        raise InvalidConfigError(f"variant {variant.id!r} ({variant.kind}) uploads no input; "
                                 "only the edge variant does")
    if variant.upload is None:
        return "zlib", None
    return variant.upload.format, variant.upload.quality


def load_entropy_tables(bundle: Bundle, variant: Variant) -> EntropyTables | None:
    """The entropy tables of a split variant whose ``coding`` is ``entropy`` (else None),
    checked against the bundle's sha256 and against the codes the variant sends.

    Raises:
        InvalidBundleError: naming the file, when it is missing, corrupted, or made for other
            bits or channels than the variant's codes.
    """
    relpath = variant.artifacts.entropy_tables
    if variant.quantization is None or variant.quantization.coding != "entropy" or relpath is None:
        return None
    q = variant.quantization
    codes_rank = len(q.codes_shape) + 1
    if codes_rank not in (2, 3, 4):
        raise InvalidBundleError(f"variant {variant.id!r}: codes of shape {q.codes_shape} cannot "
                                 "be entropy-coded (ranks 2 to 4 with the batch); recompile with "
                                 "coding 'bitpack'")
    channels = q.codes_shape[channel_axis(codes_rank) - 1]
    return load_tables(bundle.read_bytes(relpath), expect_bits=q.bits, expect_channels=channels,
                       name=f"{relpath} (variant {variant.id!r} of bundle {bundle.root})")


def expected_wire_input(manifest: Manifest, variant: Variant) -> WireInput:
    """The payload the edge accepts for ``variant`` (a ``split`` or the ``edge`` variant).

    Args:
        manifest: The bundle's manifest (its ``input`` spec, for the ``edge`` variant).
        variant: A variant with a tail.

    Returns:
        The expected header fields; ``shape`` excludes the batch and may hold symbolic dims.
        A split variant accepts bit-packed codes (and entropy-coded ones when its coding is
        ``entropy``); the edge variant accepts lossless uploads and its own upload format.
    """
    if variant.kind == "split" and variant.quantization is not None:
        q = variant.quantization
        compressions = ("none", "zlib") + (("entropy",) if q.coding == "entropy" else ())
        return WireInput("uint8", q.bits, tuple(q.codes_shape), q.scale, q.offset, compressions)
    if variant.kind == "edge":
        upload, _ = upload_of(variant)
        compressions = LOSSLESS_UPLOADS + ((upload,) if upload not in LOSSLESS_UPLOADS else ())
        return WireInput("uint8", 8, tuple(manifest.input.shape[1:]), RAW_SCALE, RAW_OFFSET,
                         compressions)
    raise InvalidConfigError(f"variant {variant.id!r} ({variant.kind}) sends nothing to the "
                             "edge; only split variants and the edge variant have a wire input")


def encode_request(variant: Variant, array: np.ndarray, *, wire_bundle_id: str,
                   tables: EntropyTables | None = None) -> bytes:
    """The wire message a device sends for ``variant``.

    Args:
        variant: A split variant (``array``: its head's uint8 codes) or the edge variant
            (``array``: uint8 pixels, batch first).
        wire_bundle_id: :func:`wire_bundle_id` of the bundle.
        tables: The split variant's entropy tables (:func:`load_entropy_tables`), if any.

    Returns:
        Split codes entropy-coded with ``tables`` when that is smaller than bit-packing (codes
        far from the calibration can cost more), else bit-packed; the edge upload in its
        variant's format (:func:`upload_of`).
    """
    ids = {"bundle_id": wire_bundle_id, "variant_id": variant.id}
    if variant.kind == "edge":
        compression, quality = upload_of(variant)
        return encode_payload(array, bits=8, scale=RAW_SCALE, offset=RAW_OFFSET,
                              compression=compression, quality=quality, **ids)
    q = variant.quantization
    if variant.kind != "split" or q is None:
        raise InvalidConfigError(f"variant {variant.id!r} ({variant.kind}) sends nothing to the "
                                 "edge")
    fields = {"bits": q.bits, "scale": q.scale, "offset": q.offset, **ids}
    if tables is not None:
        message = encode_payload(array, compression="entropy", tables=tables, **fields)
        if len(message) <= message_bytes(np.shape(array), q.bits, **ids):
            return message
    return encode_payload(array, **fields)


def entropy_message_sizes(codes: np.ndarray, *, bits: int, tables: EntropyTables,
                          variant_id: str, wire_bundle_id: str = WIRE_ID_PLACEHOLDER,
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Bytes of each sample's one-sample message in entropy mode, header included.

    Args:
        codes: uint8 codes, batch first.
        bits, tables, variant_id, wire_bundle_id: As for :func:`encode_request` (sizes in a
            manifest assume a 16-digit bundle id).

    Returns:
        ``(entropy_coded, sent)``: the entropy-coded message of each sample, and what
        :func:`encode_request` sends for it — the smaller of that and the bit-packed message.
    """
    ids = {"bundle_id": wire_bundle_id, "variant_id": variant_id}
    entropy_coded = np.array([len(encode_payload(codes[i:i + 1], bits=bits, compression="entropy",
                                                 tables=tables, **ids)) for i in range(len(codes))])
    packed = message_bytes((1,) + tuple(np.shape(codes)[1:]), bits, **ids)
    return entropy_coded, np.minimum(entropy_coded, packed)


def layout_permutation(source: str, target: str) -> tuple[int, ...] | None:
    """Axes that transpose an array in ``source`` layout into ``target`` layout.

    Args:
        source, target: Layout letters, e.g. ``"NCHW"`` and ``"NHWC"``.

    Returns:
        The permutation for ``np.transpose``, or None when the layouts are equal.
    """
    if sorted(source) != sorted(target) or len(set(source)) != len(source):
        raise InvalidBundleError(f"layouts {source!r} and {target!r} are not permutations of "
                                 "each other; recompile the LiteRT head")
    return None if source == target else tuple(source.index(axis) for axis in target)


def _channels_first(layout: str) -> str:
    """The ONNX (PyTorch) spelling of a layout: channels right after the batch."""
    if "C" not in layout or len(layout) < 3:
        return layout
    rest = [axis for axis in layout if axis not in "NC"]
    return "NC" + "".join(rest) if layout.startswith("N") else layout


def _read_model(path_or_bytes: str | os.PathLike[str] | bytes) -> tuple[bytes, str]:
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return bytes(path_or_bytes), "<bytes>"
    path = Path(path_or_bytes)
    try:
        return path.read_bytes(), str(path)
    except OSError as exc:
        raise InvalidConfigError(f"model file {str(path)!r} cannot be read ({exc.strerror}); "
                                 "pass an existing .onnx / .tflite file or its bytes") from None


def _check_input(name: str, x: np.ndarray, dtype: str, shape: tuple) -> None:
    """Refuse an input of another dtype or shape before the runtime sees it."""
    fixed = [(i, d) for i, d in enumerate(shape) if isinstance(d, int) and i > 0]
    wrong_dims = x.ndim != len(shape) or any(x.shape[i] != d for i, d in fixed)
    if x.dtype.name != dtype or wrong_dims or x.ndim == 0 or x.shape[0] < 1:
        raise InvalidConfigError(
            f"input {name!r}: found {x.dtype.name} {tuple(x.shape)}, expected {dtype} "
            f"{tuple(shape)} (batch first; cast or reshape the array)")


def check_threads(threads: int | None) -> int | None:
    """``threads`` if it is None (the runtime's choice) or an int >= 1; else InvalidConfigError."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise InvalidConfigError(f"threads: found {threads!r}; expected an int >= 1, or None "
                                 "for the runtime's choice")
    return threads


def open_session(model: bytes, *, providers: list | None = None, threads: int | None = None,
                 optimize: bool = True, spinning: bool = True, source: str = "<bytes>",
                 error: type[Exception] = InvalidBundleError, remedy: str = "recompile the bundle"):
    """The one place an ONNX Runtime session is opened (backends, verification, the compiler's
    analysis and training, the Triton export).

    Args:
        model: The serialized model.
        providers: Execution providers; None for CUDA (if this onnxruntime has it) then CPU.
            The CUDA provider is told ``use_tf32=0``: it runs float32 convolutions and matmuls in
            TensorFloat-32 by default on Ampere and later, where the tails then differed from
            the bundle's float32 references by ~1e-3 and ``verify`` failed.
        threads: Intra-op threads; None for ONNX Runtime's choice.
        optimize: False disables graph optimizations (analysis that reads intermediate tensors).
        spinning: False stops idle worker threads from spinning (beside torch training on a
            small machine).
        source: What ``model`` is, for the error message.
        error: The error type raised when ONNX Runtime cannot load it, with ``remedy``.

    Returns:
        An ``onnxruntime.InferenceSession``.
    """
    import onnxruntime as ort

    if providers is None:
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    providers = [(p, {"use_tf32": "0"}) if p == "CUDAExecutionProvider" else p for p in providers]
    options = ort.SessionOptions()
    options.log_severity_level = 3  # CUDA-missing warnings are expected on CPU hosts
    if check_threads(threads) is not None:
        options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(model, options, providers=providers)
    except Exception as exc:  # ORT raises its own Exception subclasses
        raise error(f"{source}: ONNX Runtime cannot load it ({exc}); {remedy}") from exc


class OnnxBackend:
    """One ONNX Runtime session over a one-input, one-output model.

    Args:
        path_or_bytes: The ``.onnx`` file or its bytes.
        providers: Execution providers in order of preference; default CUDA when this
            onnxruntime offers it, then CPU. CUDA given by name runs in full float32
            (``use_tf32=0``); pass ``("CUDAExecutionProvider", {...})`` for other options.
        threads: Intra-op threads; default ONNX Runtime's choice.

    Attributes:
        provider: The provider that really runs the model (ONNX Runtime falls back to CPU when
            CUDA cannot start, so this is read back from the session, not assumed).
        input_name, input_shape, input_dtype, output_name, output_shape, output_dtype: The
            model's signature; symbolic dims are strings.
    """

    def __init__(self, path_or_bytes: str | os.PathLike[str] | bytes, *,
                 providers: list[str | tuple[str, dict]] | None = None,
                 threads: int | None = None) -> None:
        model, self.source = _read_model(path_or_bytes)
        self._session = open_session(model, providers=providers, threads=threads,
                                     source=self.source)
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise InvalidBundleError(f"{self.source}: has {len(inputs)} inputs and {len(outputs)} "
                                     "outputs; heads and tails have exactly one of each")
        self.provider = self._session.get_providers()[0]
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.input_shape = tuple(inputs[0].shape)
        self.output_shape = tuple(outputs[0].shape)
        self.input_dtype = _ORT_DTYPES.get(inputs[0].type, inputs[0].type)
        self.output_dtype = _ORT_DTYPES.get(outputs[0].type, outputs[0].type)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run the model on a batch.

        Args:
            x: The input, batch first, of the model's dtype and fixed dims.

        Returns:
            The output, batch first. A model whose batch is fixed at 1 runs sample by sample.
        """
        x = np.ascontiguousarray(x)
        _check_input(self.input_name, x, self.input_dtype, self.input_shape)
        try:
            if self.input_shape[0] == 1 and x.shape[0] > 1:
                return np.concatenate([self._run(x[i:i + 1]) for i in range(x.shape[0])])
            return self._run(x)
        except Exception as exc:
            raise InternalError(f"{self.source}: ONNX Runtime failed on an input of "
                                f"{x.dtype.name} {x.shape} ({exc})") from exc

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self._session.run([self.output_name], {self.input_name: x})[0]


class LiteRtBackend:
    """A LiteRT (TFLite) interpreter over a one-input, one-output model.

    A batch is run at once when the input can be resized to it, else sample by sample (most
    converted heads have a fixed batch of 1).

    Args:
        path_or_bytes: The ``.tflite`` file or its bytes.
        input_permutation: Axes that turn the caller's (ONNX-layout) input into the model's.
        output_permutation: Axes that turn the model's output into the ONNX layout.
        threads: Interpreter threads; default LiteRT's choice.
    """

    provider = "litert"

    def __init__(self, path_or_bytes: str | os.PathLike[str] | bytes, *,
                 input_permutation: tuple[int, ...] | None = None,
                 output_permutation: tuple[int, ...] | None = None,
                 threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        check_threads(threads)
        model, self.source = _read_model(path_or_bytes)
        try:
            with capture_native_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate"
                self._interpreter = Interpreter(model_content=model, num_threads=threads)
                self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise InvalidBundleError(f"{self.source}: LiteRT cannot load it ({exc}); "
                                     "recompile the bundle") from exc
        inputs, outputs = self._interpreter.get_input_details(), self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise InvalidBundleError(f"{self.source}: has {len(inputs)} inputs and {len(outputs)} "
                                     "outputs; heads have exactly one of each")
        self._input, self._output = inputs[0], outputs[0]
        self._in_perm, self._out_perm = input_permutation, output_permutation
        self.input_name, self.output_name = self._input["name"], self._output["name"]
        self.input_dtype = np.dtype(self._input["dtype"]).name
        self.output_dtype = np.dtype(self._output["dtype"]).name
        model_shape = tuple(int(d) for d in self._input["shape_signature"])
        self.input_shape = self._caller_shape(model_shape, input_permutation)
        self.output_shape = self._caller_shape(
            tuple(int(d) for d in self._output["shape_signature"]), output_permutation,
            inverse=False)
        self._batch = int(self._input["shape"][0])

    @staticmethod
    def _caller_shape(shape: tuple[int, ...], permutation, inverse: bool = True) -> tuple:
        """The shape as the caller sees it; -1 (dynamic) dims become symbolic names."""
        if permutation is not None:
            order = np.argsort(permutation) if inverse else permutation
            shape = tuple(shape[i] for i in order)
        return tuple("batch" if i == 0 and d in (-1, 1) else ("dim" if d < 0 else d)
                     for i, d in enumerate(shape))

    def _resize(self, batch: int) -> bool:
        if batch == self._batch:
            return True
        shape = list(self._input["shape"])
        shape[0] = batch
        try:
            self._interpreter.resize_tensor_input(self._input["index"], shape, strict=True)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError):
            self._interpreter.resize_tensor_input(self._input["index"],
                                                  [self._batch] + shape[1:], strict=False)
            self._interpreter.allocate_tensors()
            return False
        self._batch = batch
        return True

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        self._interpreter.set_tensor(self._input["index"], x)
        self._interpreter.invoke()
        return np.array(self._interpreter.get_tensor(self._output["index"]))  # a copy we own

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run the model on a batch in the caller's (ONNX) layout.

        Args:
            x: The input, batch first.

        Returns:
            The output, batch first, in ONNX layout.
        """
        x = np.ascontiguousarray(x)
        _check_input(self.input_name, x, self.input_dtype, self.input_shape)
        if self._in_perm is not None:
            x = np.ascontiguousarray(np.transpose(x, self._in_perm))
        try:
            if self._resize(x.shape[0]):
                output = self._invoke(x)
            else:
                self._resize(1)
                output = np.concatenate([self._invoke(x[i:i + 1]) for i in range(x.shape[0])])
        except (ValueError, RuntimeError) as exc:
            raise InternalError(f"{self.source}: LiteRT failed on an input of "
                                f"{x.dtype.name} {x.shape} ({exc})") from exc
        if self._out_perm is not None:
            output = np.ascontiguousarray(np.transpose(output, self._out_perm))
        return output


def load_backend(bundle: Bundle, variant: Variant | str, kind: str = "onnxruntime", *,
                 part: str | None = None, providers: list[str] | None = None,
                 threads: int | None = None) -> Any:
    """Load one artifact of a bundle into a runtime; its bytes are checked against the manifest.

    Args:
        bundle: A verified bundle (:func:`splitpack.formats.read_bundle`).
        variant: The variant or its id.
        kind: ``"onnxruntime"`` or ``"litert"`` (heads only: ``artifacts.head_tflite``).
        part: ``"head"`` or ``"tail"``; default the tail for the ``edge`` variant, else the head.
        providers, threads: Passed to :class:`OnnxBackend`.

    Returns:
        An :class:`OnnxBackend` or :class:`LiteRtBackend`.
    """
    if isinstance(variant, str):
        variant = bundle.variant(variant)
    check_threads(threads)  # before anything the bundle lacks is reported
    if kind not in BACKEND_KINDS:
        raise InvalidConfigError(f"backend {kind!r} is not known; allowed: "
                                 f"{', '.join(BACKEND_KINDS)}")
    part = part or ("tail" if variant.kind == "edge" else "head")
    if part not in ("head", "tail"):
        raise InvalidConfigError(f"part {part!r}: allowed 'head' or 'tail'")
    if kind == "litert":
        if part != "head" or variant.artifacts.head_tflite is None or variant.tflite is None:
            raise InvalidBundleError(
                f"variant {variant.id!r} has no LiteRT {part} in bundle {bundle.root}; use the "
                "onnxruntime backend, or recompile the bundle with LiteRT heads")
        layout = variant.tflite
        in_perm = layout_permutation(_channels_first(layout.input_layout), layout.input_layout)
        out_perm = layout_permutation(layout.output_layout, _channels_first(layout.output_layout))
        return LiteRtBackend(bundle.read_bytes(variant.artifacts.head_tflite),
                             input_permutation=in_perm, output_permutation=out_perm,
                             threads=threads)
    relpath = getattr(variant.artifacts, part)
    if relpath is None:
        raise InvalidBundleError(f"variant {variant.id!r} ({variant.kind}) has no {part}; "
                                 f"{'local' if part == 'tail' else 'edge'} variants run whole "
                                 "on one side")
    backend = OnnxBackend(bundle.read_bytes(relpath), providers=providers, threads=threads)
    backend.source = f"{variant.id}/{part} ({relpath})"
    return backend

