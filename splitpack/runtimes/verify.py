"""``splitpack verify``: check a bundle end to end where it will run (device or edge).

Hashes and schema (``read_bundle``), then every artifact is loaded and run on the bundle's
sample inputs: each head's output must match its tail's input (name, dtype, shape), each
variant must reproduce its expected outputs, and each TFLite head must agree with its ONNX head.
Codes reach the tail through the wire as the variant sends them: bit-packed, or entropy-coded
with its tables (loaded and checked against the variant: bits, channels, this host's coder),
and must come back bit-exact. The ``edge`` variant's samples also go through its upload format
(a lossy one changes pixels, so its outputs are compared on the exact pixels, as compiled).
numpy + ONNX Runtime (+ LiteRT for TFLite heads), constriction and Pillow only, so that it runs
on the target.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from splitpack.errors import InvalidBundleError
from splitpack.formats.bundle import Bundle, read_bundle, read_samples
from splitpack.formats.variants import WIRE_ID_PLACEHOLDER, normalize_uint8
from splitpack.formats.wire import decode_payload, encode_payload, round_trip_codes
from splitpack.runtimes.backends import (
    OnnxBackend, encode_request, load_backend, load_entropy_tables, upload_of,
)

__all__ = ["VerifyReport", "verify_bundle", "TFLITE_CODE_MISMATCH_LIMIT"]

# A TFLite head may round a handful of codes the other way (a value at a quantization boundary
# after a different float order); more than this fraction is an error.
TFLITE_CODE_MISMATCH_LIMIT = 0.01


@dataclass
class VerifyReport:
    """What was checked, per variant: max abs difference against the expected outputs, and
    how its samples travelled (``wire``: compression and mean message bytes of one sample)."""

    bundle_id: str
    variants: dict[str, float] = field(default_factory=dict)
    wire: dict[str, dict] = field(default_factory=dict)
    tflite: dict[str, dict] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def _check_close(variant_id: str, got: np.ndarray, expected: np.ndarray, atol: float, what: str) -> float:
    if got.shape != expected.shape:
        raise InvalidBundleError(f"variant {variant_id!r}: {what} has shape {got.shape}, expected {expected.shape}")
    difference = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64)), initial=0.0))
    if difference > atol:
        raise InvalidBundleError(
            f"variant {variant_id!r}: {what} differs from the bundle's expected outputs by {difference:.3g} "
            f"(tolerance {atol}); the artifacts or this runtime compute something else — recompile, or report "
            "the runtime version"
        )
    return difference


def _check_link(variant, head: OnnxBackend, tail: OnnxBackend) -> None:
    if head.output_dtype != tail.input_dtype or head.output_shape[1:] != tail.input_shape[1:]:
        raise InvalidBundleError(
            f"variant {variant.id!r}: the head's output ({head.output_name}: {head.output_dtype} {head.output_shape}) "
            f"is not the tail's input ({tail.input_name}: {tail.input_dtype} {tail.input_shape})"
        )


def verify_bundle(path_or_bundle, *, atol: float = 1e-4, tflite: bool = True) -> VerifyReport:
    """Verify a bundle folder or archive; raise ``InvalidBundleError`` naming the failing item.

    Args:
        path_or_bundle: a bundle folder, archive, or an open ``Bundle``.
        atol: tolerance against the expected outputs (float32 logits).
        tflite: also run TFLite heads (needs ``ai-edge-litert``; skipped and reported if absent).

    Returns:
        A ``VerifyReport``.
    """
    if isinstance(path_or_bundle, Bundle):
        return _verify(path_or_bundle, atol, tflite)
    with tempfile.TemporaryDirectory(prefix="splitpack-verify-") as scratch:  # an archive's contents
        return _verify(read_bundle(path_or_bundle, extract_to=Path(scratch) / "bundle"), atol, tflite)


def _verify(bundle: Bundle, atol: float, tflite: bool) -> VerifyReport:
    manifest = bundle.manifest
    report = VerifyReport(bundle_id=manifest.bundle_id)
    inputs, expected = read_samples(bundle)
    x = normalize_uint8(inputs, manifest.preprocessing) if inputs.dtype == np.uint8 else inputs
    for variant in manifest.variants:
        artifacts = variant.artifacts
        head = OnnxBackend(bundle.path(artifacts.head)) if artifacts.head else None
        tail = OnnxBackend(bundle.path(artifacts.tail)) if artifacts.tail else None
        if variant.kind == "local":
            outputs = head.run(x)
        elif variant.kind == "edge":
            if inputs.dtype == np.uint8:
                report.wire[variant.id] = _check_upload(variant, inputs)
            outputs = tail.run(x)
        else:
            _check_link(variant, head, tail)
            codes = head.run(x)
            bits = variant.quantization.bits
            if codes.dtype != np.uint8 or int(codes.max(initial=0)) >= 2**bits:
                raise InvalidBundleError(f"variant {variant.id!r}: head emits codes outside {bits} bits")
            tables = load_entropy_tables(bundle, variant)
            if tables is None:
                received = round_trip_codes(codes, bits)
                report.wire[variant.id] = {"compression": "none"}
            else:
                received, report.wire[variant.id] = _entropy_round_trip(variant, codes, tables)
            outputs = tail.run(received)
        report.variants[variant.id] = _check_close(variant.id, outputs, expected[variant.id], atol, "output")
        if tflite and artifacts.head_tflite:
            report.tflite[variant.id] = _verify_tflite(bundle, variant, head, x, report)
    return report


def _wire_ids(variant) -> dict:
    return {"bundle_id": WIRE_ID_PLACEHOLDER, "variant_id": variant.id}  # sizes as the manifest assumes


def _entropy_round_trip(variant, codes: np.ndarray, tables) -> tuple[np.ndarray, dict]:
    """Each sample's codes through an entropy-coded message; they must come back bit-exact."""
    q = variant.quantization
    received, sizes = [], []
    for index in range(len(codes)):
        message = encode_payload(codes[index:index + 1], bits=q.bits, scale=q.scale, offset=q.offset,
                                 compression="entropy", tables=tables, **_wire_ids(variant))
        received.append(decode_payload(message, tables=tables)[1])
        sizes.append(len(message))
    received = np.concatenate(received)
    if not np.array_equal(received, codes):
        raise InvalidBundleError(f"variant {variant.id!r}: entropy-coded codes do not come back "
                                 f"bit-exact from {variant.artifacts.entropy_tables}; report the "
                                 "constriction version of this host")
    return received, {"compression": "entropy", "payload_bytes_mean": float(np.mean(sizes))}


def _check_upload(variant, pixels: np.ndarray) -> dict:
    """Each sample through the edge variant's upload format: it must decode to its shape."""
    compression, quality = upload_of(variant)
    sizes = []
    for index in range(len(pixels)):
        message = encode_request(variant, pixels[index:index + 1], wire_bundle_id=WIRE_ID_PLACEHOLDER)
        decoded = decode_payload(message)[1]
        if decoded.shape != pixels[index:index + 1].shape or decoded.dtype != np.uint8:
            raise InvalidBundleError(f"variant {variant.id!r}: a {compression} upload of sample "
                                     f"{index} decodes to {decoded.dtype} {decoded.shape}")
        sizes.append(len(message))
    return {"compression": compression, "quality": quality,
            "payload_bytes_mean": float(np.mean(sizes))}


def _verify_tflite(bundle: Bundle, variant, head: OnnxBackend, x: np.ndarray, report: VerifyReport) -> dict:
    try:
        backend = load_backend(bundle, variant, kind="litert")
    except ImportError as exc:
        report.skipped.append(f"{variant.id}: TFLite head not run ({exc})")
        return {"skipped": str(exc)}
    reference = head.run(x)
    got = backend.run(x)
    if reference.dtype == np.uint8:
        mismatch = float(np.mean(got != reference))
        worst = float(np.max(np.abs(got.astype(np.int16) - reference.astype(np.int16)), initial=0))
        if mismatch > TFLITE_CODE_MISMATCH_LIMIT or worst > 1:
            raise InvalidBundleError(
                f"variant {variant.id!r}: TFLite head {variant.artifacts.head_tflite} differs from the ONNX head in "
                f"{100 * mismatch:.2f}% of codes (max {worst:.0f} levels; limit {100 * TFLITE_CODE_MISMATCH_LIMIT}% and 1)"
            )
        return {"code_mismatch_fraction": mismatch, "max_code_diff": worst}
    difference = _check_close(variant.id, got, reference, 1e-4, f"TFLite head {variant.artifacts.head_tflite}")
    return {"max_abs_diff": difference}
