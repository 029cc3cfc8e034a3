"""The Python surface (``splitpack.compile``, ``load_bundle``, ``verify``, ``serve``,
``DeviceRuntime``): an ``nn.Module`` defined here compiled on numpy arrays made here, the
bundle loaded, served on loopback from this process and run by a device runtime that pins and
unpins variants; every answer against the bundle's expected outputs; and bad input raising the
CLI's typed errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import splitpack
from splitpack.errors import InvalidConfigError, InvalidDatasetError, InvalidInputError, InvalidModelError
from splitpack.formats import read_samples
from splitpack.formats.variants import normalize_uint8
from splitpack.formats.wire import decode_payload
from splitpack.runtimes.backends import encode_request, load_backend, wire_bundle_id

ATOL = 1e-4


class Bars(nn.Module):
    """Three classes of 8x8 grey images: horizontal, vertical or no bars."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU())
        self.classify = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))

    def forward(self, x):
        return self.classify(self.features(x))


def _bars(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, 3, size=count)
    rows, cols = np.indices((8, 8))
    patterns = [(rows % 2) * 150, (cols % 2) * 150, np.zeros((8, 8))]
    noise = rng.integers(0, 100, size=(count, 8, 8))
    return (np.stack([patterns[k] for k in labels]) + noise).astype(np.uint8), labels


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    x_train, y_train = _bars(rng, 600)
    x_test, y_test = _bars(rng, 200)
    return x_train, y_train, x_test, y_test  # (N, H, W) uint8: grayscale, as a user has them


@pytest.fixture(scope="module")
def trained(arrays):
    torch.manual_seed(0)
    model = Bars()
    x = torch.from_numpy((arrays[0][:, None] / 255.0 - 0.5) / 0.5).float()
    y = torch.from_numpy(arrays[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def compiled(trained, arrays, tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "bars-bundle"
    lines: list[str] = []
    bundle = splitpack.compile(trained, arrays, out, variants=1, budget=4, epochs=1,
                               final_epochs=1, samples=8, max_accuracy_drop=5.0, tflite=False,
                               log=lines.append)
    return bundle, lines


def test_an_nn_module_and_arrays_compile_into_a_verified_bundle(compiled) -> None:
    bundle, lines = compiled
    assert bundle.manifest.model_id == "Bars" and bundle.manifest.input.shape[1:] == [1, 8, 8]
    assert {"local", "edge"} <= {v.id for v in bundle.variants}
    assert bundle.manifest.baseline_accuracy > 90.0  # the module was trained; its bars are easy
    assert any(line.startswith("[6/6]") for line in lines)  # the progress callback
    again = splitpack.load_bundle(bundle.root)
    assert again.manifest.bundle_id == bundle.manifest.bundle_id
    report = splitpack.verify(again, tflite=False)
    assert set(report.variants) == {v.id for v in bundle.variants}


def _expected(bundle) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The bundle's samples and each variant's expected outputs; for an ``edge`` variant whose
    upload is lossy (JPEG / WebP: the pixels change), the whole model's outputs on the pixels
    its upload decodes to (the bundle's are on the exact pixels)."""
    inputs, expected = read_samples(bundle)
    edge = bundle.variant("edge")
    if edge.upload is not None and edge.upload.format in ("jpeg", "webp"):
        decoded = np.concatenate([
            decode_payload(encode_request(edge, inputs[i:i + 1], wire_bundle_id=wire_bundle_id(bundle.manifest)))[1]
            for i in range(len(inputs))])
        model = load_backend(bundle, bundle.variant("local"))
        expected = {**expected, "edge": model.run(normalize_uint8(decoded, bundle.manifest.preprocessing))}
    return inputs, expected


def test_served_from_this_process_run_pinned_and_unpinned(compiled) -> None:
    bundle, _ = compiled
    inputs, expected = _expected(bundle)
    with splitpack.serve(bundle, port=0, block=False) as edge, \
            splitpack.DeviceRuntime(bundle, edge.url, rtt_ms=1.0) as runtime:
        for index in range(3):
            result = runtime.infer(inputs[index])
            np.testing.assert_allclose(result.output, expected[result.variant_id][index], atol=ATOL)
        for variant in bundle.variants:
            runtime.pin(variant.id)
            assert runtime.pinned == variant.id
            for index in range(2):
                result = runtime.infer(inputs[index])
                assert result.variant_id == variant.id and not result.fallback
                assert result.mode == variant.kind
                np.testing.assert_allclose(result.output, expected[variant.id][index], atol=ATOL)
        runtime.unpin()
        assert runtime.pinned is None
        result = runtime.infer(inputs[4])
        np.testing.assert_allclose(result.output, expected[result.variant_id][4], atol=ATOL)
        assert runtime.stats["requests"] == 3 + 2 * len(bundle.variants) + 1
        with pytest.raises(InvalidConfigError, match="not in this bundle; its variants: local"):
            runtime.pin("cut99-q8")
        with pytest.raises(InvalidInputError, match="found float64"):
            runtime.infer(np.zeros((1, 8, 8)))


def test_loading_the_runtime_surface_imports_no_torch() -> None:
    code = ("import splitpack, sys; splitpack.load_bundle; splitpack.DeviceRuntime; "
            "splitpack.serve; print('torch' in sys.modules, 'splitpack.compiler' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


def _bad_labels(arrays):
    x_train, y_train, x_test, y_test = arrays
    return x_train, -np.ones_like(y_train), x_test, y_test


@pytest.mark.parametrize("model, data, settings, error, match", [
    ("object", None, {}, InvalidModelError, "model: found builtins.object; allowed: an nn.Module"),
    ("module", "labels", {}, InvalidDatasetError, "arrays: y_train has label -1"),
    ("module", "short", {}, InvalidDatasetError, "arrays: x_train has 600 samples but y_train has 10"),
    ("module", "three", {}, InvalidDatasetError, "data: found tuple; allowed: a spec string"),
    ("module", "arrays", {"varaints": 2}, InvalidConfigError, "unknown key 'varaints'"),
    ("module", "arrays", {"variants": 9}, InvalidConfigError, "variants: Input should be less than or equal to 5"),
    ("module", "arrays", {"weights": "w.pt"}, InvalidModelError, "an nn.Module carries its own weights"),
    ("module", "digits", {}, InvalidDatasetError, "has 10 classes but the model outputs 3"),
])  # fmt: skip
def test_bad_input_raises_the_clis_typed_errors(trained, arrays, tmp_path, model, data, settings,
                                                error, match) -> None:
    models = {"object": object(), "module": trained}
    datas = {None: arrays, "arrays": arrays, "labels": _bad_labels(arrays), "digits": "digits",
             "short": (arrays[0], arrays[1][:10], arrays[2], arrays[3]), "three": arrays[:3]}
    if data == "digits":
        settings = {"input_shape": (1, 1, 8, 8), "image_size": 8, "train_limit": 50, "test_limit": 20}
    with pytest.raises(error, match=match):
        splitpack.compile(models[model], datas[data], tmp_path / "bundle", **settings)
    assert not (tmp_path / "bundle").exists()


def test_no_output_folder_is_a_typed_error(trained, arrays) -> None:
    with pytest.raises(InvalidConfigError, match="out: the bundle folder to write is required"):
        splitpack.compile(trained, arrays)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'compile_model'"):
        splitpack.compile_model  # noqa: B018
    assert {"compile", "load_bundle", "verify", "serve", "DeviceRuntime"} <= set(dir(splitpack))
    assert Path(splitpack.__file__).name == "__init__.py"


def test_a_dataset_that_is_not_normalized_pixels_is_refused(tmp_path, trained) -> None:
    from splitpack.datasets import Dataset

    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 1, 8, 8)).astype(np.float32) * 3  # already normalized floats
    y = rng.integers(0, 3, size=20)
    data = Dataset("floats", x, y, x, y, 3, (1, 8, 8), (0.0,), (1.0,))
    with pytest.raises(InvalidDatasetError, match="do not round-trip through uint8"):
        splitpack.compile(trained, data, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_a_module_takes_its_input_shape_from_the_config_files_data(tmp_path, trained, arrays) -> None:
    """The TOML file's ``data`` and ``image_size`` make the module's example input: digits at
    8x8 (1 channel) fits the module, and the 10 classes are then refused against its 3."""
    config = tmp_path / "compile.toml"
    config.write_text('data = "digits"\nimage_size = 8\ntrain_limit = 50\ntest_limit = 20\n')
    with pytest.raises(InvalidDatasetError, match="has 10 classes but the model outputs 3"):
        splitpack.compile(trained, None, tmp_path / "bundle", config=config)


def test_a_port_in_use_is_a_typed_error(compiled) -> None:
    bundle, _ = compiled
    with splitpack.serve(bundle, port=0, block=False) as edge:
        assert edge.url == f"http://127.0.0.1:{edge.port}" and edge.port > 0
        with pytest.raises(InvalidConfigError, match="did not start on .* is the port free"):
            splitpack.serve(bundle, port=edge.port, block=False)
