"""Profiling a model per cut (compiler.profile) and a bundle on the device (runtimes.profile).

Only the structure and signs of the numbers are checked; their size is a benchmark's business.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from splitpack.compiler.codec import CodecSpec, codec_ladder
from splitpack.compiler.cuts import find_cuts
from splitpack.compiler.export import export_onnx
from splitpack.compiler.profile import (
    is_bundle_path, profile_model, representative_codec, run_profile_command)
from splitpack.errors import InvalidBundleError, InvalidConfigError
from splitpack.formats import pack_bundle
from splitpack.runtimes.profile import profile_bundle
from tests.bundles import build_test_bundle

INPUT_SHAPE = (1, 2, 8, 8)
MODEL_SOURCE = textwrap.dedent("""
    import torch
    from torch import nn


    def tiny():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
""")
CUT_KEYS = {"tensor", "index", "codec", "head_ms", "tail_ms", "encode_ms", "decode_ms",
            "head_p90_ms", "tail_p90_ms", "model_ms_alongside_head", "model_ms_alongside_tail",
            "spliced_head_ms", "spliced_tail_ms", "spliced_head_p90_ms", "spliced_tail_p90_ms"}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny_model.py"
    path.write_text(MODEL_SOURCE)
    return path


@pytest.fixture(scope="module")
def tiny(model_file):
    from splitpack.compiler.export import load_torch_module

    model = export_onnx(load_torch_module(f"{model_file}:tiny"), INPUT_SHAPE)
    return model, find_cuts(model, INPUT_SHAPE)


@pytest.fixture(scope="module")
def bundle_folder(tmp_path_factory) -> Path:
    return build_test_bundle(tmp_path_factory.mktemp("profile-bundle"))


@pytest.mark.parametrize("statistic", ["median", "min"])
def test_profile_model_reports_every_cut(tiny, statistic):
    model, cuts = tiny
    before = model.SerializeToString()
    report = profile_model(model, INPUT_SHAPE, cuts, threads=1, repeats=3, warmup=1,
                           statistic=statistic)
    assert model.SerializeToString() == before  # the input model is not modified
    assert {"format", "host", "threads", "provider", "repeats", "warmup", "statistic",
            "input_shape", "model_ms", "model_p90_ms", "cuts"} <= set(report)
    assert (report["threads"], report["repeats"], report["statistic"]) == (1, 3, statistic)
    assert report["provider"] == "CPUExecutionProvider" and report["input_shape"] == [1, 2, 8, 8]
    assert report["model_ms"] > 0 and report["model_p90_ms"] > 0
    assert list(report["cuts"]) == [cut.label for cut in cuts]
    for cut in cuts:
        entry = report["cuts"][cut.label]
        assert set(entry) == CUT_KEYS, cut.label
        assert entry["tensor"] == cut.name and entry["index"] == cut.index
        assert entry["codec"] == codec_ladder(cut.shape, 12)[len(codec_ladder(cut.shape, 12)) // 2].name
        for name in ("head_ms", "tail_ms", "spliced_head_ms", "spliced_tail_ms",
                     "model_ms_alongside_head", "model_ms_alongside_tail"):
            assert entry[name] > 0, (cut.label, name)
        assert entry["encode_ms"] >= 0 and entry["decode_ms"] >= 0
    json.dumps(report)  # JSON-able as it is


def test_profile_model_with_a_given_codec(tiny):
    model, cuts = tiny
    codec = CodecSpec(1, 1, 8)
    report = profile_model(model, INPUT_SHAPE, cuts[:1], codecs_for=lambda cut: codec, repeats=2,
                           warmup=0)
    assert report["threads"] is None  # ONNX Runtime's default, stated as such
    assert report["cuts"][cuts[0].label]["codec"] == "c1s1b8"


def test_cut_without_a_codec_is_profiled_plain():
    import torch
    from torch import nn

    class Volumetric(nn.Module):  # its conv output is (4, 1, 8, 8) per sample: no codec fits
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.relu, self.fc = nn.Conv3d(2, 4, 1), nn.ReLU(), nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(self.relu(self.conv(x.unsqueeze(2))).mean(dim=(2, 3, 4)))

    torch.manual_seed(0)
    model = export_onnx(Volumetric().eval(), INPUT_SHAPE)
    cuts = [cut for cut in find_cuts(model, INPUT_SHAPE) if cut.label == "relu"]
    entry = profile_model(model, INPUT_SHAPE, cuts, repeats=2, warmup=0)["cuts"]["relu"]
    assert (entry["codec"], entry["encode_ms"], entry["decode_ms"]) == (None, None, None)
    assert entry["head_ms"] > 0 and entry["tail_ms"] > 0 and "spliced_head_ms" not in entry


def test_representative_codec(tiny):
    _, cuts = tiny
    ladder = codec_ladder(cuts[0].shape, 12)
    assert representative_codec(cuts[0]) == ladder[len(ladder) // 2]
    three = [CodecSpec(1, 1, 8), CodecSpec(2, 1, 8), CodecSpec(4, 1, 8)]
    assert representative_codec(cuts[0], lambda cut: three) == three[1]
    assert representative_codec(cuts[0], lambda cut: three[0]) == three[0]


@pytest.mark.parametrize("kwargs, match", [
    ({"threads": 0}, r"threads must be an integer >= 1 or None; got 0"),
    ({"repeats": 0}, r"repeats must be an integer >= 1; got 0"),
    ({"warmup": -1}, r"warmup must be an integer >= 0; got -1"),
    ({"statistic": "mean"}, r"statistic must be one of median, min; got 'mean'"),
    ({"codecs_for": lambda cut: []}, r"codecs_for\('.*'\) must give a CodecSpec or a non-empty list"),
])
def test_profile_model_rejects_bad_arguments(tiny, kwargs, match):
    model, cuts = tiny
    with pytest.raises(InvalidConfigError, match=match):
        profile_model(model, INPUT_SHAPE, cuts[:1], **{"repeats": 1, "warmup": 0, **kwargs})


def test_run_profile_command_on_a_model_writes_json(model_file, tmp_path):
    out = tmp_path / "deep" / "profile.json"
    report = run_profile_command(f"{model_file}:tiny", weights=None, input_shape="1x2x8x8",
                                 threads=1, out=out, repeats=2, warmup=0)
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(report))
    assert written["model"] == f"{model_file}:tiny" and written["cuts"]
    assert all(entry["head_ms"] > 0 for entry in written["cuts"].values())


def _check_bundle_profile(report: dict) -> None:
    variants = report["variants"]
    assert {v["kind"] for v in variants.values()} == {"local", "edge", "split"}
    for vid, entry in variants.items():
        assert entry["max_abs_diff"] <= 1e-4, vid  # the artifacts still compute their outputs
        assert entry["provider"] == "CPUExecutionProvider"
        if entry["kind"] == "local":
            assert entry["head_ms"] > 0 and entry["tail_ms"] == 0
        elif entry["kind"] == "edge":
            assert entry["head_ms"] == 0 and entry["tail_ms"] > 0
        else:
            assert entry["head_ms"] > 0 and entry["tail_ms"] > 0
            assert entry["head_p90_ms"] >= entry["head_ms"] * 0.999


def test_profile_bundle_folder_and_archive(bundle_folder, tmp_path):
    report = profile_bundle(bundle_folder, threads=1, repeats=3, warmup=1)
    assert report["samples"] == 8 and report["threads"] == 1 and report["model_id"] == "tiny-cnn-test"
    _check_bundle_profile(report)
    archive = pack_bundle(bundle_folder, tmp_path / "bundle.tar.gz")
    out = tmp_path / "bundle-profile.json"
    from_archive = run_profile_command(str(archive), weights=None, input_shape=None, threads=None,
                                       out=out, repeats=2, warmup=0)
    assert json.loads(out.read_text())["bundle_id"] == report["bundle_id"]
    _check_bundle_profile(from_archive)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"weights": "w.pt"}, InvalidConfigError, r"--weights apply to model specs; the bundle"),
    ({"input_shape": "1x1x16x16"}, InvalidConfigError, r"--input-shape apply to model specs"),
])
def test_run_profile_command_rejects_model_options_for_bundles(bundle_folder, tmp_path, kwargs,
                                                               error, match):
    arguments = {"weights": None, "input_shape": None, "threads": 1, "out": tmp_path / "p.json"}
    with pytest.raises(error, match=match):
        run_profile_command(str(bundle_folder), **{**arguments, **kwargs})


def test_missing_bundle_archive_is_reported(tmp_path):
    with pytest.raises(InvalidBundleError, match=r"does not exist"):
        profile_bundle(tmp_path / "absent.tar.gz")


def test_is_bundle_path(bundle_folder, tmp_path):
    assert is_bundle_path(str(bundle_folder))
    assert is_bundle_path("somewhere/bundle.tgz") and is_bundle_path("b.zip")
    assert not is_bundle_path(str(tmp_path)) and not is_bundle_path("splitpack.models:digits_cnn")
