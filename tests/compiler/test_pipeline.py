"""`splitpack compile` on a model and data set defined here (not in splitpack.models), the
bundle it writes, `inspect`, `verify`, and what happens to tampered bundles."""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from splitpack.cli import main
from splitpack.compiler.codec import parse_codec
from splitpack.compiler.settings import CompileSettings, load_settings
from splitpack.compiler.tflite import run_tflite
from splitpack.errors import InvalidBundleError, InvalidConfigError
from splitpack.formats.bundle import read_bundle, read_samples
from splitpack.formats.variants import normalize_uint8, split_variant_id
from splitpack.quiet import forward_messages
from splitpack.runtimes.verify import verify_bundle

USER_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Stripes(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU(),
                nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
            )
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))

        def forward(self, x):
            return self.head(self.features(x))

    def stripes():
        return Stripes()
    """
)


def _stripes(rng, count):
    """Three classes of 8x8 uint8 images: horizontal, vertical or diagonal stripes, noisy."""
    labels = rng.integers(0, 3, size=count)
    grid = np.indices((8, 8))
    patterns = [(grid[0] % 2), (grid[1] % 2), ((grid[0] + grid[1]) % 2)]
    images = np.stack([patterns[k] * 160 + rng.integers(0, 90, size=(8, 8)) for k in labels])
    return images[:, None].astype(np.uint8), labels.astype(np.int64)


@pytest.fixture(scope="module")
def user_project(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    (root / "stripes.py").write_text(USER_MODEL)
    rng = np.random.default_rng(0)
    x_train, y_train = _stripes(rng, 300)
    x_test, y_test = _stripes(rng, 100)
    np.savez(root / "stripes.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    from splitpack.compiler.export import load_torch_module
    from splitpack.models import train_classifier

    torch.manual_seed(0)
    model = load_torch_module(f"{root / 'stripes.py'}:stripes")
    train_classifier(model, (x_train / 255.0).astype(np.float32), y_train, epochs=8, lr=5e-3, seed=0, progress=False)
    torch.save(model.state_dict(), root / "stripes.pt")
    return root


@pytest.fixture(scope="module")
def compiled(user_project):
    out = user_project / "bundle"
    code = main([
        "compile", f"{user_project / 'stripes.py'}:stripes", "--weights", str(user_project / "stripes.pt"),
        "--data", f"npz:{user_project / 'stripes.npz'}", "--out", str(out), "--variants", "2", "--budget", "6",
        "--epochs", "3", "--final-epochs", "4", "--samples", "8", "--max-accuracy-drop", "5", "--device-slowdown", "10",
    ])
    assert code == 0
    return out


def test_bundle_verifies_and_accuracies_are_measured_in_onnx_runtime(compiled, user_project):
    bundle = read_bundle(compiled)
    manifest = bundle.manifest
    kinds = [v.kind for v in manifest.variants]
    assert kinds.count("local") == 1 and kinds.count("edge") == 1 and kinds.count("split") == 2
    report = verify_bundle(compiled)
    assert set(report.variants) == {v.id for v in manifest.variants}
    with np.load(user_project / "stripes.npz") as data:
        x_test, y_test = data["x_test"], data["y_test"]
    x = normalize_uint8(x_test, manifest.preprocessing)
    import onnxruntime as ort

    for variant in manifest.variants:
        if variant.kind == "local":
            assert variant.accuracy == manifest.baseline_accuracy
            continue
        if variant.kind == "edge":  # the upload chosen at compile time, measured through the model
            assert variant.upload is not None and variant.accuracy >= manifest.baseline_accuracy - 5.0
            assert variant.payload_bytes_p95 >= 1 and variant.payload_bytes >= 1
            continue
        head = ort.InferenceSession(str(bundle.path(variant.artifacts.head)), providers=["CPUExecutionProvider"])
        tail = ort.InferenceSession(str(bundle.path(variant.artifacts.tail)), providers=["CPUExecutionProvider"])
        codes = head.run(None, {"input": x})[0]
        logits = tail.run(None, {"codes": codes})[0]
        assert variant.accuracy == pytest.approx(100 * np.mean(logits.argmax(-1) == y_test))
        assert variant.accuracy >= manifest.baseline_accuracy - 5.0
        assert variant.predicted_accuracy is not None


def test_tflite_heads_match_onnx_heads(compiled):
    bundle = read_bundle(compiled)
    inputs, _ = read_samples(bundle)
    x = normalize_uint8(inputs, bundle.manifest.preprocessing)
    for variant in bundle.manifest.variants:
        if variant.artifacts.head_tflite is None:
            assert variant.kind == "edge"
            continue
        head = onnx.load(str(bundle.path(variant.artifacts.head)))
        got = run_tflite(bundle.read_bytes(variant.artifacts.head_tflite), x)
        from splitpack.compiler.train import run_onnx

        reference = run_onnx(head, x)
        assert got.shape == reference.shape and got.dtype == reference.dtype
        if reference.dtype == np.float32:
            np.testing.assert_allclose(got, reference, atol=1e-4, rtol=0)
        else:
            # uint8 codes: a value exactly at a rounding boundary may round the other way
            # under a different float op order; at most one level, rarely
            assert np.max(np.abs(got.astype(int) - reference.astype(int))) <= 1
            assert np.mean(got != reference) <= 0.01
        assert variant.tflite_max_abs_diff is not None


def test_inspect_json_lists_variants(compiled, capsys):
    assert main(["inspect", str(compiled), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert "baseline_accuracy" in document
    for variant in document["variants"]:
        assert {"id", "cut", "compression_ratio", "payload_bytes", "accuracy", "predicted_accuracy", "artifacts"} <= set(variant)
    assert main(["inspect", str(compiled)]) == 0
    assert "local" in capsys.readouterr().out


def test_archive_loads_like_the_folder(compiled, tmp_path):
    archive = compiled.parent / "bundle.tar.gz"
    assert archive.is_file()
    from_archive = read_bundle(archive, extract_to=tmp_path / "x")
    assert from_archive.manifest == read_bundle(compiled).manifest
    assert main(["verify", str(archive)]) == 0


def test_recompile_resumes_from_the_work_folder(compiled, user_project, capsys):
    # a second compile with the same training settings into a copy of the work folder trains nothing
    shutil.copytree(user_project / "bundle.work", user_project / "bundle2.work")
    work = next((user_project / "bundle2.work").iterdir())
    trained = sorted(work.glob("*/*.json")) + sorted(work.glob("final/*/*.onnx"))
    stamps = [path.stat().st_mtime_ns for path in trained]
    assert main([
        "compile", f"{user_project / 'stripes.py'}:stripes", "--weights", str(user_project / "stripes.pt"),
        "--data", f"npz:{user_project / 'stripes.npz'}", "--out", str(user_project / "bundle2"), "--variants", "2",
        "--budget", "6", "--epochs", "3", "--final-epochs", "4", "--samples", "8", "--max-accuracy-drop", "5",
        "--device-slowdown", "10", "--no-tflite",
    ]) == 0
    assert len(trained) >= 6 + 2
    assert [path.stat().st_mtime_ns for path in trained] == stamps
    assert sorted(work.glob("*/*.json")) + sorted(work.glob("final/*/*.onnx")) == trained
    assert read_bundle(user_project / "bundle2").manifest.variants[2].id == read_bundle(user_project / "bundle").manifest.variants[2].id


def _copy(compiled, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(compiled, target)
    return target


def _flip_byte(bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    path = next(v["artifacts"]["tail"] for v in manifest["variants"] if v["kind"] == "split")
    data = bytearray((bundle_dir / path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle_dir / path).write_bytes(bytes(data))
    return path


def _edit_manifest(bundle_dir, change):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    change(manifest)
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda d: _flip_byte(d), r"variants/cut\d\d-c\w+/tail.onnx: sha256 mismatch"),
        (lambda d: _edit_manifest(d, lambda m: m["variants"][2].update(accuracy=99.9)), r"bundle_id .* does not match"),
        (lambda d: _edit_manifest(d, lambda m: m.update(schema_version=7)), r"schema version 7 is not supported"),
        (lambda d: (d / "samples.npz").unlink(), r"samples.npz"),
        (lambda d: _edit_manifest(d, lambda m: m["variants"][0].update(colour="red")), r"unknown key 'variants.0.colour'"),
    ],
)
def test_tampered_bundles_fail_with_the_file_named(compiled, tmp_path, tamper, message):
    target = _copy(compiled, tmp_path)
    tamper(target)
    with pytest.raises(InvalidBundleError, match=message):
        verify_bundle(target)


@pytest.mark.parametrize("member", ["../escaped.onnx", "/tmp/splitpack-absolute-escape.onnx"])
def test_archive_members_that_escape_are_refused(compiled, tmp_path, member):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(compiled / "manifest.json", arcname="manifest.json")
        data = (compiled / "model.onnx").read_bytes()
        info = tarfile.TarInfo(member)  # addfile keeps the name as given (add() strips a leading /)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    extract_to = tmp_path / "inside" / "x"
    with pytest.raises(InvalidBundleError, match="escaped.onnx|absolute"):
        read_bundle(archive, extract_to=extract_to)
    assert not (tmp_path / "inside" / "escaped.onnx").exists()
    assert not Path("/tmp/splitpack-absolute-escape.onnx").exists()


def test_verify_cli_reports_a_tampered_file(compiled, tmp_path, capsys):
    target = _copy(compiled, tmp_path)
    path = _flip_byte(target)
    assert main(["verify", str(target)]) == 2
    assert path in capsys.readouterr().err


@pytest.mark.slow
def test_verify_cli_writes_nothing_to_stderr(compiled):
    """A fresh process, so LiteRT's once-per-process "INFO: Created TensorFlow Lite XNNPACK
    delegate for CPU." would show; --verbose lets it through."""
    command = [sys.executable, "-m", "splitpack", "verify", str(compiled)]
    quiet = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and "verified" in quiet.stdout, quiet.stderr
    assert quiet.stderr == ""
    verbose = subprocess.run(command + ["--verbose"], capture_output=True, text=True, timeout=300)
    assert verbose.returncode == 0 and "verified" in verbose.stdout
    assert "XNNPACK" in verbose.stderr


@pytest.mark.parametrize(
    "config, message",
    [
        ('model = "m.py:f"\ncolour = "red"\n', r"unknown key 'colour'"),
        ('model = "m.py:f"\nvariants = 9\n', r"variants: Input should be less than or equal to 5"),
        ('model = "m.py:f"\nbandwidth = "100:1"\n', r"bandwidth range '100:1' is malformed"),
        ('model = "m.py:f"\nbudget = 0\n', r"budget"),
        ('model = "m.py:f"\nsample_seconds = -1\n', r"sample_seconds: Input should be greater than or equal to 0"),
        ("model = ", r"not valid TOML"),
    ],
)
def test_bad_config_files(tmp_path, config, message):
    path = tmp_path / "c.toml"
    path.write_text(config)
    with pytest.raises(InvalidConfigError, match=message):
        load_settings(str(path), {})


def test_config_file_and_options_merge(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('model = "m.py:f"\nvariants = 3\ntflite = false\n')
    settings = load_settings(str(path), {"variants": 2, "data": None})
    assert settings == CompileSettings(model="m.py:f", variants=2, tflite=False)


def _settings_for(user_project, **changes) -> CompileSettings:
    values = dict(model=f"{user_project / 'stripes.py'}:stripes", weights=str(user_project / "stripes.pt"),
                  data=f"npz:{user_project / 'stripes.npz'}", variants=2, budget=6, epochs=3, final_epochs=4,
                  samples=8, max_accuracy_drop=5.0, device_slowdown=10.0, tflite=False)
    values.update(changes)
    return CompileSettings(**values)


def _work_copy(compiled, user_project, name):
    """A copy of the fixture's work folder under another bundle name, without its cached
    selections: the cells are not retrained, the selection is made anew."""
    shutil.copytree(user_project / "bundle.work", user_project / f"{name}.work")
    for cached in (user_project / f"{name}.work").glob("*/selection-*.json"):
        cached.unlink()
    return user_project / name


def test_the_selection_is_keyed_by_the_settings_it_reads(compiled, user_project):
    from splitpack.compiler.pipeline import compile_bundle

    out = _work_copy(compiled, user_project, "keyed")
    one = compile_bundle(_settings_for(user_project, variants=1, bandwidth="0.1:1"), out, log=lambda line: None)
    two = compile_bundle(_settings_for(user_project, variants=2), out, log=lambda line: None)
    work = Path(two["work"])
    assert one["work"] == two["work"]  # the same training settings: one work folder
    selections = sorted(work.glob("selection-*.json"))
    assert len(selections) >= 2
    splits = [[v["id"] for v in result["variants"] if v["kind"] == "split"] for result in (one, two)]
    assert len(splits[0]) <= 1 and splits[0] != splits[1]


def _failing_finals(monkeypatch, fails):
    """Make final (keep_artifacts) cells measure 0 % when ``fails(variant id)``."""
    from splitpack.compiler import pipeline

    real = pipeline._Trainer.cell

    def cell(self, cut_label, codec_name, *, epochs, keep_artifacts):
        result = dict(real(self, cut_label, codec_name, epochs=epochs, keep_artifacts=keep_artifacts))
        vid = split_variant_id(self.cuts[cut_label].index, parse_codec(codec_name).name)
        if keep_artifacts and fails(vid):
            result["accuracy"] = 0.0
        return result

    monkeypatch.setattr(pipeline._Trainer, "cell", cell)


def test_a_compile_whose_variants_fail_the_floor_ships_the_others_and_says_so(compiled, user_project, monkeypatch):
    from splitpack.compiler.pipeline import compile_bundle

    shipped = [v.id for v in read_bundle(compiled).manifest.variants if v.kind == "split"]
    _failing_finals(monkeypatch, lambda vid: vid == shipped[0])
    out = _work_copy(compiled, user_project, "partly")
    lines: list[str] = []
    result = compile_bundle(_settings_for(user_project, max_accuracy_drop=5.0), out, log=lines.append)
    bundle = read_bundle(out)
    splits = [v for v in bundle.manifest.variants if v.kind == "split"]
    assert splits and shipped[0] not in {v.id for v in splits}
    assert shipped[0] in [d["id"] for d in result["dropped"]]
    assert any(f"not in the bundle: {shipped[0]}: measured 0.00% < floor" in line for line in lines)
    assert all(v.accuracy >= bundle.manifest.baseline_accuracy - 5.0 for v in splits)
    assert verify_bundle(out).variants


def test_a_compile_where_no_variant_meets_the_floor_ships_local_and_edge(compiled, user_project, monkeypatch):
    from splitpack.compiler.pipeline import compile_bundle

    _failing_finals(monkeypatch, lambda vid: True)
    out = _work_copy(compiled, user_project, "nothing")
    lines: list[str] = []
    result = compile_bundle(_settings_for(user_project), out, log=lines.append)
    manifest = read_bundle(out).manifest
    assert [v.kind for v in manifest.variants] == ["local", "edge"]
    assert len(result["dropped"]) >= 2
    assert any("0 of 2 split variants met the accuracy floor" in line for line in lines)
    assert set(verify_bundle(out).variants) == {"local", "edge"}


def test_a_budget_larger_than_the_space_is_refused_before_training(compiled, user_project):
    from splitpack.compiler.pipeline import compile_bundle

    out = _work_copy(compiled, user_project, "budget")
    with pytest.raises(InvalidConfigError, match=r"compile step 'sample and train up to 100000 of \d+ cells in 480 s'.*"
                                                 r"budget 100000 is larger than the \d+ cells .* allowed: 1\.\.\d+"):
        compile_bundle(_settings_for(user_project, budget=100_000), out, log=lambda line: None)
    assert not out.exists()  # nothing written where the bundle goes


def test_finals_at_the_sampling_settings_reuse_the_sampled_training(user_project, monkeypatch):
    """A final variant that was sampled at the same epochs (and seed) is that same training:
    its final is copied, not trained again; at other epochs it is trained."""
    from splitpack.compiler import pipeline

    settings = _settings_for(user_project, final_epochs=3)
    result = pipeline.compile_bundle(settings, user_project / "reuse", log=lambda line: None)
    work = pipeline._Work(Path(result["work"]))
    loaded, dataset = pipeline.load_inputs(settings, work)
    cuts = pipeline.find_model_cuts(settings, loaded.onnx_model, loaded.input_shape)
    lines: list[str] = []
    trainer = pipeline._Trainer(loaded.onnx_model, cuts, dataset, work, settings)
    sampled = [p for p in (work.root / "cells").glob("*.json") if not (work.root / "final" / p.name).exists()]
    assert len(sampled) >= 2
    cell = json.loads(sampled[0].read_text())

    def no_training(*args, **kwargs):
        raise AssertionError("a sampled cell was trained again")

    monkeypatch.setattr(pipeline, "measure_cell", no_training)
    with forward_messages(lines.append):  # what the trainer logs
        final = trainer.cell(cell["cut"], cell["codec"], epochs=3, keep_artifacts=True)
    vid = sampled[0].stem
    assert final == cell
    assert (work.root / "final" / vid / "tail.onnx").read_bytes() == (work.root / "cells" / vid / "tail.onnx").read_bytes()
    assert any("trained while sampling" in line for line in lines)
    other = json.loads(sampled[1].read_text())
    with pytest.raises(AssertionError, match="trained again"):  # at other epochs: a training of its own
        trainer.cell(other["cut"], other["codec"], epochs=4, keep_artifacts=True)


def test_the_selection_key_changes_with_the_code_that_makes_the_selection(user_project, monkeypatch):
    from splitpack.compiler import pipeline

    settings = _settings_for(user_project)
    before = pipeline.selection_key(settings)
    assert pipeline.selection_key(settings) == before
    edited = user_project / "edited_selection.py"
    edited.write_text("# another selection\\n")
    import splitpack.compiler.selection as selection

    monkeypatch.setattr(selection, "__file__", str(edited))
    assert pipeline.selection_key(settings) != before


def test_the_work_folder_outlives_the_sampling_limits_and_the_selection_does_not(user_project):
    """Which cells are sampled keys the selection, not the cells: a second compile with another
    --budget or --sample-seconds reuses every trained cell and makes its selection anew."""
    from splitpack.compiler import pipeline

    settings = _settings_for(user_project)
    for change in ({"budget": 9}, {"sample_seconds": 60.0}, {"sample_seconds": 0.0}):
        other = settings.model_copy(update=change)
        assert other.fingerprint() == settings.fingerprint()
        assert pipeline.selection_key(other) != pipeline.selection_key(settings)


def test_sampling_charges_each_cell_its_whole_recorded_time(user_project):
    """The compile's sampling is charged each cell's wall_seconds (features, training and
    evaluation), estimated from its cut's work: a fake trainer whose cuts take 10 s or 100 s."""
    from types import SimpleNamespace

    from splitpack.compiler import pipeline
    from splitpack.predictors.accuracy import CellFeatures

    cuts = {f"cut{j}": SimpleNamespace(tail_flops=10**6 * (4 - j), bytes_per_sample=64) for j in range(4)}
    candidates = [CellFeatures(f"cut{j}", (j + 0.5) / 4, 256 / r, 8, r, f"r{r}") for j in range(4)
                  for r in (4, 16, 64, 256, 1024)]
    calls = []

    class FakeTrainer:
        def __init__(self):
            self.cuts = cuts

        def cell(self, cut, codec, *, epochs, keep_artifacts):
            calls.append((cut, codec))
            ratio = int(codec[1:])
            return {"accuracy": 90.0 - 10 * math.log2(ratio) / 10 * int(cut[3:]), "train_seconds": 1.0,
                    "wall_seconds": 100.0 if cut == "cut0" else 10.0}

    settings = _settings_for(user_project, budget=12, sample_seconds=150.0)
    result = pipeline.sample_cells(settings, FakeTrainer(), candidates, 90.0)
    walls = [100.0 if c.cut == "cut0" else 10.0 for c in result.order]
    assert result.seconds == pytest.approx(sum(walls)) and result.seconds <= 150.0
    assert result.stopped == "seconds" and len(result.order) < 12
    # a limit of 0 is none: the budget alone counts
    unlimited = pipeline.sample_cells(settings.model_copy(update={"sample_seconds": 0.0}), FakeTrainer(),
                                      candidates, 90.0)
    assert len(unlimited.order) == 12 and unlimited.stopped == "budget"
