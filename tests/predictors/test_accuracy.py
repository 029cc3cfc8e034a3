"""The transferred accuracy predictor on synthetic knee curves with known shifts, and the replay."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from splitpack.bench.replay import replay_grid, validate_grid
from splitpack.errors import InvalidConfigError
from splitpack.predictors.accuracy import PREDICTOR_FORMAT, AccuracyPredictor, CellFeatures, fit_predictor, knee_ratio
from splitpack.predictors.sampling import TrainingCost, sample_and_fit, training_work

BASELINE = 98.0
RATIOS = [4 * 2**i for i in range(12)]  # 4x .. 8192x: the grid steps


def _accuracy(cut_bytes: float, ratio: float, knee_bytes: float) -> float:
    """Flat at the baseline, then a cliff once the codes are smaller than ``knee_bytes``."""
    u = math.log2(cut_bytes / ratio)
    return BASELINE - 88.0 / (1.0 + math.exp((u - math.log2(knee_bytes)) / 0.45))


def _family(shifts: list[float]) -> tuple[list[CellFeatures], dict[CellFeatures, float]]:
    """Eight cuts; cut j needs 2**shift_j times the source's 24 bytes of codes before its cliff."""
    cells, truth = [], {}
    for j, shift in enumerate(shifts):
        cut_bytes = 16384 / 2 ** (j // 2)
        for ratio in RATIOS:
            cell = CellFeatures(f"cut{j}", (j + 0.5) / len(shifts), cut_bytes / ratio, 8, ratio, f"r{ratio}")
            cells.append(cell)
            truth[cell] = _accuracy(cut_bytes, ratio, 24.0 * 2**shift)
    return cells, truth


def _knee(cells, values, cut):
    mine = [c for c in cells if c.cut == cut]
    return knee_ratio([c.compression_ratio for c in mine], [values[c] for c in mine], BASELINE, 1.0)


@pytest.mark.parametrize("shifts", [
    [0.0, 0.5, 1.0, 1.2, 1.5, 2.0, 2.4, 3.0],  # later cuts need more bytes
    [2.0, 1.0, 0.0, -0.5, -1.0, -1.5, -2.0, -2.5],  # later cuts need fewer
])
def test_transfer_recovers_every_knee_within_one_step(shifts):
    cells, truth = _family(shifts)
    budget = 20  # of 96 cells: 4.8x less training than the whole grid (a first and a knee sample per cut)
    result = sample_and_fit(cells, budget, lambda cell: truth[cell], BASELINE)
    assert len(result.order) == budget
    predicted = {c: p.accuracy for c, p in zip(cells, result.predictor.predict(cells))}
    for j in range(len(shifts)):
        cut = f"cut{j}"
        true_knee, guessed_knee = _knee(cells, truth, cut), _knee(cells, predicted, cut)
        assert abs(RATIOS.index(true_knee) - RATIOS.index(guessed_knee)) <= 1, (cut, true_knee, guessed_knee)


def _projections(cuts: int, accuracy) -> tuple[list[CellFeatures], dict[CellFeatures, float]]:
    """Cells keeping 1 to 1/16 of the channels at stride 1, 2 or 4 (8 bits) at ``cuts`` cuts
    spread over the depth; ``accuracy(position, f, s)`` is each one's true accuracy."""
    cells, truth = [], {}
    for j in range(cuts):
        position = (j + 0.5) / cuts
        for f in (1, 1 / 2, 1 / 4, 1 / 8, 1 / 16):
            for s in (1, 2, 4):
                cell = CellFeatures(f"cut{j}", position, 1024 * f / s**2, 8, 4 * s**2 / f, f"c{f}s{s}",
                                    channel_fraction=f, stride=s)
                cells.append(cell)
                truth[cell] = accuracy(position, f, s)
    return cells, truth


def test_the_stride_cost_learned_over_depth_transfers_to_the_cells_not_trained():
    """Projections at six cuts whose stride costs 6x at the first and 1x at the last (as on the
    CIFAR ResNet-20's stem and stage 3), two cells trained a cut: the fewest channels at
    stride 1, and a quarter of them at stride 4. A stride cost shared by every depth misses
    the other 78 cells by 12 points on average (73 at worst); the depth trend learns it."""
    baseline, floor = 90.0, 15.0

    def accuracy(position, f, s):
        alpha_s = 2.4 * math.exp(-2.0 * (position - 0.5))
        z = 6.0 + 1.2 * math.log2(f) - alpha_s * math.log2(s)
        return floor + (baseline - floor) / (1 + math.exp(-z))

    cells, truth = _projections(6, accuracy)
    trained = [c for c in cells if (c.fraction, c.stride) in ((1 / 16, 1), (1 / 4, 4))]
    predictor = fit_predictor(baseline, [(c, truth[c]) for c in trained])
    rest = [c for c in cells if c not in trained]
    errors = [abs(p.accuracy - truth[c]) for c, p in zip(rest, predictor.predict(rest))]
    assert predictor.params["shared"]["rho1"] < -1.0  # the truth's: -2
    assert np.mean(errors) < 4.0, np.mean(errors)


def test_a_floor_that_rises_with_depth_is_learned_from_the_probed_cuts():
    """Eight cuts whose floor rises from 10 % to 60 % of a 90 % baseline (as the CIFAR
    ResNet-20's collapsed cells do from the stem to stage 3); trained: every cell at the even
    cuts. The odd cuts' cells more than 20 points below the baseline are predicted from the
    floor's depth trend (0.7 points off on average; one floor for every depth: 4.0)."""
    baseline = 90.0

    def accuracy(position, f, s):
        floor = (0.10 + 0.50 * position) * baseline
        z = 5.0 + 1.2 * math.log2(f) - 1.2 * math.log2(s)
        return floor + (baseline - floor) / (1 + math.exp(-z))

    cells, truth = _projections(8, accuracy)
    trained = [c for c in cells if int(c.cut[3:]) % 2 == 0]
    predictor = fit_predictor(baseline, [(c, truth[c]) for c in trained])
    assert predictor.params["shared"]["floor1"] > 0.3  # the truth's: 0.5
    low = [c for c in cells if c not in trained and truth[c] < baseline - 20]
    errors = [abs(p.accuracy - truth[c]) for c, p in zip(low, predictor.predict(low))]
    assert low and np.mean(errors) < 3.0, np.mean(errors)


def test_predictor_json_round_trip_and_version():
    cells, truth = _family([0.0] * 8)
    result = sample_and_fit(cells, 8, lambda cell: truth[cell], BASELINE)
    restored = AccuracyPredictor.from_json(result.predictor.to_json())
    before = result.predictor.predict(cells)
    after = restored.predict(cells)
    np.testing.assert_allclose([p.accuracy for p in before], [p.accuracy for p in after], atol=1e-9)
    np.testing.assert_allclose([p.std for p in before], [p.std for p in after], atol=1e-9)
    with pytest.raises(InvalidConfigError, match="format 'splitpack-accuracy-predictor/9'"):
        AccuracyPredictor.from_json(result.predictor.to_json().replace(PREDICTOR_FORMAT, "splitpack-accuracy-predictor/9"))
    with pytest.raises(InvalidConfigError, match="not valid JSON"):
        AccuracyPredictor.from_json("{")
    saved = json.loads(result.predictor.to_json())
    del saved["params"]["shared"]["floor1"]
    with pytest.raises(InvalidConfigError, match="shared parameters .* exactly"):
        AccuracyPredictor.from_json(json.dumps(saved))


def _seconds_of(cell: CellFeatures) -> float:
    """A cut's training seconds, as the ground truths show them: dearer the earlier the cut."""
    return 40.0 / (1 + int(cell.cut[3:]))


def test_a_time_budget_is_kept_and_the_probes_stop_at_a_third_of_it():
    cells, truth = _family([0.0, 0.5, 1.0, 1.2, 1.5, 2.0, 2.4, 3.0])
    seconds = 180.0
    cost = TrainingCost(work=lambda c: training_work(10**6 / (1 + int(c.cut[3:])), 0), seconds=_seconds_of)
    result = sample_and_fit(cells, 20, lambda cell: truth[cell], BASELINE, cost=cost, seconds=seconds)
    spent = [_seconds_of(c) for c in result.order]
    assert result.stopped == "seconds" and len(result.order) < 20
    assert result.seconds == pytest.approx(sum(spent)) and result.seconds <= seconds
    assert seconds - result.seconds < min(_seconds_of(c) for c in cells)  # nothing that fitted was left
    # the probes (most compressed cells, one per cut, first): no probe started once a third of
    # the time was spent
    probes = [c for c in result.order if c.code_bytes == min(x.code_bytes for x in cells if x.cut == c.cut)]
    assert result.order[:len(probes)] == probes and 2 <= len(probes) < 7
    assert sum(_seconds_of(c) for c in probes[:-1]) < seconds / 3
    # without a time limit only the budget counts; without a cost nothing is charged
    unlimited = sample_and_fit(cells, 20, lambda cell: truth[cell], BASELINE, cost=cost)
    assert len(unlimited.order) == 20 and unlimited.stopped == "budget"
    assert unlimited.seconds == pytest.approx(sum(_seconds_of(c) for c in unlimited.order))
    assert unlimited.seconds > seconds
    plain = sample_and_fit(cells, 20, lambda cell: truth[cell], BASELINE)
    assert plain.order[0].cut == "cut0" and plain.seconds == 0


def test_a_probe_dearer_than_every_cut_trained_is_not_skipped_on_its_extrapolation():
    """The first probe (cut0) takes 5 s; cut7, of 40 times its work (extrapolated at 200 s, more
    than the 120 s left), is probed next anyway: extrapolations from cheap cuts mislead."""
    cells, truth = _family([0.0] * 8)
    took = lambda c: 40.0 if c.cut == "cut7" else 5.0  # noqa: E731
    cost = TrainingCost(work=lambda c: 40.0 if c.cut == "cut7" else 1.0, seconds=took)
    result = sample_and_fit(cells, 8, lambda cell: truth[cell], BASELINE, cost=cost, seconds=125.0)
    assert [c.cut for c in result.order[:2]] == ["cut0", "cut7"]
    assert result.seconds <= 125.0  # rule 3 keeps to what is left


@pytest.mark.parametrize("seconds, with_cost, message", [
    (0, True, r"sampling seconds 0 is not above 0; allowed: a number of seconds above 0, or None"),
    (-5.0, True, r"sampling seconds -5.0 is not above 0"),
    (30, False, r"sampling seconds 30 given without a training cost.*give a TrainingCost too"),
])
def test_bad_time_budgets(seconds, with_cost, message):
    cells, truth = _family([0.0] * 8)
    cost = TrainingCost(work=lambda c: 1.0, seconds=lambda c: 1.0) if with_cost else None
    with pytest.raises(InvalidConfigError, match=message):
        sample_and_fit(cells, 8, lambda cell: truth[cell], BASELINE, cost=cost, seconds=seconds)


def test_cells_recorded_at_zero_seconds_are_sampled_without_warnings():
    cells, truth = _family([0.0, 0.5, 1.0, 1.2, 1.5, 2.0, 2.4, 3.0])
    cost = TrainingCost(work=lambda c: 1.0, seconds=lambda c: 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = sample_and_fit(cells, 12, lambda cell: truth[cell], BASELINE, cost=cost, seconds=10.0)
    assert len(result.order) == 12 and result.seconds == 0.0
    assert len({c.cut for c in result.order}) >= 6  # spread over the cuts, not taken in list order


def test_bad_baselines_and_budgets():
    with pytest.raises(InvalidConfigError, match="baseline accuracy 120"):
        fit_predictor(120.0, [])
    cells, truth = _family([0.0] * 8)
    with pytest.raises(InvalidConfigError, match="budget 0 is too small"):
        sample_and_fit(cells, 0, lambda cell: truth[cell], BASELINE)
    with pytest.raises(InvalidConfigError, match="exceeds the 96 candidate cells"):
        sample_and_fit(cells, 200, lambda cell: truth[cell], BASELINE)


def test_priors_alone_keep_the_lossless_code_and_lose_the_smallest():
    """With nothing measured, 8 bits of every channel is near the baseline and the most
    compressed cell is far below it: the priors say what every grid shows."""
    cells, _ = _family([0.0] * 8)
    predictor = fit_predictor(BASELINE, [])
    first, last = predictor.predict([cells[0], cells[11]])
    assert first.accuracy > BASELINE - 1.0
    assert last.accuracy < BASELINE - 20.0


def test_measured_cells_are_answered_with_their_measurement():
    cells, truth = _family([0.0] * 8)
    predictor = fit_predictor(BASELINE, [(cells[5], 61.0), (cells[17], truth[cells[17]])])
    assert predictor.predict([cells[5]])[0].accuracy == 61.0
    predictor.observe(cells[5], 63.0)
    assert predictor.predict([cells[5]])[0].accuracy == 63.0
    assert sum(1 for o in predictor.observations if o["codec"] == cells[5].codec and o["cut"] == cells[5].cut) == 1


def _grid(shifts):
    cells, truth = _family(shifts)
    grid_cells = [
        {"cut": c.cut, "codec": c.codec, "cut_bytes": c.code_bytes * c.compression_ratio,
         "cut_position": c.cut_position, "bits": 8, "compression_ratio": c.compression_ratio,
         "payload_bytes": int(c.code_bytes) + 60, "accuracy": truth[c], "train_examples": 1000,
         "train_seconds": 2.0 * (8 - int(c.cut[3:]))}
        for c in cells
    ]
    cuts = [{"label": f"cut{j}", "head_flops": 10**6 * (j + 1), "tail_flops": 10**6 * (8 - j),
             "bytes_per_sample": 16384 / 2 ** (j // 2)} for j in range(8)]
    return {"baseline_accuracy": BASELINE, "space": {"cells": 480}, "cuts": cuts, "cells": grid_cells,
            "input_shape": [1, 16, 16], "num_classes": 10}


def test_replay_reports_metrics_and_beats_baselines():
    grid = _grid([0.0, 0.5, 1.0, 1.2, 1.5, 2.0, 2.4, 3.0])
    report = replay_grid(grid, 20)
    assert report["cost_ratio"] == pytest.approx(480 * 1000 / (20 * 1000))
    # in seconds: each trained cell its own, against the space at the mean learned cell's
    seconds = {(c["cut"], c["codec"]): c["train_seconds"] for c in grid["cells"]}
    assert report["cost_seconds"] == pytest.approx(sum(seconds[(t["cut"], t["codec"])] for t in report["trained"]))
    assert report["cost_ratio_seconds"] == pytest.approx(480 * np.mean(list(seconds.values())) / report["cost_seconds"])
    assert report["sampling_stopped"] == "budget" and report["sample_seconds_limit"] == 480
    assert report["space_cost_estimated"] is True
    assert report["knee_error_steps_max"] <= 1
    assert {b["method"] for b in report["baselines"]} == {"binary_search", "random", "per_cut_no_transfer"}
    for baseline in report["baselines"]:
        assert baseline["trained_cells"] <= 20
        assert report["mae"] < baseline["mae"], baseline["method"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda g: g.update(cells=g["cells"][:20]), r"too few for a budget of 12"),
        (lambda g: g["cells"][5].update(baseline_accuracy=90.0), r"must share one baseline"),
        (lambda g: g["cells"][5].update(cut_bytes=1.0), r"disagree on its size or position"),
        (lambda g: g.pop("space"), r"grid has no 'space'"),
    ],
)
def test_bad_grids(edit, message):
    grid = _grid([0.0] * 8)
    edit(grid)
    with pytest.raises(InvalidConfigError, match=message):
        validate_grid(grid, 12)


def test_a_replay_in_seconds_needs_the_seconds_and_the_cuts_work():
    grid = _grid([0.0] * 8)
    del grid["cells"][3]["train_seconds"]
    with pytest.raises(InvalidConfigError, match=r"grid cuts \['cut0'\] have cells without train_seconds.*"
                                                 r"--sample-seconds 0"):
        replay_grid(grid, 12)
    flopless = _grid([0.0] * 8)
    del flopless["cuts"][2]["bytes_per_sample"]
    with pytest.raises(InvalidConfigError, match=r"grid cuts \['cut2'\] have no tail_flops or bytes_per_sample"):
        replay_grid(flopless, 12)
    assert replay_grid(grid, 12, seconds=None)["sampling_stopped"] == "budget"  # cells only
    limited = replay_grid(_grid([0.0] * 8), 12, seconds=40)
    assert limited["sampling_stopped"] == "seconds" and limited["cost_seconds"] <= 40


def test_bench_predictor_cli_writes_the_report_and_the_per_cut_plot(tmp_path, capsys):
    from splitpack.cli import main

    grid_path = tmp_path / "grid.json"
    grid = _grid([0.0, 0.5, 1.0, 1.2, 1.5, 2.0, 2.4, 3.0])
    grid["test_examples"] = 500
    grid_path.write_text(json.dumps(grid))
    out, plot = tmp_path / "pred.json", tmp_path / "pred.png"
    assert main(["bench", "predictor", "--grid", str(grid_path), "--budget", "20", "--out", str(out),
                 "--plot", str(plot)]) == 0
    report = json.loads(out.read_text())
    assert plot.stat().st_size > 10_000
    # each cell costs its training plus one evaluation of the test set, in the ratio too
    assert report["cost_examples"] == 20 * (1000 + 500)
    assert report["cost_ratio"] == pytest.approx(480 / 20)
    assert report["cost_ratio_grid"] == pytest.approx(96 / 20)
    assert 0.0 <= report["within_one_sigma"] <= 1.0
    assert report["plan_settings"] == 25 * 5  # 25 bandwidths x 5 device slowdowns
    assert set(report["curves"]) == {f"cut{j}" for j in range(8)}
    assert "against the measured grid" in capsys.readouterr().out
    written = out.read_bytes()
    assert main(["bench", "predictor", "--grid", str(grid_path), "--out", str(out), "--device-slowdowns", "0,3"]) == 2
    assert "--device-slowdowns '0,3' is malformed" in capsys.readouterr().err
    assert out.read_bytes() == written
