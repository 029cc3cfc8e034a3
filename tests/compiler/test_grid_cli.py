"""`splitpack bench grid --quick` (the CI smoke form of the grid benchmark) and its resume."""

from __future__ import annotations

import json

import pytest

from splitpack.cli import main
from splitpack.errors import InvalidConfigError


@pytest.mark.slow
def test_quick_grid_writes_every_field_and_resumes(digits_weights, tmp_path, capsys, monkeypatch):
    out = tmp_path / "grid.json"
    args = ["bench", "grid", "splitpack.models:digits_cnn", "--weights", str(digits_weights), "--data", "digits",
            "--quick", "--out", str(out), "--plot", str(tmp_path / "grid.png"), "--no-progress"]
    assert main(args) == 0
    grid = json.loads(out.read_text())
    assert 90 < grid["baseline_accuracy"] <= 100
    assert grid["space"]["cuts"] == 22 and grid["space"]["cells"] == sum(grid["space"]["codecs_per_cut"])
    # first, middle and last cut x (q8 + first, middle and last unit, learned and fine-tuned) x 2 codings
    assert len(grid["cells"]) == 3 * 7 * 2
    assert {(c["method"], c["coding"]) for c in grid["cells"]} == {
        (method, coding) for method in ("calibrated", "learned", "finetuned") for coding in ("bitpack", "entropy")}
    for cell in grid["cells"]:
        assert {"cut", "codec", "method", "coding", "compression_ratio", "payload_bytes", "payload_bytes_p95",
                "accuracy", "train_seconds", "train_examples", "tail_seconds"} <= set(cell)
        assert cell["payload_bytes"] > 0 and cell["payload_bytes_p95"] >= 0
        assert (cell["train_examples"] > 0) == (cell["method"] != "calibrated")
        assert (cell["tail_seconds"] > 0) == (cell["method"] == "finetuned")
    by_key = {(c["cut"], c["codec"], c["coding"]): c for c in grid["cells"]}
    for (cut, codec, coding), cell in by_key.items():
        if coding == "entropy":  # one unit measured twice: same accuracy, its own bytes
            packed = by_key[(cut, codec, "bitpack")]
            assert cell["accuracy"] == packed["accuracy"] and cell["packed_payload_bytes"] == packed["payload_bytes"]
    baselines = grid["input_baselines"]
    assert {b["format"] for b in baselines} >= {"jpeg", "png"}
    for baseline in baselines:
        assert {"format", "quality", "payload_bytes", "accuracy"} <= set(baseline)
        assert baseline["payload_bytes"] > 0 and 0 <= baseline["accuracy"] <= 100
    jpeg = sorted((b["quality"], b["payload_bytes"]) for b in baselines if b["format"] == "jpeg")
    assert [size for _, size in jpeg] == sorted(size for _, size in jpeg)  # higher quality, more bytes
    assert (tmp_path / "grid.png").stat().st_size > 0
    capsys.readouterr()
    assert main(args) == 0  # the same settings again: every cell comes from the file
    assert "resuming" in capsys.readouterr().out
    assert json.loads(out.read_text())["cells"] == grid["cells"]
    # a resumed run interrupted at its last cut keeps every cell it had, the later cuts' too
    cuts = [cut["label"] for cut in grid["cuts"]]
    redo = (cuts[0], cuts[-1])
    partial = dict(grid, cells=[c for c in grid["cells"] if not (c["cut"] in redo and c["method"] == "learned")])
    out.write_text(json.dumps(partial))
    from splitpack.compiler import grid as grid_module

    measure = grid_module.measure_cell

    def interrupted_at_the_last_cut(model, features, *args, **kwargs):
        if features.cut.label == cuts[-1]:
            raise KeyboardInterrupt
        return measure(model, features, *args, **kwargs)

    monkeypatch.setattr(grid_module, "measure_cell", interrupted_at_the_last_cut)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    key = lambda c: (c["cut"], c["codec"], c["coding"])  # noqa: E731
    kept = set(map(key, json.loads(out.read_text())["cells"]))
    assert set(map(key, partial["cells"])) <= kept  # the middle cut's resumed cells were not dropped
    assert {k for k in map(key, grid["cells"]) if k[0] == cuts[0]} <= kept  # the first cut re-measured


@pytest.mark.parametrize(
    "codecs, methods, message",
    [
        ("ladder:x", "learned", "ladder:N"),
        ("c4s1b3", "learned", "3 bits is not supported"),
        ("ladder", "learned,pca", r"--methods 'learned,pca': 'pca' given; allowed: a comma-separated list of "
                                  r"calibrated, learned, finetuned"),
        ("ladder", "", r"--methods '': nothing given"),
    ],
)
def test_bad_codec_options(codecs, methods, message):
    from splitpack.cli.bench import _codec_chooser

    with pytest.raises(InvalidConfigError, match=message):
        _codec_chooser(codecs, methods)


def test_grid_plan_puts_each_fine_tuned_unit_after_its_own():
    from splitpack.cli.bench import _codec_chooser

    plan = [codec.name for codec in _codec_chooser("c4s1b8,c2s2b4", "calibrated,learned,finetuned")(None)]
    assert plan == ["q8", "q6", "q4", "q2", "q1", "c4s1b8", "c4s1b8t", "c2s2b4", "c2s2b4t"]
    assert [c.name for c in _codec_chooser("c4s1b8", "finetuned")(None)] == ["c4s1b8", "c4s1b8t"]
