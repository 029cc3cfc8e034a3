"""The stand-alone scripts under benchmarks/: what they build is checked here, small."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from splitpack.compiler.cuts import find_cuts
from splitpack.compiler.export import export_onnx, load_torch_module

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scenes_patches_are_labelled_regions_of_the_photographs() -> None:
    scenes = _load("scenes")
    x, y = scenes.make_patches(64, np.random.default_rng(0))
    assert x.shape == (64, 3, 64, 64) and x.dtype == np.uint8
    assert y.dtype == np.int64 and 0 <= y.min() and y.max() < scenes.CLASSES
    again, _ = scenes.make_patches(64, np.random.default_rng(0))
    assert np.array_equal(x, again)  # seeded
    assert len(np.unique(x.reshape(64, -1), axis=0)) == 64  # real crops, not one image


def test_scenes_cnn_exports_with_cuts_after_its_early_bottleneck() -> None:
    scenes = _load("scenes")
    model = load_torch_module(f"{ROOT / 'benchmarks' / 'scenes.py'}:scenes_cnn")  # as compile does
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x).numpy()
    assert expected.shape == (2, scenes.CLASSES)
    onnx_model = export_onnx(model, (1, 3, 64, 64))
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    shapes = {tuple(cut.shape) for cut in find_cuts(onnx_model, (1, 3, 64, 64))}
    assert (32, 16, 16) in shapes  # the stem's output: 16x16 after two stride-2 convs


def test_cuda_tails_refuses_to_run_without_cuda() -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this host has CUDA: the script would run for real")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cuda_tails.py"), "no-bundle",
                           "--out", "unused.json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "install onnxruntime-gpu on a machine with an NVIDIA GPU" in done.stderr
