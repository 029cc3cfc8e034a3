"""`splitpack bench grid --quick` (the CI smoke form of the grid benchmark) and its resume."""

from __future__ import annotations

import json

import pytest

from splitpack.cli import main
from splitpack.errors import InvalidConfigError


@pytest.mark.slow
def test_quick_grid_writes_every_field_and_resumes(digits_weights, tmp_path, capsys):
    out = tmp_path / "grid.json"
    args = ["bench", "grid", "splitpack.models:digits_cnn", "--weights", str(digits_weights), "--data", "digits",
            "--quick", "--out", str(out), "--plot", str(tmp_path / "grid.png"), "--no-progress"]
    assert main(args) == 0
    grid = json.loads(out.read_text())
    assert 90 < grid["baseline_accuracy"] <= 100
    assert grid["space"]["cuts"] == 22 and grid["space"]["cells"] == sum(grid["space"]["codecs_per_cut"])
    assert len(grid["cells"]) == 9  # first, middle and last cut x first, middle and last codec
    for cell in grid["cells"]:
        assert {"cut", "codec", "compression_ratio", "payload_bytes", "accuracy", "train_seconds",
                "train_examples"} <= set(cell)
        assert cell["train_examples"] > 0 and cell["payload_bytes"] > 0
    assert (tmp_path / "grid.png").stat().st_size > 0
    capsys.readouterr()
    assert main(args) == 0  # the same settings again: every cell comes from the file
    assert "resuming" in capsys.readouterr().out
    assert json.loads(out.read_text())["cells"] == grid["cells"]


@pytest.mark.parametrize("codecs, message", [("ladder:x", "ladder:N"), ("c4s1b3", "3 bits is not supported")])
def test_bad_codec_options(codecs, message):
    from splitpack.cli import _codec_chooser

    with pytest.raises(InvalidConfigError, match=message):
        _codec_chooser(codecs)
