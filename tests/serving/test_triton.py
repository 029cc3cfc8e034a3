"""Triton model repositories: layout, configs parsed with Triton's own schema, tails byte for
byte, each model executed as its config declares it, and typed errors for bad input."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from splitpack.cli import runtime as commands
from splitpack.errors import InvalidBundleError, InvalidConfigError
from splitpack.formats import read_bundle, read_samples, write_bundle
from splitpack.formats.variants import normalize_uint8
from splitpack.runtimes.backends import load_backend
from splitpack.serving.triton import export_triton
from tests.bundles import build_test_bundle

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2",
    reason="tritonclient is not installed: pip install 'splitpack[triton]'")
from google.protobuf import text_format  # noqa: E402  (installed with tritonclient)

ATOL = 1e-4
TRITON_TO_NUMPY = {"TYPE_UINT8": np.uint8, "TYPE_FP32": np.float32}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return read_bundle(build_test_bundle(tmp_path_factory.mktemp("triton-bundle")))


@pytest.fixture(scope="module")
def repo(bundle, tmp_path_factory) -> Path:
    return export_triton(bundle.root, tmp_path_factory.mktemp("triton") / "repo")


def _tails(bundle) -> dict:
    return {v.id: v for v in bundle.manifest.variants if v.kind in ("split", "edge")}


def _config(repo: Path, name: str):
    config = model_config_pb2.ModelConfig()
    text_format.Parse((repo / name / "config.pbtxt").read_text(), config)
    return config


def test_one_model_per_tail_and_a_readme(bundle, repo) -> None:
    files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    expected = sorted(["README.md"] + [f"{vid}/{name}" for vid in _tails(bundle)
                                       for name in ("config.pbtxt", "1/model.onnx")])
    assert files == expected
    assert not any(p.name.startswith(".") for p in repo.parent.iterdir())  # no staging left


def test_every_config_parses_with_tritons_schema(bundle, repo) -> None:
    kind_name = model_config_pb2.ModelInstanceGroup.Kind.Name
    data_type = model_config_pb2.DataType.Name
    for vid, variant in _tails(bundle).items():
        config = _config(repo, vid)
        assert (config.name, config.platform, config.max_batch_size) == (
            vid, "onnxruntime_onnx", 64)
        assert config.HasField("dynamic_batching")
        assert [(kind_name(g.kind), g.count) for g in config.instance_group] == [("KIND_GPU", 1)]
        (inp,), (out,) = config.input, config.output
        if variant.kind == "split":
            q = variant.quantization
            assert (inp.name, data_type(inp.data_type), list(inp.dims)) == (
                variant.tail_input.name, "TYPE_UINT8", list(q.codes_shape))
            parameters = {k: v.string_value for k, v in config.parameters.items()}
            assert (int(parameters["splitpack_bits"]), float(parameters["splitpack_scale"]),
                    float(parameters["splitpack_offset"])) == (q.bits, q.scale, q.offset)
        else:
            assert (inp.name, data_type(inp.data_type), list(inp.dims)) == (
                bundle.manifest.input.name, "TYPE_FP32", list(bundle.manifest.input.shape[1:]))
        assert (out.name, data_type(out.data_type), list(out.dims)) == (
            bundle.manifest.output.name, "TYPE_FP32", [10])


def test_model_files_are_the_bundles_tails(bundle, repo) -> None:
    for vid, variant in _tails(bundle).items():
        written = hashlib.sha256((repo / vid / "1" / "model.onnx").read_bytes()).hexdigest()
        from_bundle = hashlib.sha256(
            (bundle.root / variant.artifacts.tail).read_bytes()).hexdigest()
        assert written == from_bundle == bundle.manifest.files[variant.artifacts.tail].sha256


def test_each_model_runs_as_its_config_declares(bundle, repo) -> None:
    inputs, expected = read_samples(bundle)
    normalized = normalize_uint8(inputs, bundle.manifest.preprocessing)
    for vid, variant in _tails(bundle).items():
        config = _config(repo, vid)
        (inp,), (out,) = config.input, config.output
        batch = (normalized if variant.kind == "edge"
                 else load_backend(bundle, variant).run(normalized))  # the head's codes
        dtype = TRITON_TO_NUMPY[model_config_pb2.DataType.Name(inp.data_type)]
        assert batch.dtype == dtype and batch.shape == (len(inputs), *inp.dims)
        assert len(inputs) <= config.max_batch_size
        session = ort.InferenceSession(str(repo / vid / "1" / "model.onnx"),
                                       providers=["CPUExecutionProvider"])
        (output,) = session.run([out.name], {inp.name: batch})
        assert output.shape == (len(inputs), *out.dims) and output.dtype == np.float32
        np.testing.assert_allclose(output, expected[vid], atol=ATOL)


def test_readme_says_how_to_serve_and_how_a_device_reaches_it(bundle, repo) -> None:
    readme = (repo / "README.md").read_text()
    assert f"tritonserver --model-repository={repo.resolve()}" in readme
    assert "KServe v2" in readme and "tritonclient" in readme
    for variant in _tails(bundle).values():
        if variant.kind == "split":
            q = variant.quantization
            assert f"| `{variant.id}` | split | `{variant.tail_input.name}` TYPE_UINT8" in readme
            assert f"| {q.bits} | {q.scale!r} | {q.offset!r} |" in readme


def test_export_triton_command_into_an_empty_folder(bundle, tmp_path, capsys) -> None:
    (tmp_path / "repo").mkdir()
    parser = argparse.ArgumentParser()
    commands.add_runtime_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export-triton", str(bundle.root), "--out", str(tmp_path / "repo"),
                              "--instance-kind", "cpu"])
    assert args.handler(args) == 0
    assert "3 models (cut01-c2s2b2, cut03-c16s1b8, edge)" in capsys.readouterr().out
    config = _config(tmp_path / "repo", "edge")
    kind = model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind)
    assert kind == "KIND_CPU"


def _not_empty(tmp_path: Path) -> Path:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    return tmp_path / "out"


def _a_file(tmp_path: Path) -> Path:
    (tmp_path / "out").write_text("mine")
    return tmp_path / "out"


@pytest.mark.parametrize("bundle_of, out_of, options, error, match", [
    (lambda b, t: t / "missing", lambda t: t / "out", {}, InvalidBundleError,
     "bundle .*missing does not exist"),
    (lambda b, t: b.root, _not_empty, {}, InvalidConfigError, "exists and is not empty"),
    (lambda b, t: b.root, _a_file, {}, InvalidConfigError, "exists and is not a folder"),
    (lambda b, t: b.root, lambda t: t / "out", {"max_batch_size": -1}, InvalidConfigError,
     "max_batch_size: found -1"),
    (lambda b, t: b.root, lambda t: t / "out", {"instance_kind": "KIND_TPU"},
     InvalidConfigError, "instance_kind: found 'KIND_TPU'; allowed: KIND_GPU, KIND_CPU"),
])  # fmt: skip
def test_bad_input_is_refused_and_nothing_is_written(bundle, tmp_path, bundle_of, out_of,
                                                     options, error, match) -> None:
    out = out_of(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(error, match=match):
        export_triton(bundle_of(bundle, tmp_path), out, **options)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_a_tail_that_disagrees_with_its_manifest_is_refused(bundle, tmp_path) -> None:
    fields = bundle.manifest.model_dump(mode="json", exclude={"bundle_id", "files"})
    split = next(v for v in fields["variants"] if v["kind"] == "split")
    split["quantization"]["codes_shape"] = [3, 8, 8]
    files = {relpath: bundle.root / relpath for relpath in bundle.manifest.files}
    write_bundle(tmp_path / "edited", fields, files)
    with pytest.raises(InvalidBundleError, match=rf"variant '{split['id']}' tail .*uint8 "
                       r"\(batch, 3, 8, 8\)"):
        export_triton(tmp_path / "edited", tmp_path / "out")
    assert not (tmp_path / "out").exists()
