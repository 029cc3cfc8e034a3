"""The last step of ``compile``: variant artifacts, TFLite heads, entropy tables, sample inputs
with every variant's expected outputs, the manifest, the bundle folder, its archive, and
verification.

``payload_bytes`` of every variant is what one sample's message really takes on the wire,
header included: exact for bit-packed codes, and for entropy-coded codes and the ``edge``
variant's upload (zlib, or the JPEG / WebP that :func:`~splitpack.compiler.input_upload.
choose_input_upload` chose) the mean over up to ``PAYLOAD_SAMPLES`` test samples, with its
95th percentile in ``payload_bytes_p95``. The time of that coding (rANS, or the image codec)
on this host, the median over up to ``TIMING_SAMPLES`` samples, is added to the variant's
``latency.encode_ms`` (device) and ``decode_ms`` (edge)."""

from __future__ import annotations

import logging
import io
import math
import platform
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx

from splitpack._version import __version__
from splitpack.compiler.codec import codes_shape, parse_codec, quantization_params
from splitpack.compiler.evaluate import evaluate_split
from splitpack.compiler.graph import graph_inputs
from splitpack.compiler.input_upload import InputUploadChoice
from splitpack.compiler.train import run_onnx
from splitpack.errors import InvalidConfigError
from splitpack.formats.bundle import pack_bundle, write_bundle
from splitpack.formats.entropy import (
    EntropyTables, calibrate_tables, decode_codes, encode_codes, tables_to_bytes,
)  # fmt: skip
from splitpack.formats.manifest import SCHEMA_VERSION
from splitpack.formats.variants import WIRE_ID_PLACEHOLDER, result_bytes
from splitpack.formats.wire import (
    decode_payload, encode_payload, header_bytes, measure_payload_bytes, message_bytes,
)  # fmt: skip
from splitpack.runtimes.backends import RAW_OFFSET, RAW_SCALE, entropy_message_sizes
from splitpack.runtimes.verify import verify_bundle

__all__ = ["emit_bundle", "model_id_of", "entropy_calibration_codes", "PAYLOAD_SAMPLES",
           "ENTROPY_CALIBRATION_SAMPLES"]

_LOG = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
SAMPLES_FILE = "samples.npz"
EXPECTED_FILE = "expected_outputs.npz"
PREDICTOR_FILE = "predictor.json"
ENTROPY_TABLES_FILE = "entropy_tables.npz"
PAYLOAD_SAMPLES = 1000  # test samples whose messages give the mean and p95 payload bytes
ENTROPY_CALIBRATION_SAMPLES = 2048  # training samples whose codes calibrate the tables
TIMING_SAMPLES = 200  # samples whose wire coding is timed


def model_id_of(spec: str) -> str:
    """``pkg.models:digits_cnn`` -> ``digits_cnn``; ``path/net.onnx`` -> ``net``."""
    return spec.rpartition(":")[2] if ":" in spec and not spec.endswith(".onnx") else Path(spec).stem


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _tflite(head: onnx.ModelProto, x: np.ndarray):
    """(artifact, check) of the head as TFLite, compared with ONNX Runtime on ``x``."""
    from splitpack.compiler.tflite import compare_tflite, export_tflite

    artifact = export_tflite(head, x[:1])
    return artifact, compare_tflite(head, artifact, x)


def _tflite_fields(artifact, check) -> dict:
    return {
        "tflite": {"input_layout": artifact.input_layout, "output_layout": artifact.output_layout,
                   "input_name": artifact.input_name, "output_name": artifact.output_name},
        "tflite_max_abs_diff": float(check.max_abs_diff),
    }


def entropy_calibration_codes(head: onnx.ModelProto, dataset,
                              limit: int = ENTROPY_CALIBRATION_SAMPLES) -> np.ndarray:
    """The codes of (up to ``limit``) training inputs, to calibrate a variant's entropy tables.

    Args:
        head: The variant's head (emits uint8 codes).
        dataset: The compile's data set.
        limit: Training samples to run.

    Returns:
        uint8 codes, batch first.
    """
    return run_onnx(head, dataset.x_train[:limit])


def _median_ms(call, count: int) -> float:
    """Median wall time of ``call(i)`` over ``i < count``, in ms."""
    times = []
    for index in range(count):
        started = time.perf_counter()
        call(index)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


def _entropy_fields(vid: str, codec, head: onnx.ModelProto, calibration: np.ndarray | EntropyTables,
                    dataset, packed_bytes: int) -> tuple[dict, dict, bytes | None]:
    """(record fields, coding ms, tables file) of a variant offered entropy coding; bit-packing
    is kept, without a tables file, when entropy coding does not send fewer bytes on the test
    samples."""
    tables = calibration if isinstance(calibration, EntropyTables) else calibrate_tables(
        calibration, codec.bits)
    codes = run_onnx(head, dataset.x_test[:PAYLOAD_SAMPLES])
    entropy_coded, sent = entropy_message_sizes(codes, bits=codec.bits, tables=tables, variant_id=vid,
                                                wire_bundle_id=WIRE_ID_PLACEHOLDER)
    mean, p95 = float(sent.mean()), float(np.percentile(sent, 95))
    if mean >= packed_bytes:
        _LOG.info(f"    {vid}: entropy coding sends {entropy_coded.mean():.0f} B, bit-packing {packed_bytes} B; "
            "keeping bit-packing")
        return {"payload_bytes": packed_bytes, "payload_bytes_p95": packed_bytes}, {}, None
    count = min(TIMING_SAMPLES, len(codes))
    streams = [encode_codes(codes[i:i + 1], tables) for i in range(count)]
    coding_ms = {"encode_ms": _median_ms(lambda i: encode_codes(codes[i:i + 1], tables), count),
                 "decode_ms": _median_ms(lambda i: decode_codes(streams[i], codes[i:i + 1].shape,
                                                                tables), count)}
    _LOG.info(f"    {vid}: entropy coding {mean:.0f} B mean (p95 {p95:.0f}), bit-packed "
        f"{packed_bytes} B; {coding_ms['encode_ms']:.3f} + {coding_ms['decode_ms']:.3f} ms")
    return ({"payload_bytes": round(mean), "payload_bytes_p95": math.ceil(p95)},
            coding_ms, tables_to_bytes(tables))


def _upload_ms(pixels: np.ndarray, compression: str, quality: int | None) -> dict:
    """Median ms of one image's upload message: encoding (device) and decoding (edge)."""
    count = min(TIMING_SAMPLES, len(pixels))
    encode = lambda i: encode_payload(pixels[i:i + 1], bundle_id=WIRE_ID_PLACEHOLDER, variant_id="edge",  # noqa: E731
                                      bits=8, scale=RAW_SCALE, offset=RAW_OFFSET,
                                      compression=compression, quality=quality)
    messages = [encode(i) for i in range(count)]
    return {"encode_ms": _median_ms(encode, count),
            "decode_ms": _median_ms(lambda i: decode_payload(messages[i]), count)}


def _edge_fields(dataset, input_shape: tuple[int, ...], baseline: float,
                 upload: InputUploadChoice | None) -> tuple[dict, dict]:
    """The edge variant's (upload, accuracy, payload bytes and compression ratio; coding ms)."""
    pixels = dataset.to_uint8(dataset.x_test[:PAYLOAD_SAMPLES])
    if upload is not None:
        fields = upload.manifest_fields()
    else:  # lossless zlib, the sizes of the test images as they are really sent
        sizes = measure_payload_bytes(pixels, bundle_id=WIRE_ID_PLACEHOLDER, variant_id="edge", bits=8,
                                      scale=RAW_SCALE, offset=RAW_OFFSET, compression="zlib")
        fields = {"upload": {"format": "zlib", "quality": None}, "accuracy": baseline,
                  "payload_bytes": round(sizes.mean), "payload_bytes_p95": math.ceil(sizes.p95)}
    data = fields["payload_bytes"] - header_bytes(len(input_shape) + 1, bundle_id=WIRE_ID_PLACEHOLDER,
                                                  variant_id="edge")
    # float32 input over the bytes of the image data sent (as for codes: the header aside)
    fields["compression_ratio"] = 4.0 * math.prod(input_shape) / max(1, data)
    return fields, _upload_ms(pixels, fields["upload"]["format"], fields["upload"]["quality"])


def emit_bundle(*, settings, out: Path, work: Path, model, cuts, dataset, baseline, profile, selection,
                predictor_json: str,
                entropy: Mapping[str, np.ndarray | EntropyTables] | None = None,
                edge_upload: InputUploadChoice | None = None) -> dict:
    """Write the bundle and its archive, then verify them.

    Args:
        settings, out, work, model, cuts, dataset, baseline, profile, selection,
            predictor_json: The compile's state (see ``compile_bundle``); ``selection`` is
            the :class:`~splitpack.compiler.selection.Selection` whose ``chosen`` variants
            (their final artifacts in ``work/final/<id>/``) the bundle carries, possibly none.
        entropy: Split variant id -> uint8 codes of training inputs (batch first, e.g.
            :func:`entropy_calibration_codes`) or ready :class:`EntropyTables`. Each listed
            variant gets its tables file and ``coding`` "entropy" when that sends fewer bytes
            on the test samples than bit-packing; unlisted variants are bit-packed.
        edge_upload: How the edge variant uploads the input (from ``choose_input_upload``):
            its format, quality, measured accuracy and bytes go into the manifest. None: zlib,
            lossless, at the baseline accuracy.

    Returns:
        ``{"archive": path, "variants": [variant records as in the manifest]}``.
    """
    entropy = dict(entropy or {})
    unknown = sorted(set(entropy) - set(selection.chosen))
    if unknown:
        raise InvalidConfigError(f"entropy: {unknown} are not chosen split variants; chosen: "
                                 f"{', '.join(selection.chosen) or 'none'}")
    classes = dataset.num_classes
    count = min(settings.samples, len(dataset.x_test))
    pixels = dataset.to_uint8(dataset.x_test[:count])
    x = dataset.from_uint8(pixels)  # exactly what a device computes from the uint8 samples
    files: dict[str, bytes | Path] = {MODEL_FILE: work / MODEL_FILE, PREDICTOR_FILE: predictor_json.encode()}
    expected: dict[str, np.ndarray] = {}
    variants: list[dict] = []
    model_output = run_onnx(model, x)

    local = {
        "id": "local", "kind": "local", "cut": None, "cut_label": None, "codec": None, "compression_ratio": 1.0,
        "payload_bytes": 0, "accuracy": baseline, "predicted_accuracy": None,
        "artifacts": {"head": MODEL_FILE, "head_tflite": None, "tail": None},
        "head_output": None, "tail_input": None, "quantization": None,
        "latency": {"head_ms": profile["model_ms"], "tail_ms": 0.0, "result_bytes": 0,
                    "device_memory_bytes": sum(int(np.prod(i.dims)) * 4 for i in model.graph.initializer)},
    }
    if settings.tflite:
        _LOG.info("    TFLite: local head (the whole model)")
        artifact, check = _tflite(model, x)
        files["variants/local/head.tflite"] = artifact.data
        local["artifacts"]["head_tflite"] = "variants/local/head.tflite"
        local.update(_tflite_fields(artifact, check))
    variants.append(local)
    expected["local"] = model_output

    input_shape = tuple(dataset.input_shape)
    edge_fields, edge_ms = _edge_fields(dataset, input_shape, baseline, edge_upload)
    variants.append({
        "id": "edge", "kind": "edge", "cut": None, "cut_label": None, "codec": None,
        "predicted_accuracy": None,
        "artifacts": {"head": None, "head_tflite": None, "tail": MODEL_FILE},
        "head_output": None, "tail_input": None, "quantization": None,
        "latency": {"head_ms": 0.0, "tail_ms": profile["model_ms"], "result_bytes": result_bytes(classes, "edge"),
                    "device_memory_bytes": 0, **edge_ms},
        **edge_fields,
    })
    expected["edge"] = model_output

    for vid in selection.chosen:
        cell = selection.finals[vid]
        cut, codec = cuts[cell["cut"]], parse_codec(cell["codec"])
        head = onnx.load(str(work / "final" / vid / "head.onnx"))
        tail = onnx.load(str(work / "final" / vid / "tail.onnx"))
        evaluation = evaluate_split(head, tail, x, np.zeros(len(x), dtype=np.int64), codec.bits)
        expected[vid] = evaluation.outputs
        scale, offset = quantization_params(codec.bits)
        codes = ["batch"] + list(codes_shape(cut.shape, codec))
        timing = profile["cuts"][cut.label]
        packed = message_bytes(tuple([1] + codes[1:]), codec.bits, bundle_id=WIRE_ID_PLACEHOLDER, variant_id=vid)
        sizes, coding_ms, tables_file = {"payload_bytes": packed, "payload_bytes_p95": packed}, {}, None
        if vid in entropy:
            sizes, coding_ms, tables_file = _entropy_fields(vid, codec, head, entropy[vid], dataset,
                                                            packed)
        record = {
            "id": vid, "kind": "split", "cut": cut.name, "cut_label": cut.label, "codec": codec.name,
            "compression_ratio": cell["compression_ratio"], **sizes,
            "accuracy": cell["accuracy"], "predicted_accuracy": selection.predicted[vid],
            "artifacts": {"head": f"variants/{vid}/head.onnx", "head_tflite": None, "tail": f"variants/{vid}/tail.onnx"},
            "head_output": {"name": "codes", "dtype": "uint8", "shape": codes},
            "tail_input": {"name": "codes", "dtype": "uint8", "shape": codes},
            "quantization": {"bits": codec.bits, "scale": scale, "offset": offset, "codes_shape": codes[1:]},
            "latency": {"head_ms": timing["head_ms"],
                        "encode_ms": (timing["encode_ms"] or 0.0) + coding_ms.get("encode_ms", 0.0),
                        "decode_ms": (timing["decode_ms"] or 0.0) + coding_ms.get("decode_ms", 0.0),
                        "tail_ms": timing["tail_ms"], "result_bytes": result_bytes(classes, vid),
                        "device_memory_bytes": cut.head_param_bytes + cut.bytes_per_sample},
        }
        files[f"variants/{vid}/head.onnx"] = head.SerializeToString()
        files[f"variants/{vid}/tail.onnx"] = tail.SerializeToString()
        if tables_file is not None:
            files[f"variants/{vid}/{ENTROPY_TABLES_FILE}"] = tables_file
            record["artifacts"]["entropy_tables"] = f"variants/{vid}/{ENTROPY_TABLES_FILE}"
            record["quantization"]["coding"] = "entropy"
        if settings.tflite:
            _LOG.info(f"    TFLite: {vid} head")
            artifact, check = _tflite(head, x)
            files[f"variants/{vid}/head.tflite"] = artifact.data
            record["artifacts"]["head_tflite"] = f"variants/{vid}/head.tflite"
            record.update(_tflite_fields(artifact, check))
        variants.append(record)

    files[SAMPLES_FILE] = _npz({"inputs": pixels})
    files[EXPECTED_FILE] = _npz(expected)
    graph_input = graph_inputs(model)[0]
    fields = {
        "schema_version": SCHEMA_VERSION,
        "model_id": model_id_of(settings.model),
        "created_by": f"splitpack {__version__}",
        "input": {"name": graph_input.name, "dtype": "float32", "shape": ["batch"] + list(input_shape)},
        "output": {"name": model.graph.output[0].name, "dtype": "float32", "shape": ["batch", classes]},
        "num_classes": classes,
        "preprocessing": {"mean": list(dataset.mean), "std": list(dataset.std), "input_range": 255.0},
        "baseline_accuracy": baseline,
        "variants": variants,
        "predictor": PREDICTOR_FILE,
        "profiles": {"host": platform.node() or "unknown", "platform": platform.platform(), "processor": platform.machine(), "threads": profile.get("threads") or 0,
                     "provider": profile.get("provider", "CPUExecutionProvider"),
                     "device_slowdown": settings.device_slowdown, "model_ms": profile["model_ms"]},
        "samples": {"path": SAMPLES_FILE, "count": count, "input_dtype": "uint8", "expected_outputs": EXPECTED_FILE},
    }
    write_bundle(out, fields, files)
    archive = pack_bundle(out, out.parent / f"{out.name}.tar.gz")
    _LOG.info(f"    wrote {out} and {archive}; verifying the archive")
    verify_bundle(archive, tflite=settings.tflite)  # the archive: what ships, packing included
    return {"archive": str(archive), "variants": variants}
