"""Manifest schema: round trip, bundle_id sealing, and a table of rejected manifests."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import PurePosixPath
from typing import Any, Callable

import numpy as np
import pytest

from splitpack.errors import InvalidBundleError
from splitpack.formats.manifest import (
    SCHEMA_VERSION, Manifest, build_manifest, compute_bundle_id, manifest_to_json,
    parse_manifest, safe_relpath,
)  # fmt: skip

ARTIFACTS = {
    "local/model.onnx": b"local model",
    "edge/model.onnx": b"edge model",
    "variants/l3/head.onnx": b"head bytes",
    "variants/l3/head.tflite": b"tflite bytes",
    "variants/l3/tail.onnx": b"tail bytes",
}
_LATENCY = {"head_ms": 1.5, "tail_ms": 0.75, "result_bytes": 40, "device_memory_bytes": 4096}


def _variant(variant_id: str, kind: str, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "id": variant_id, "kind": kind, "cut": None, "cut_label": None, "codec": None,
        "compression_ratio": 1.0, "payload_bytes": 0, "accuracy": 91.5,
        "predicted_accuracy": None, "head_output": None, "tail_input": None,
        "quantization": None, "latency": dict(_LATENCY),
        "artifacts": {"head": None, "head_tflite": None, "tail": None},
    }  # fmt: skip
    fields.update(overrides)
    return fields


def manifest_fields() -> dict[str, Any]:
    """Fields of a valid three-variant manifest, without bundle_id and files."""
    local = _variant("local", "local", artifacts={"head": "local/model.onnx", "head_tflite": None,
                                                  "tail": None},
                     latency={**_LATENCY, "tail_ms": 0.0, "result_bytes": 0})
    edge = _variant("edge", "edge", payload_bytes=64, artifacts={
        "head": None, "head_tflite": None, "tail": "edge/model.onnx"})
    split = _variant(
        "l3_c4b4", "split", cut="/layer3/Relu_output_0", cut_label="layer3.relu", codec="c4s1b4",
        compression_ratio=64.0, payload_bytes=32, accuracy=90.25, predicted_accuracy=90.0,
        artifacts={"head": "variants/l3/head.onnx", "head_tflite": "variants/l3/head.tflite",
                   "tail": "variants/l3/tail.onnx"},
        head_output={"name": "codes", "dtype": "uint8", "shape": ["batch", 4, 4, 4]},
        tail_input={"name": "codes", "dtype": "uint8", "shape": ["batch", 4, 4, 4]},
        quantization={"bits": 4, "scale": 0.125, "offset": -1.0, "codes_shape": [4, 4, 4]},
        tflite={"input_layout": "NHWC", "output_layout": "NHWC", "input_name": "x",
                "output_name": "codes"},
        tflite_max_abs_diff=1e-5)
    return {
        "schema_version": SCHEMA_VERSION, "model_id": "tiny-cnn", "created_by": "splitpack 0.1.0",
        "input": {"name": "x", "dtype": "float32", "shape": ["batch", 1, 8, 8]},
        "output": {"name": "logits", "dtype": "float32", "shape": ["batch", 10]},
        "num_classes": 10, "preprocessing": {"mean": [0.5], "std": [0.25]},
        "baseline_accuracy": 92.0, "variants": [local, edge, split], "predictor": None,
        "profiles": {"host": "ci", "threads": 1, "provider": "CPUExecutionProvider"},
        "samples": None,
    }  # fmt: skip


def file_entries(files: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    return {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for name, data in files.items()}


def sealed() -> Manifest:
    return build_manifest({**manifest_fields(), "files": file_entries(ARTIFACTS)})


def test_round_trip_is_exact_and_text_is_stable() -> None:
    manifest = sealed()
    text = manifest_to_json(manifest)
    assert parse_manifest(text) == manifest
    assert parse_manifest(text.encode("utf-8")) == manifest
    assert manifest_to_json(parse_manifest(text)) == text
    assert list(json.loads(text)) == sorted(json.loads(text))
    assert manifest.bundle_id == compute_bundle_id(manifest)
    assert len(manifest.bundle_id) == 64  # fits the wire header's 64-byte id


def test_bundle_id_depends_on_every_value() -> None:
    fields = {**manifest_fields(), "files": file_entries(ARTIFACTS)}
    changed = copy.deepcopy(fields)
    changed["variants"][2]["accuracy"] = 90.26
    other_bytes = file_entries({**ARTIFACTS, "edge/model.onnx": b"edge model!"})
    ids = {build_manifest(fields).bundle_id, build_manifest(changed).bundle_id,
           build_manifest({**fields, "files": other_bytes}).bundle_id}
    assert len(ids) == 3
    assert build_manifest(fields).bundle_id == build_manifest(copy.deepcopy(fields)).bundle_id


def test_numpy_scalars_are_coerced_to_the_same_manifest() -> None:
    fields = {**manifest_fields(), "files": file_entries(ARTIFACTS)}
    with_numpy = copy.deepcopy(fields)
    with_numpy["variants"][2]["payload_bytes"] = np.int64(32)
    with_numpy["variants"][2]["accuracy"] = np.float64(90.25)
    with_numpy["variants"][2]["compression_ratio"] = 64
    assert build_manifest(with_numpy) == build_manifest(fields)


def test_build_manifest_refuses_a_given_bundle_id() -> None:
    with pytest.raises(InvalidBundleError, match="'bundle_id' is computed"):
        build_manifest({**manifest_fields(), "files": {}, "bundle_id": "0" * 64})


def _set(path: str | tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets ``path`` (dotted, or a tuple of keys; indices as digits)."""
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".") if isinstance(path, str) else path
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = value
    return mutate


def _drop_variant(kind: str) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        data["variants"] = [v for v in data["variants"] if v["kind"] != kind]
    return mutate


def _duplicate_variant(data: dict[str, Any]) -> None:
    data["variants"].append(copy.deepcopy(data["variants"][2]))


def _second_edge(data: dict[str, Any]) -> None:
    data["variants"].append({**data["variants"][1], "id": "edge2"})


def _with_tables(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        data["variants"][2]["quantization"]["coding"] = "entropy"
        data["variants"][2]["artifacts"]["entropy_tables"] = path
    return mutate


def _drop_file(data: dict[str, Any]) -> None:
    del data["files"]["variants/l3/tail.onnx"]


BAD_MANIFESTS = [
    ("unknown top key", _set("colour", "red"), r"unknown key 'colour' \(allowed keys: .*variants"),
    ("unknown nested key", _set("variants.0.colour", 1),
     r"unknown key 'variants\.0\.colour' \(allowed keys: accuracy, artifacts"),
    ("unknown version", _set("schema_version", 7),
     r"schema version 7 is not supported by this splitpack \(supports 2\); upgrade splitpack"),
    ("version as text", _set("schema_version", "1"), "schema version '1' is not supported"),
    ("missing key", lambda d: d["variants"][2].pop("cut"), r"missing key 'variants\.2\.cut'"),
    ("number as text (strict)", _set("variants.1.accuracy", "91.5"),
     r"'variants\.1\.accuracy': Input should be a valid number \(found '91\.5'\)"),
    ("accuracy above 100", _set("baseline_accuracy", 120.0), r"'baseline_accuracy'.*less than"),
    ("NaN", _set("variants.2.accuracy", float("nan")), r"'variants\.2\.accuracy'.*finite"),
    ("edited value", _set("variants.2.accuracy", 99.0),
     r"bundle_id \w+… does not match the manifest's contents.*edited or corrupted"),
    ("bits not allowed", _set("variants.2.quantization.bits", 3),
     r"'variants\.2\.quantization\.bits': Input should be 1, 2, 4, 6 or 8 \(found 3\)"),
    ("duplicate variant ids", _duplicate_variant,
     r"variant ids must be unique; repeated: \['l3_c4b4'\]"),
    ("no local variant", _drop_variant("local"), "exactly one local variant; found 0"),
    ("no edge variant", _drop_variant("edge"), "exactly one edge variant; found 0"),
    ("two edge variants", _second_edge,
     r"exactly one edge variant; found 2 \(\['edge', 'edge2'\]\)"),
    ("split posing as edge", _set("variants.2.kind", "edge"),
     "edge variant 'l3_c4b4' must not set cut, cut_label, codec, quantization, artifacts.head"),
    ("split without quantization", _set("variants.2.quantization", None),
     "split variant 'l3_c4b4' needs quantization"),
    ("local with a tail", _set("variants.0.artifacts.tail", "edge/model.onnx"),
     r"local variant 'local' must not set artifacts\.tail"),
    ("local sends bytes", _set("variants.0.payload_bytes", 5), "payload_bytes must be 0"),
    ("path with ..", _set("variants.2.artifacts.tail", "variants/../../etc/passwd"),
     r"path 'variants/\.\./\.\./etc/passwd' is not allowed.*'\.\.' component"),
    ("absolute path", _set("variants.2.artifacts.head", "/etc/passwd"),
     r"'variants\.2\.artifacts\.head': path '/etc/passwd' is not allowed.*it is absolute"),
    ("file key with ..", _set(("files", "../x"), {"sha256": "a" * 64, "size": 1}),
     r"'files\[\"\.\./x\"\]': path '\.\./x' is not allowed"),
    ("artifact not in files", _drop_file,
     r"paths not listed in files: variants\[l3_c4b4\]\.artifacts\.tail = 'variants/l3/tail\.onnx'"),
    ("manifest lists itself", _set(("files", "manifest.json"), {"sha256": "a" * 64, "size": 1}),
     "files must not list manifest.json"),
    ("bad sha256", _set(("files", "edge/model.onnx", "sha256"), "ABC"),
     r"'files\.edge/model\.onnx\.sha256': String should match pattern.*\(found 'ABC'\)"),
    ("bad variant id", _set("variants.2.id", "l3/../x"), r"'variants\.2\.id': String should match"),
    ("tflite layout without a tflite head", _set("variants.2.artifacts.head_tflite", None),
     "sets tflite / tflite_max_abs_diff but has no artifacts.head_tflite"),
    ("entropy coding without tables", _set("variants.2.quantization.coding", "entropy"),
     "quantization.coding 'entropy' and artifacts.entropy_tables go together"),
    ("tables without entropy coding",
     _set("variants.2.artifacts.entropy_tables", "variants/l3/tail.onnx"),
     "quantization.coding 'entropy' and artifacts.entropy_tables go together"),
    ("unknown coding", _set("variants.2.quantization.coding", "huffman"),
     r"'variants\.2\.quantization\.coding': Input should be 'bitpack' or 'entropy'"),
    ("tables not in files", _with_tables("variants/l3/tables.npz"),
     r"variants\[l3_c4b4\]\.artifacts\.entropy_tables = 'variants/l3/tables\.npz'"),
    ("tables path with ..", _with_tables("../tables.npz"), r"path '\.\./tables\.npz' is not allowed"),
    ("jpeg without quality", _set("variants.1.upload", {"format": "jpeg", "quality": None}),
     r"upload format 'jpeg' needs a quality in 1\.\.100"),
    ("jpeg quality 0", _set("variants.1.upload", {"format": "jpeg", "quality": 0}),
     r"'variants\.1\.upload\.quality': Input should be greater than or equal to 1"),
    ("webp quality 101", _set("variants.1.upload", {"format": "webp", "quality": 101}),
     r"'variants\.1\.upload\.quality': Input should be less than or equal to 100"),
    ("png with a quality", _set("variants.1.upload", {"format": "png", "quality": 50}),
     "upload format 'png' is lossless and takes no quality"),
    ("unknown upload format", _set("variants.1.upload", {"format": "gif"}),
     r"Input should be 'zlib', 'png', 'jpeg' or 'webp'"),
    ("upload on a split variant", _set("variants.2.upload", {"format": "zlib"}),
     "split variant 'l3_c4b4' must not set upload"),
    ("local with a payload p95", _set("variants.0.payload_bytes_p95", 3),
     "payload_bytes_p95 must be 0"),
]  # fmt: skip


def test_entropy_coding_and_uploads_round_trip() -> None:
    fields = manifest_fields()
    fields["variants"][1].update(upload={"format": "jpeg", "quality": 35}, payload_bytes=700,
                                 payload_bytes_p95=810)
    split = fields["variants"][2]
    split["quantization"]["coding"] = "entropy"
    split["artifacts"]["entropy_tables"] = "variants/l3/entropy_tables.npz"
    split["payload_bytes_p95"] = 30
    files = file_entries({**ARTIFACTS, "variants/l3/entropy_tables.npz": b"tables"})
    manifest = build_manifest({**fields, "files": files})
    assert parse_manifest(manifest_to_json(manifest)) == manifest
    assert manifest.variants[1].upload.quality == 35
    assert manifest.variants[2].quantization.coding == "entropy"
    assert sealed().variants[2].quantization.coding == "bitpack"  # the default


@pytest.mark.parametrize("mutate,match", [case[1:] for case in BAD_MANIFESTS],
                         ids=[case[0] for case in BAD_MANIFESTS])
def test_bad_manifests_are_refused_with_the_key(mutate: Callable[[dict[str, Any]], None],
                                                match: str) -> None:
    data = json.loads(manifest_to_json(sealed()))
    mutate(data)
    with pytest.raises(InvalidBundleError, match=match):
        parse_manifest(json.dumps(data))


@pytest.mark.parametrize("text,match", [
    ("{not json", "not valid UTF-8 JSON"),
    (b"\xff\xfe", "not valid UTF-8 JSON"),
    ("[1, 2]", "the top level must be a JSON object; got list"),
    ('{"model_id": "m"}', "missing key 'schema_version'; this is not a splitpack manifest"),
])  # fmt: skip
def test_unreadable_manifests(text: str | bytes, match: str) -> None:
    with pytest.raises(InvalidBundleError, match=match):
        parse_manifest(text, source="b/manifest.json")


@pytest.mark.parametrize("path", ["model.onnx", "variants/l3/head.onnx", "a.b/c-d_e.npz"])
def test_safe_relpath_accepts_relative_paths(path: str) -> None:
    assert safe_relpath(path) == path


@pytest.mark.parametrize("path,reason", [
    ("", "it is empty"),
    ("/etc/passwd", "it is absolute"),
    ("C:/Windows", "drive letter"),
    ("c:model.onnx", "drive letter"),
    ("a\\b.onnx", "backslash"),
    ("../x", "'..' component"),
    ("a/../../x", "'..' component"),
    ("a/./b", r"empty or '\.' component"),
    ("a//b", r"empty or '\.' component"),
    ("a/", r"empty or '\.' component"),
    ("a\x00b", "NUL"),
])  # fmt: skip
def test_safe_relpath_rejects(path: str, reason: str) -> None:
    with pytest.raises(InvalidBundleError, match=f"is not allowed in a bundle: .*{reason}"):
        safe_relpath(path)


def test_safe_relpath_rejects_non_strings() -> None:
    with pytest.raises(InvalidBundleError, match="it is a PurePosixPath, not a str"):
        safe_relpath(PurePosixPath("a"))  # type: ignore[arg-type]
