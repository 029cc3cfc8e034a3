"""`bench selector` on the committed digits grid, with few profiling runs: one candidate per
measured unit however many wire codings the grid measured it with."""

from __future__ import annotations

import json
from pathlib import Path

from splitpack.bench.selector import run_selector_benchmark

ROOT = Path(__file__).resolve().parents[2]
GRID = ROOT / "benchmarks" / "results" / "digits_grid.json"


def test_the_selector_benchmark_runs_on_a_grid_with_one_cell_per_coding(tmp_path: Path) -> None:
    grid = json.loads(GRID.read_text())
    units = {(cell["cut_name"], cell["codec"]) for cell in grid["cells"]}
    assert len(units) < len(grid["cells"])  # the grid measures units once per wire coding
    report = run_selector_benchmark(tmp_path / "selector.json", None, digits_grid_path=GRID,
                                    digits_weights=tmp_path / "absent.pt", repeats=2, warmup=1)
    digits = report["models"]["digits_cnn"]
    assert digits["candidates"] == len(units) + 2  # + local and edge
    assert json.loads((tmp_path / "selector.json").read_text())["models"]["digits_cnn"][
        "candidates"] == digits["candidates"]
