"""Replay sampling and prediction against a measured grid (``splitpack bench predictor``).

Each method may "train" cells of the grid up to a budget; a trained cell costs exactly its
recorded ``train_examples`` (and, for the time limit the compile's sampling keeps and the
seconds column, its recorded ``train_seconds``). Methods: the transferred predictor
(``predictors.sampling``), and at the same budget per-cut binary search for the knee, uniform
random sampling with one global model, and per-cut fitting without transfer. Every method is scored on the cells it did not
train: error of predicted accuracy, knee error in grid steps, and the accuracy lost by
planning with its predictions instead of the measured grid.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np

from splitpack.errors import InvalidConfigError
from splitpack.formats.variants import VariantProfile
from splitpack.planning.latency import Conditions, plan_latency_ms
from splitpack.predictors.accuracy import CellFeatures, fit_predictor, knee_ratio
from splitpack.predictors.sampling import DEFAULT_SAMPLE_SECONDS, TrainingCost, sample_and_fit, training_work

__all__ = ["validate_grid", "replay_grid", "bitpacked_cells", "learned_cells", "cell_cost", "LatencySetting"]

Key = tuple[str, str]  # (cut label, codec)


class LatencySetting:
    """The compute and network assumptions used to turn cells into plans (stated in pred.json)."""

    def __init__(self, device_gflops: float = 2.0, edge_gflops: float = 50.0, rtt_ms: float = 10.0,
                 slowdowns: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0)):
        self.device_gflops, self.edge_gflops, self.rtt_ms = device_gflops, edge_gflops, rtt_ms
        self.slowdowns = tuple(slowdowns)

    def as_dict(self) -> dict:
        return {"device_gflops": self.device_gflops, "edge_gflops": self.edge_gflops, "rtt_ms": self.rtt_ms,
                "device_slowdowns": list(self.slowdowns)}


def validate_grid(grid: dict, budget: int) -> None:
    """Raise ``InvalidConfigError`` when ``grid`` cannot be replayed at ``budget``."""
    for key in ("baseline_accuracy", "space", "cells", "cuts"):
        if key not in grid:
            raise InvalidConfigError(f"grid has no {key!r}; produce it with `splitpack bench grid`")
    cells = bitpacked_cells(grid)
    if budget > len(cells) // 2:
        raise InvalidConfigError(
            f"grid has {len(cells)} cells, too few for a budget of {budget}: a replay needs at least twice "
            "the budget to have untrained cells to score; lower --budget or measure more cells"
        )
    seen: dict[Key, float] = {}
    per_cut: dict[str, tuple] = {}
    for cell in cells:
        baseline = cell.get("baseline_accuracy", grid["baseline_accuracy"])
        if abs(baseline - grid["baseline_accuracy"]) > 1e-9:
            raise InvalidConfigError(
                f"cell {cell['cut']} {cell['codec']} has baseline {baseline}, the grid {grid['baseline_accuracy']}: "
                "cells of one grid must share one baseline (were grids of different models merged?)"
            )
        key = (cell["cut"], cell["codec"])
        if key in seen and seen[key] != cell["accuracy"]:
            raise InvalidConfigError(f"cell {key} appears twice with different accuracies")
        seen[key] = cell["accuracy"]
        identity = (cell["cut_bytes"], cell["cut_position"])
        if per_cut.setdefault(cell["cut"], identity) != identity:
            raise InvalidConfigError(f"cells of cut {cell['cut']!r} disagree on its size or position")


def _knee_steps(cells: list[dict], predicted: dict[Key, float], baseline: float, tolerance: float) -> dict[str, int]:
    steps = {}
    for cut in dict.fromkeys(c["cut"] for c in cells):
        mine = [c for c in cells if c["cut"] == cut]
        ratios = sorted({c["compression_ratio"] for c in mine})

        def best_at(values: dict[Key, float]) -> list[float]:
            return [max(values[(c["cut"], c["codec"])] for c in mine if c["compression_ratio"] == r) for r in ratios]

        measured = {(c["cut"], c["codec"]): c["accuracy"] for c in mine}
        true_knee = knee_ratio(ratios, best_at(measured), baseline, tolerance)
        predicted_knee = knee_ratio(ratios, best_at(predicted), baseline, tolerance)
        steps[cut] = abs(ratios.index(true_knee) - ratios.index(predicted_knee))
    return steps


def _plans(grid: dict, predicted: dict[Key, float], setting: LatencySetting, max_drop: float,
           bandwidths: np.ndarray) -> dict:
    """Accuracy lost at each bandwidth and device slowdown by planning with predictions instead
    of measurements."""
    losses, violations = [], 0
    for slowdown in setting.slowdowns:
        lost, violated = _plans_at(grid, predicted, setting, setting.device_gflops / slowdown, max_drop, bandwidths)
        losses += lost
        violations += violated
    return {"plan_accuracy_loss_max": max(losses), "plan_accuracy_loss_mean": float(np.mean(losses)),
            "plan_floor_violations": violations, "plan_settings": len(losses)}


def _plans_at(grid: dict, predicted: dict[Key, float], setting: LatencySetting, device_gflops: float,
              max_drop: float, bandwidths: np.ndarray) -> tuple[list[float], int]:
    baseline = grid["baseline_accuracy"]
    floor = baseline - max_drop
    cuts = {cut["label"]: cut for cut in grid["cuts"]}
    total_flops = next(iter(cuts.values()))["head_flops"] + next(iter(cuts.values()))["tail_flops"]
    profiles, measured, guessed = [], [], []
    local = VariantProfile("local", "local", total_flops / device_gflops / 1e6, 0, 0, 0, 0, 0, baseline, 0)
    profiles.append(local), measured.append(baseline), guessed.append(baseline)
    if "input_shape" in grid:
        input_bytes = math.prod(grid["input_shape"]) + 60
        profiles.append(VariantProfile("edge", "edge", 0, 0, 0, total_flops / setting.edge_gflops / 1e6,
                                       input_bytes, 4 * grid.get("num_classes", 10), baseline, 0))
        measured.append(baseline), guessed.append(baseline)
    for cell in learned_cells(grid):
        cut = cuts[cell["cut"]]
        profiles.append(VariantProfile(
            f"{cell['cut']}:{cell['codec']}", "split", cut["head_flops"] / device_gflops / 1e6, 0, 0,
            cut["tail_flops"] / setting.edge_gflops / 1e6, cell["payload_bytes"], 4 * grid.get("num_classes", 10),
            cell["accuracy"], 0, cut=cell["cut"], compression_ratio=cell["compression_ratio"],
        ))
        measured.append(cell["accuracy"])
        guessed.append(predicted[(cell["cut"], cell["codec"])])
    measured_arr, guessed_arr = np.array(measured), np.array(guessed)
    losses, violations = [], 0
    for bandwidth in bandwidths:
        conditions = Conditions(uplink_mbps=float(bandwidth), rtt_ms=setting.rtt_ms)
        latency = np.array([plan_latency_ms(p, conditions) for p in profiles])
        best_true = int(np.argmin(np.where(measured_arr >= floor - 1e-9, latency, np.inf)))
        best_guess = int(np.argmin(np.where(guessed_arr >= floor - 1e-9, latency, np.inf)))
        losses.append(float(measured_arr[best_true] - measured_arr[best_guess]))
        violations += int(measured_arr[best_guess] < floor - 1e-9)
    return losses, violations


def _score(grid: dict, name: str, predicted: dict[Key, float], trained: set[Key], cost: float, *, tolerance: float,
           setting: LatencySetting, max_drop: float, bandwidths: np.ndarray, stds: dict[Key, float] | None = None) -> dict:
    """Errors over the learned cells the method did not measure; knees and plans over every
    learned cell: the compile's candidates (calibrated quantization is measured, when at all, as
    a free signal, and not shipped)."""
    cells = learned_cells(grid)
    floor = grid["baseline_accuracy"] - max_drop
    scored = [c for c in cells if (c["cut"], c["codec"]) not in trained]
    errors = np.array([abs(predicted[(c["cut"], c["codec"])] - c["accuracy"]) for c in scored])
    near = np.array([abs(c["accuracy"] - floor) <= 5.0 for c in scored])
    knee = _knee_steps(cells, predicted, grid["baseline_accuracy"], tolerance)
    report = {
        "method": name,
        "trained_cells": len(trained),
        "cost_examples": cost,
        "cost_seconds": float(sum(c.get("train_seconds", 0.0) for c in cells if (c["cut"], c["codec"]) in trained)),
        "scored_cells": len(scored),
        "mae": float(np.mean(errors)),
        "max_error": float(np.max(errors)),
        "mae_near_floor": float(np.mean(errors[near])) if near.any() else None,
        "near_floor_cells": int(near.sum()),
        "knee_error_steps": knee,
        "knee_error_steps_max": max(knee.values()),
        **_plans(grid, predicted if stds is None else {k: v - stds.get(k, 0.0) for k, v in predicted.items()},
                 setting, max_drop, bandwidths),
    }
    if stds is not None:
        z = errors / np.array([stds[(c["cut"], c["codec"])] for c in scored])
        report["within_one_sigma"] = float(np.mean(z <= 1.0))
    return report


def _features(cell: dict) -> CellFeatures:
    return CellFeatures.of_cell(cell)


def _gp_predict(train_cells: list[dict], all_cells: list[dict], baseline: float, columns: Callable) -> dict[Key, float]:
    """A GP on the given feature columns, fitted to the drops of ``train_cells``."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    x = np.array([columns(c) for c in train_cells])
    y = np.array([baseline - c["accuracy"] for c in train_cells])
    kernel = ConstantKernel(25.0, (1.0, 2500.0)) * RBF(np.ones(x.shape[1]), (0.05, 50.0)) + WhiteKernel(0.1, (1e-3, 4.0))
    with warnings.catch_warnings():  # a length scale at its bound is an answer here, not a fault
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp = GaussianProcessRegressor(kernel=kernel, n_restarts_optimizer=2, random_state=0).fit(x, y)
    drops = gp.predict(np.array([columns(c) for c in all_cells]))
    return {(c["cut"], c["codec"]): float(np.clip(baseline - d, 0, 100)) for c, d in zip(all_cells, drops)}


def _with_measured(predicted: dict[Key, float], trained: list[dict]) -> dict[Key, float]:
    return {**predicted, **{(c["cut"], c["codec"]): c["accuracy"] for c in trained}}


def _per_cut_budget(cuts: list[str], budget: int) -> dict[str, int]:
    return {cut: budget // len(cuts) + (1 if i < budget % len(cuts) else 0) for i, cut in enumerate(cuts)}


def cell_cost(cell: dict, grid: dict) -> float:
    """Examples one cell costs: its training (none for calibrated quantization) plus the
    evaluation of the test set that measures it."""
    return float(cell.get("train_examples", 0)) + float(grid.get("test_examples", 0))


def learned_cells(grid: dict) -> list[dict]:
    """The bit-packed cells of learned units (the compile's candidates)."""
    return [cell for cell in bitpacked_cells(grid) if cell.get("method", "learned") == "learned"]


def bitpacked_cells(grid: dict) -> list[dict]:
    """The grid's cells, once per (cut, codec): a grid measures each unit under every wire
    coding with one accuracy; the replay plans with the bit-packed bytes (grids written before
    codings existed have only those). Fine-tuned cells are left out: the compile trains units
    with the tail frozen, and that is what the predictor predicts."""
    return [cell for cell in grid["cells"] if cell.get("coding", "bitpack") == "bitpack"
            and cell.get("method", "learned") != "finetuned"]


def replay_grid(grid: dict, budget: int, *, tolerance: float = 1.0, max_drop: float = 1.0, seed: int = 0,
                setting: LatencySetting | None = None, seconds: float | None = DEFAULT_SAMPLE_SECONDS) -> dict:
    """Run every method at ``budget`` cells against ``grid`` and score them.

    The transferred predictor samples as the compile does: at most ``budget`` cells and
    ``seconds`` of training (None: no limit), each cell charged its recorded ``train_seconds``
    and estimated beforehand from the work of its cut (``predictors.sampling.training_work``:
    the grid's ``tail_flops`` and cut size). The baselines get as many cells as the transferred
    predictor's examples pay for, whatever their seconds.

    Returns:
        The pred.json document (the transferred predictor's scores at the top level, the
        baselines under ``baselines``, the predictor itself under ``predictor``).
    """
    validate_grid(grid, budget)
    setting = setting or LatencySetting()
    bandwidths = np.logspace(np.log10(0.1), np.log10(100), 25)
    baseline = grid["baseline_accuracy"]
    cells = bitpacked_cells(grid)
    by_features = {_features(c): c for c in cells}
    score = dict(tolerance=tolerance, setting=setting, max_drop=max_drop, bandwidths=bandwidths)
    cuts = list(dict.fromkeys(c["cut"] for c in cells))

    # -- the transferred predictor -----------------------------------------------------------
    used: list[dict] = []

    def lookup(features: CellFeatures) -> float:
        used.append(by_features[features])
        return by_features[features]["accuracy"]

    cut_records = {c["label"]: c for c in grid.get("cuts", [])}
    cost = None
    if seconds is not None:
        unmeasured = sorted({c["cut"] for c in cells if not {"tail_flops", "bytes_per_sample"} <= set(cut_records.get(c["cut"], {}))})
        untimed = sorted({c["cut"] for c in cells if "train_seconds" not in c})
        for cuts_missing, what in ((unmeasured, "no tail_flops or bytes_per_sample in the grid's cuts"),
                                   (untimed, "cells without train_seconds")):
            if cuts_missing:
                raise InvalidConfigError(
                    f"grid cuts {cuts_missing} have {what}, which a replay with a time limit needs; measure the "
                    "grid again with this splitpack, or replay with --sample-seconds 0 (no time limit)")
        cost = TrainingCost(
            work=lambda f: training_work(cut_records[f.cut]["tail_flops"], cut_records[f.cut]["bytes_per_sample"] / 4),
            seconds=lambda f: by_features[f]["train_seconds"])
    result = sample_and_fit(list(by_features), budget, lookup, baseline, tolerance=tolerance, cost=cost,
                            seconds=seconds)
    predictions = result.predictor.predict(list(by_features))
    predicted = _with_measured({(c["cut"], c["codec"]): p.accuracy for c, p in zip(by_features.values(), predictions)}, used)
    stds = {(c["cut"], c["codec"]): 0.0 if c in used else p.std for c, p in zip(by_features.values(), predictions)}
    trained = {(c["cut"], c["codec"]) for c in used}
    cost = float(sum(cell_cost(c, grid) for c in used))
    report = _score(grid, "transfer", predicted, trained, cost, stds=stds, **score)

    # -- baselines at the same cost: as many learned cells as the transfer's examples pay for ----
    learned = learned_cells(grid)
    mean_learned_cost = float(np.mean([cell_cost(c, grid) for c in learned]))
    equal = min(len(learned) // 2, max(budget, int(round(cost / mean_learned_cost))))
    rng = np.random.default_rng(seed)
    random_cells = [learned[i] for i in rng.choice(len(learned), size=equal, replace=False)]
    random_pred = _with_measured(_gp_predict(random_cells, cells, baseline, lambda c: (
        math.log2(c["cut_bytes"] / c["compression_ratio"]), math.log2(c["bits"]), c["cut_position"])), random_cells)

    per_cut_cells: list[dict] = []
    per_cut_pred: dict[Key, float] = {}
    for cut, count in _per_cut_budget(cuts, equal).items():
        mine = sorted((c for c in learned if c["cut"] == cut), key=lambda c: c["compression_ratio"])
        everything = [c for c in cells if c["cut"] == cut]
        picks = [mine[round(i * (len(mine) - 1) / max(1, count - 1))] for i in range(count)] if count else []
        per_cut_cells += picks
        # the same model, fitted on this cut's cells alone: no transfer
        own = fit_predictor(baseline, [(_features(c), c["accuracy"]) for c in picks])
        per_cut_pred.update({(c["cut"], c["codec"]): p.accuracy
                             for c, p in zip(everything, own.predict([_features(c) for c in everything]))})
    per_cut_pred = _with_measured(per_cut_pred, per_cut_cells)

    search_cells: list[dict] = []
    for cut, count in _per_cut_budget(cuts, equal).items():
        mine = sorted((c for c in learned if c["cut"] == cut), key=lambda c: (c["compression_ratio"], -c["bits"]))
        low, high = 0, len(mine) - 1
        for _ in range(count):
            middle = (low + high) // 2
            search_cells.append(mine[middle])
            if baseline - mine[middle]["accuracy"] <= tolerance:
                low = middle
            else:
                high = middle
            if high - low <= 1:
                break
    search_pred = {}
    for cell in cells:  # nearest measured cell of the same cut (in code bytes); baseline where none
        mine = [c for c in search_cells if c["cut"] == cell["cut"]]
        nearest = min(mine, key=lambda c: abs(math.log2(c["compression_ratio"] / cell["compression_ratio"])), default=None)
        search_pred[(cell["cut"], cell["codec"])] = nearest["accuracy"] if nearest else baseline

    baselines = []
    for name, chosen, guess in (("binary_search", search_cells, search_pred), ("random", random_cells, random_pred),
                                ("per_cut_no_transfer", per_cut_cells, per_cut_pred)):
        keys = {(c["cut"], c["codec"]) for c in chosen}
        baselines.append(_score(grid, name, guess, keys, float(sum(cell_cost(c, grid) for c in chosen)), **score))

    space_cells = int(grid["space"]["cells"])
    whole_cost = space_cells * mean_learned_cost
    mean_learned_seconds = float(np.mean([c.get("train_seconds", 0.0) for c in learned]))
    transfer_seconds = report["cost_seconds"]
    grid_cost = float(sum(cell_cost(c, grid) for c in cells))
    return {
        **report,
        "budget_cells": budget,
        "cost_ratio": whole_cost / cost,
        "cost_ratio_grid": grid_cost / cost,
        "sample_seconds_limit": seconds,
        "sampling_stopped": result.stopped,
        "cost_ratio_seconds": space_cells * mean_learned_seconds / transfer_seconds if transfer_seconds else None,
        "cost_examples_free_signals": float(sum(cell_cost(c, grid) for c in used if c.get("method") == "calibrated")),
        "free_signal_cells": len(result.free),
        "space_cells": space_cells,
        "grid_cells": len(cells),
        "space_cost_estimated": len(cells) < space_cells,
        "space_cost_note": (
            f"the grid measured {len(cells)} of the {space_cells} cells of the space; the whole space's cost is "
            f"{space_cells} x the mean trained cell's cost ({mean_learned_cost:.0f} examples: training and its evaluation)"
            if len(cells) < space_cells else "the grid measured the whole space"
        ),
        "baseline_accuracy": baseline,
        "tolerance_points": tolerance,
        "max_accuracy_drop": max_drop,
        "bandwidths_mbps": [float(b) for b in bandwidths],
        "latency_setting": setting.as_dict(),
        "trained": [{"cut": c["cut"], "codec": c["codec"], "method": c.get("method", "learned")} for c in used],
        "baselines": baselines,
        "curves": {  # per learned cell: ratio, measured, predicted, sigma (0 where trained), codec
            cut: [(c["compression_ratio"], c["accuracy"], predicted[(c["cut"], c["codec"])],
                   stds[(c["cut"], c["codec"])], c["codec"]) for c in learned if c["cut"] == cut]
            for cut in cuts
        },
        "predictor": result.predictor.to_json(),
    }
