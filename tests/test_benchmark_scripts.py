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
from splitpack.models.scenes import SCENES_CLASSES

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scenes_script_writes_the_scenes_data_set(tmp_path: Path) -> None:
    from splitpack.datasets import load_dataset

    scenes = _load("scenes")
    scenes.write_dataset(tmp_path / "scenes.npz", train=96, test=32)
    written = load_dataset(f"npz:{tmp_path / 'scenes.npz'}")
    full = load_dataset("scenes")
    # the same generator in the same order: the npz holds the first patches of the spec's draw
    # only when the counts match; here each split is checked against a fresh draw of its size
    rng = np.random.default_rng(0)
    x_train, y_train = scenes.scene_patches(96, rng)
    assert np.array_equal(written.y_train, y_train)
    np.testing.assert_array_equal(written.to_uint8(written.x_train), x_train)
    assert full.input_shape == written.input_shape == (3, 64, 64)
    assert (full.mean, full.std) == (written.mean, written.std)


def test_scenes_cnn_exports_with_cuts_after_its_early_bottleneck() -> None:
    model = load_torch_module(f"{ROOT / 'benchmarks' / 'scenes.py'}:scenes_cnn")  # as compile does
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x).numpy()
    assert expected.shape == (2, SCENES_CLASSES)
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


def test_augment_crops_and_flips_within_the_padded_image() -> None:
    cifar = _load("cifar_models")
    batch = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4) + 1
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(30):
        out = cifar.augment(batch, generator)
        assert out.shape == batch.shape
        for sample, original in zip(out, batch):
            values = set(sample.flatten().tolist()) - {0.0}  # zeros: the 4-pixel padding
            assert values <= set(original.flatten().tolist())
            seen.add(tuple(sample.flatten().tolist()))
    assert len(seen) > 10  # random crops and flips, not one fixed view


@pytest.mark.slow
def test_cifar_training_script_trains_resumes_and_writes_weights(tmp_path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 4)):
        for label in ("cat", "dog"):
            folder = tmp_path / "data" / split / label
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")
    out = tmp_path / "rn.pt"
    command = [sys.executable, str(ROOT / "benchmarks" / "cifar_models.py"), "train", "resnet20",
               "--data", str(tmp_path / "data"), "--out", str(out), "--epochs", "2", "--batch-size", "8",
               "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "test accuracy" in done.stdout and out.is_file()
    from splitpack.models import cifar_resnet20

    model = cifar_resnet20(num_classes=2)
    model.load_state_dict(torch.load(out, weights_only=True))
    summary = __import__("json").loads(out.with_suffix(".json").read_text())
    assert summary["epochs"] == 2 and len(summary["history"]) == 2 and summary["train_images"] == 24
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 2)
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)  # resumes: nothing left to train
    assert again.returncode == 0 and "resumed after epoch 2" in again.stdout, again.stderr


def test_entropy_coding_benchmark_measures_a_small_case() -> None:
    entropy_coding = _load("entropy_coding")
    result = entropy_coding.measure_case("tiny", (4, 6, 6), 4, "relu", train=16, test=8, repeats=3,
                                         rng=np.random.default_rng(0))
    assert result["codes_per_sample"] == 144 and 0.3 < result["zero_fraction"] < 0.95
    assert result["wire_sizes_checked"]
    assert result["bitpack"]["payload_bytes"] > result["entropy"]["payload_bytes_mean"] > 0
    for method in ("entropy", "bitpack"):
        timing = result[method]["encode_decode"]
        assert 0 < timing["median_ms"] <= timing["p99_ms"]


def _cell(cut, codec, method, coding, ratio, accuracy, payload):
    return {"cut": cut, "codec": codec, "method": method, "coding": coding, "compression_ratio": ratio,
            "accuracy": accuracy, "payload_bytes": payload, "train_seconds": 1.0, "tail_seconds": 0.0}


def test_grid_report_figures_come_from_the_cells() -> None:
    report = _load("grid_report")
    grid = {
        "model": "m", "baseline_accuracy": 90.0, "train_examples": 10, "test_examples": 10, "epochs": 1,
        "cuts": [{"label": "a", "shape": [8, 4, 4]}, {"label": "b", "shape": [16]}],
        "cells": [
            _cell("a", "q8", "calibrated", "bitpack", 4, 89.8, 600), _cell("a", "q8", "calibrated", "entropy", 4, 89.8, 400),
            _cell("a", "c8s1b8", "learned", "bitpack", 4, 89.9, 605), _cell("a", "c2s1b8", "learned", "bitpack", 16, 89.2, 170),
            _cell("a", "c1s2b8", "learned", "bitpack", 64, 85.0, 80),
            _cell("b", "q8", "calibrated", "bitpack", 4, 90.0, 120), _cell("b", "q8", "calibrated", "entropy", 4, 90.0, 100),
        ],
        "input_baselines": [{"format": "jpeg", "quality": 50, "payload_bytes": 300.0, "accuracy": 89.5},
                            {"format": "png", "quality": None, "payload_bytes": 2000.0, "accuracy": 90.0}],
    }
    summary = report.summarize(grid)
    a, b = summary["per_cut"]
    assert a["q8_drop"] == pytest.approx(0.2) and a["full_channel_b8_minus_q8"] == pytest.approx(0.1)
    assert a["largest_ratio_within_1pt"]["codec"] == "c2s1b8"  # 64x lost 5 points
    assert a["fewest_bytes_within_1pt"]["payload_bytes"] == 170
    assert b["full_channel_b8"] is None  # no learned cell at that cut
    beaten = {entry["cut"]: entry["image"] for entry in summary["cuts_beating_input_upload_within_1pt"]}
    assert beaten["a"]["format"] == "jpeg"  # 170 B at 89.2 % against JPEG's 300 B at 89.5 %
    assert beaten["b"]["format"] == "png"  # 100 B at 90.0 %: only the lossless upload is as accurate
    assert summary["entropy_cells"] == 2 and summary["entropy_share_at_or_below_0.8"] == 0.5
    merged = report.merge_grids([grid, {**grid, "cuts": [{"label": "c", "shape": [4]}], "cells": []}])
    assert [cut["label"] for cut in merged["cuts"]] == ["a", "b", "c"] and len(merged["cells"]) == 7


def test_runtime_report_checks_each_mark_from_the_files(tmp_path, capsys) -> None:
    report = _load("runtime_report")

    def run(name: str, adaptive: float, adaptive_mean: float, lost: int = 0) -> Path:
        path = tmp_path / f"{name}.json"
        path.write_text(__import__("json").dumps({
            "trace": {"path": "../shared/traces/X.up"}, "device_slowdown": 30.0,
            "median_latency_ms": {"adaptive": adaptive, "best_static": 12.0, "local": 10.0, "edge": 11.0,
                                  "oracle": 9.5},
            "mean_latency_ms": {"adaptive": adaptive_mean, "best_static": 13.0, "local": 11.0, "edge": 12.0,
                                "oracle": 10.0},
            "adaptive_to_oracle": {"median": adaptive / 9.5, "mean": adaptive_mean / 10.0, "p90": None},
            "errors": 0, "lost": lost, "switch_ms_p99": 0.01}))
        return path

    good = report.summarize(run("good", 10.1, 12.0))  # 1.063 x oracle, 1.01 x local, mean 1.2x
    assert good["best_fixed"] == "local" and good["marks_met"]
    assert good["median_over_best_fixed"] == pytest.approx(1.01)
    assert not report.summarize(run("slow_mean", 10.1, 12.6))["marks_met"]  # mean 1.26 x oracle
    assert not report.summarize(run("above_best", 10.3, 11.0))["marks_met"]  # 1.03 x local
    assert not report.summarize(run("lost", 10.1, 12.0, lost=1))["marks_met"]
    assert report.main([str(tmp_path / "good.json"), str(tmp_path / "lost.json")]) == 0
    assert "1 of 2 runs meet every mark" in capsys.readouterr().out


def test_runtime_rounds_reads_where_the_runtime_answered_against_the_fixed_methods(
        tmp_path, capsys) -> None:
    import json

    rounds = _load("runtime_rounds")
    # four rounds: the runtime on edge, edge, local, local; the fixed edge is best over the run
    # (median 10.5 against local's 20) and beat local in one of the two rounds answered locally
    fixed = {"edge": [10.0, 11.0, 5.0, 90.0], "local": [20.0, 20.0, 20.0, 20.0]}
    log = [{"round": 0, "variant": "edge", "mode": "edge", "latency_ms": 10.5},
           {"round": 1, "variant": "edge", "mode": "edge", "latency_ms": 11.5},
           {"round": 2, "variant": "local", "mode": "local", "latency_ms": 20.2},
           {"round": 3, "variant": "local", "mode": "local", "latency_ms": 20.4}]
    path = tmp_path / "run.json"
    path.write_text(json.dumps({
        "log": log, "fixed_log": {name: [[0.0, ms] for ms in values] for name, values in fixed.items()},
        "runs": {"adaptive": {"uplink_probes": 3, "uplink_probe_bytes": 300}}}))
    fields = rounds.summarize(path).split()
    assert fields[1] == "edge"
    assert [float(f) for f in fields[2:6]] == [15.85, 10.5, 15.65, 29.0]  # medians, means
    assert fields[6:10] == ["2", "47.5", "20.0", "1"]  # local rounds; edge, local there; edge won
    assert float(fields[10]) == pytest.approx(0.3) and fields[11:] == ["3", "300"]
    assert rounds.by_variant(path)[0].split() == ["edge", "2", "rounds:", "adaptive", "11.00,",
                                                  "fixed", "10.50"]
    assert rounds.main([str(path), "--by-variant"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["run", "best"] and out[1].split()[:2] == ["run", "edge"]
    assert out[2].split()[0] == "edge" and out[3].split()[0] == "local" and len(out) == 4


def test_local_answer_overhead_compares_the_runtime_with_the_fixed_local_method(
        bundle_path, tmp_path) -> None:
    import json

    out = tmp_path / "overhead.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "local_answer_overhead.py"),
                    str(bundle_path), "--requests", "8", "--pause", "0", "--out", str(out)],
                   check=True, cwd=ROOT, timeout=300)
    result = json.loads(out.read_text())
    assert result["answered_locally"]["fixed"] == 8
    assert 1 <= result["answered_locally"]["runtime"] <= 8
    assert result["explorations"] == 0  # probes, the default, instead
    medians = result["median_latency_ms"]
    assert result["beyond_fixed_us"] == pytest.approx(
        (medians["runtime"] - medians["fixed"]) * 1e3, abs=0.2)
