"""The last step of ``compile``: variant artifacts, TFLite heads, sample inputs with every
variant's expected outputs, the manifest, the bundle folder, its archive, and verification."""

from __future__ import annotations

import io
import platform
from pathlib import Path

import numpy as np
import onnx

import splitpack
from splitpack.compiler.codec import codes_shape, parse_codec, quantization_params
from splitpack.compiler.evaluate import evaluate_split
from splitpack.compiler.graph import graph_inputs
from splitpack.compiler.train import run_onnx
from splitpack.packaging.bundle import pack_bundle, write_bundle
from splitpack.packaging.manifest import SCHEMA_VERSION
from splitpack.runtimes.verify import verify_bundle
from splitpack.runtimes.wire import message_bytes

__all__ = ["emit_bundle", "model_id_of"]

MODEL_FILE = "model.onnx"
SAMPLES_FILE = "samples.npz"
EXPECTED_FILE = "expected_outputs.npz"
PREDICTOR_FILE = "predictor.json"


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


def emit_bundle(*, settings, out: Path, work: Path, model, cuts, dataset, baseline, profile, selection,
                predictor_json: str, log) -> dict:
    """Write the bundle and its archive, then verify them.

    Returns:
        ``{"archive": path, "variants": [variant records as in the manifest]}``.
    """
    classes = dataset.num_classes
    count = min(settings.samples, len(dataset.x_test))
    pixels = dataset.to_uint8(dataset.x_test[:count])
    x = dataset.from_uint8(pixels)  # exactly what a device computes from the uint8 samples
    result_bytes = message_bytes((1, classes), 32, bundle_id="0" * 16, variant_id="edge")
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
        log("    TFLite: local head (the whole model)")
        artifact, check = _tflite(model, x)
        files["variants/local/head.tflite"] = artifact.data
        local["artifacts"]["head_tflite"] = "variants/local/head.tflite"
        local.update(_tflite_fields(artifact, check))
    variants.append(local)
    expected["local"] = model_output

    input_shape = tuple(dataset.input_shape)
    variants.append({
        "id": "edge", "kind": "edge", "cut": None, "cut_label": None, "codec": None,
        "compression_ratio": 4.0,  # float32 input / uint8 pixels sent
        "payload_bytes": message_bytes((1,) + input_shape, 8, bundle_id="0" * 16, variant_id="edge"),
        "accuracy": baseline, "predicted_accuracy": None,
        "artifacts": {"head": None, "head_tflite": None, "tail": MODEL_FILE},
        "head_output": None, "tail_input": None, "quantization": None,
        "latency": {"head_ms": 0.0, "tail_ms": profile["model_ms"], "result_bytes": result_bytes, "device_memory_bytes": 0},
    })
    expected["edge"] = model_output

    for vid in selection["chosen"]:
        cell = selection["finals"][vid]
        cut, codec = cuts[cell["cut"]], parse_codec(cell["codec"])
        head = onnx.load(str(work / "final" / vid / "head.onnx"))
        tail = onnx.load(str(work / "final" / vid / "tail.onnx"))
        evaluation = evaluate_split(head, tail, x, np.zeros(len(x), dtype=np.int64), codec.bits)
        expected[vid] = evaluation.outputs
        scale, offset = quantization_params(codec.bits)
        codes = ["batch"] + list(codes_shape(cut.shape, codec))
        timing = profile["cuts"][cut.label]
        record = {
            "id": vid, "kind": "split", "cut": cut.name, "cut_label": cut.label, "codec": codec.name,
            "compression_ratio": cell["compression_ratio"], "payload_bytes": cell["payload_bytes"],
            "accuracy": cell["accuracy"], "predicted_accuracy": selection["predicted"][vid],
            "artifacts": {"head": f"variants/{vid}/head.onnx", "head_tflite": None, "tail": f"variants/{vid}/tail.onnx"},
            "head_output": {"name": "codes", "dtype": "uint8", "shape": codes},
            "tail_input": {"name": "codes", "dtype": "uint8", "shape": codes},
            "quantization": {"bits": codec.bits, "scale": scale, "offset": offset, "codes_shape": codes[1:]},
            "latency": {"head_ms": timing["head_ms"], "encode_ms": timing["encode_ms"], "decode_ms": timing["decode_ms"],
                        "tail_ms": timing["tail_ms"], "result_bytes": result_bytes,
                        "device_memory_bytes": cut.head_param_bytes + cut.bytes_per_sample},
        }
        files[f"variants/{vid}/head.onnx"] = head.SerializeToString()
        files[f"variants/{vid}/tail.onnx"] = tail.SerializeToString()
        if settings.tflite:
            log(f"    TFLite: {vid} head")
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
        "created_by": f"splitpack {splitpack.__version__}",
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
    log(f"    wrote {out} and {archive}; verifying the archive")
    verify_bundle(archive, tflite=settings.tflite)  # the archive: what ships, packing included
    return {"archive": str(archive), "variants": variants}
