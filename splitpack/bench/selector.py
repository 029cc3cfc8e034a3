"""Benchmark of run-time selection and of the bundled variant set (``splitpack bench selector``).

Per model, candidates (``local``, ``edge`` and split variants, with latencies profiled on this
host by :func:`splitpack.compiler.profile.profile_model`) are scored over an operating range
of uplink bandwidths and device / edge loads, under scenarios that state how much slower the
device and the edge are than this host. Reported: the time of one
:meth:`~splitpack.planning.selector.Selector.select` over 64 candidates; the coverage regret
of the best K = 1..5 bundled split variants (:func:`choose_variant_set`); and latency against
bandwidth for the adaptive bundle (K = 4), the best single static variant, Neurosurgeon-style
selection (best cut per condition, raw float32 cut tensor sent, no compression), local-only and
edge-only. The digits model's accuracies come from a measured grid; the ResNet's are synthetic,
and the JSON says how they were made.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from splitpack.bench.plots import plot_selector
from splitpack.compiler.codec import codec_ladder, compression_ratio, parse_codec
from splitpack.compiler.cuts import find_cuts
from splitpack.compiler.export import load_model
from splitpack.compiler.grid import payload_bytes_of
from splitpack.compiler.profile import profile_model
from splitpack.errors import InvalidConfigError
from splitpack.formats.variants import WIRE_ID_PLACEHOLDER, VariantProfile, split_variant_id
from splitpack.formats.wire import message_bytes
from splitpack.planning.latency import ConditionArrays, Conditions, ProfileArrays, latency_matrix
from splitpack.planning.selector import Constraints, Selector
from splitpack.planning.variant_set import OperatingRange, choose_variant_set
from splitpack.runtimes.profile import host_info

__all__ = ["Scenario", "PHONE", "MICROCONTROLLER", "SCENARIOS", "knee_rule", "measure_decision",
           "evaluate_scenario", "run_selector_benchmark", "format_selector_summary",
           "run_bench_selector_command"]

SELECTOR_FORMAT = "splitpack-bench-selector/1"
MAX_ACCURACY_DROP = 1.0
HEADLINE_K = 4
K_VALUES = (1, 2, 3, 4, 5)
DECISION_CANDIDATES = 64
DECISION_TRIALS = 20_000
LADDER = 12  # codecs per cut for synthetic candidates, as the digits grid used
THREADS = 1  # one core of this host: the unit the slowdowns are stated in


@dataclass(frozen=True)
class Scenario:
    """How the device and the edge compare with one core of this host, and the link."""

    name: str
    device_slowdown: float
    edge_slowdown: float
    rtt_ms: float
    downlink_mbps: float
    note: str


PHONE = Scenario("phone", 8.0, 1.0, 20.0, 20.0,
                 "phone-class device 8x slower than one core of this host; edge = one core of "
                 "this host (edge_speedup 8); rtt 20 ms, downlink 20 Mbit/s")
MICROCONTROLLER = Scenario("microcontroller", 300.0, 1.0, 20.0, 20.0,
                           "microcontroller-class device 300x slower than one core of this host;"
                           " edge = one core of this host (edge_speedup 300); rtt 20 ms")
SCENARIOS = (PHONE, MICROCONTROLLER)  # the first is the headline
STRATEGIES = ("oracle_all_candidates", f"adaptive_k{HEADLINE_K}", "static_best_single",
              "neurosurgeon_no_compression", "local_only", "edge_only")


def _wire_bytes(shape: tuple[int, ...], bits: int, vid: str) -> int:
    return message_bytes(tuple(shape), bits, bundle_id=WIRE_ID_PLACEHOLDER, variant_id=vid)


# -- candidates -------------------------------------------------------------------------------

def _whole_model(model_ms: float, input_shape, classes: int, baseline: float,
                 param_bytes: int) -> list[VariantProfile]:
    """``local`` (whole model on the device) and ``edge`` (the uint8 input uploaded)."""
    return [VariantProfile("local", "local", model_ms, 0.0, 0.0, 0.0, 0, 0, baseline, param_bytes),
            VariantProfile("edge", "edge", 0.0, 0.0, 0.0, model_ms,
                           _wire_bytes((1, *input_shape[1:]), 8, "edge"),
                           _wire_bytes((1, classes), 32, "edge"), baseline, 0)]


def _split(cut, codec, entry: dict, accuracy: float, classes: int) -> VariantProfile:
    vid = split_variant_id(cut.index, codec.name)
    return VariantProfile(vid, "split", entry["head_ms"], entry["encode_ms"] or 0.0,
                          entry["decode_ms"] or 0.0, entry["tail_ms"], payload_bytes_of(cut, codec),
                          _wire_bytes((1, classes), 32, vid), accuracy, cut.head_param_bytes,
                          cut=cut.name, compression_ratio=compression_ratio(cut.shape, codec))


def _neurosurgeon(cuts, profile: dict, whole: list[VariantProfile], classes: int,
                  baseline: float) -> list[VariantProfile]:
    """Every cut uncompressed: the float32 cut tensor is sent, accuracy is the baseline."""
    plans = list(whole)
    for cut in cuts:
        entry, vid = profile["cuts"][cut.label], f"raw{cut.index:02d}"
        plans.append(VariantProfile(vid, "split", entry["head_ms"], 0.0, 0.0, entry["tail_ms"],
                                    _wire_bytes((1, *cut.shape), 32, vid),
                                    _wire_bytes((1, classes), 32, vid), baseline,
                                    cut.head_param_bytes, cut=cut.name))
    return plans


def _ladder(cuts, profile: dict, classes: int, accuracy_of: Callable) -> list[VariantProfile]:
    """Every cut x ``codec_ladder(cut.shape, 12)``, accuracy from ``accuracy_of(cut, codec)``."""
    return [_split(cut, codec, profile["cuts"][cut.label], accuracy_of(cut, codec), classes)
            for cut in cuts if profile["cuts"][cut.label]["codec"] is not None
            for codec in codec_ladder(cut.shape, LADDER)]


def _spread(items: list, count: int) -> list:
    if len(items) <= count:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, count)]


# Used only when no digits grid exists: accuracy drop (points) by compression ratio.
_DEFAULT_KNEE = ((4.0, 0.0), (32.0, 0.5), (64.0, 2.0), (256.0, 5.0), (8192.0, 30.0))


def knee_rule(grid: dict | None) -> tuple[list[tuple[float, float]], str]:
    """(compression ratio, accuracy drop) points of the synthetic rule, and how they were made.

    From a grid: at each measured ratio the median drop over its cells, then a running max so
    that more compression never helps; without one, a fixed table (drop 0.5 at ratio 32).
    """
    if not grid or not grid.get("cells"):
        return list(_DEFAULT_KNEE), "no digits grid: a fixed knee table (drop 0.5 at ratio 32)"
    by_ratio: dict[float, list[float]] = {}
    for cell in grid["cells"]:
        by_ratio.setdefault(round(cell["compression_ratio"], 6), []).append(
            grid["baseline_accuracy"] - cell["accuracy"])
    ratios = sorted(by_ratio)
    drops = np.maximum.accumulate([max(0.0, float(np.median(by_ratio[r]))) for r in ratios])
    return ([(r, float(d)) for r, d in zip(ratios, drops)],
            f"digits grid ({len(grid['cells'])} cells): per compression ratio the median accuracy "
            "drop over its cells, made non-decreasing in the ratio (running max)")


def _synthetic_accuracy(points: list[tuple[float, float]], baseline: float) -> Callable:
    log_ratios, drops = np.log2([p[0] for p in points]), np.array([p[1] for p in points])

    def accuracy_of(cut, codec) -> float:
        drop = np.interp(np.log2(compression_ratio(cut.shape, codec)), log_ratios, drops)
        return float(np.clip(baseline - drop, 0.0, 100.0))

    return accuracy_of


# -- measurements -----------------------------------------------------------------------------

def _operating_range(scenario: Scenario) -> OperatingRange:
    return OperatingRange(rtt_ms=scenario.rtt_ms, downlink_mbps=scenario.downlink_mbps,
                          device_slowdown=scenario.device_slowdown,
                          edge_slowdown=scenario.edge_slowdown)


def measure_decision(candidates: list[VariantProfile], constraints: Constraints,
                     scenario: Scenario, trials: int = DECISION_TRIALS) -> dict:
    """Median and p99 µs of one ``Selector.select`` over random conditions of the range.

    Also timed with the :class:`Conditions` built inside the loop (its validation included),
    as a device does when it turns a fresh bandwidth estimate into conditions.
    """
    selector = Selector(candidates, constraints)
    rng = np.random.default_rng(0)
    uplink, loads = 10 ** rng.uniform(-1.0, 2.0, trials), rng.uniform(1.0, 4.0, (2, trials))
    fields = [(float(u), scenario.downlink_mbps, scenario.rtt_ms, scenario.device_slowdown,
               float(d), scenario.edge_slowdown, float(e)) for u, d, e in zip(uplink, *loads)]
    conditions = [Conditions(*f) for f in fields]
    for c in conditions[:200]:
        selector.select(c)
    bare, built = np.empty(trials), np.empty(trials)
    for i, c in enumerate(conditions):
        start = time.perf_counter_ns()
        selector.select(c)
        bare[i] = time.perf_counter_ns() - start
    for i, f in enumerate(fields):
        start = time.perf_counter_ns()
        selector.select(Conditions(*f))
        built[i] = time.perf_counter_ns() - start
    return {"candidates": len(candidates), "ranked": len(selector.feasible), "trials": trials,
            "decision_us_median": float(np.median(bare) / 1e3),
            "decision_us_p99": float(np.percentile(bare, 99) / 1e3),
            "with_conditions_us_median": float(np.median(built) / 1e3),
            "with_conditions_us_p99": float(np.percentile(built, 99) / 1e3)}


def _strategy_latencies(feasible, neurosurgeon, bundle: list[int], static: int,
                        conditions: ConditionArrays) -> dict[str, np.ndarray]:
    ids = [p.id for p in feasible]
    values = latency_matrix(ProfileArrays.from_profiles(feasible), conditions)
    raw = latency_matrix(ProfileArrays.from_profiles(neurosurgeon), conditions)
    return dict(zip(STRATEGIES, (values.min(axis=1), values[:, bundle].min(axis=1),
                                 values[:, static], raw.min(axis=1),
                                 values[:, ids.index("local")], values[:, ids.index("edge")])))


def evaluate_scenario(candidates: list[VariantProfile], neurosurgeon: list[VariantProfile],
                      constraints: Constraints, scenario: Scenario) -> dict:
    """Coverage regret for K = 1..5 and latency per strategy under ``scenario``."""
    operating_range = _operating_range(scenario)
    coverage = {k: choose_variant_set(candidates, constraints, operating_range, k) for k in K_VALUES}
    feasible = list(Selector(candidates, constraints).feasible)
    ids = [p.id for p in feasible]
    everywhere = operating_range.condition_arrays()
    static = int(latency_matrix(ProfileArrays.from_profiles(feasible), everywhere).mean(axis=0).argmin())
    chosen = coverage[HEADLINE_K]
    bundle = [ids.index(i) for i in (*chosen.always_available_ids, *chosen.variant_ids)]
    at_load_1 = ConditionArrays.grid(
        operating_range.bandwidths_mbps, downlink_mbps=scenario.downlink_mbps,
        rtt_ms=scenario.rtt_ms, device_slowdown=scenario.device_slowdown,
        edge_slowdown=scenario.edge_slowdown)
    by_bandwidth = _strategy_latencies(feasible, neurosurgeon, bundle, static, at_load_1)
    over_range = _strategy_latencies(feasible, neurosurgeon, bundle, static, everywhere)
    bundled = latency_matrix(ProfileArrays.from_profiles([feasible[i] for i in bundle]), at_load_1)
    return {
        "scenario": asdict(scenario), "conditions": int(everywhere.uplink_mbps.size),
        "k": list(K_VALUES),
        "coverage_regret_mean": [coverage[k].coverage_regret_mean for k in K_VALUES],
        "coverage_regret_max": [coverage[k].coverage_regret_max for k in K_VALUES],
        "regret_local_edge_only_mean": chosen.base_regret_mean,
        "regret_local_edge_only_max": chosen.base_regret_max,
        "variant_sets": {str(k): list(coverage[k].variant_ids) for k in K_VALUES},
        "variant_set_method": {str(k): coverage[k].method for k in K_VALUES},
        "static_variant": ids[static],
        "latency_by_bandwidth_load1": {
            "bandwidths_mbps": list(operating_range.bandwidths_mbps),
            "ms": {name: [float(v) for v in row] for name, row in by_bandwidth.items()},
            f"adaptive_k{HEADLINE_K}_choice": [ids[bundle[j]] for j in bundled.argmin(axis=1)],
        },
        "mean_latency_over_range_ms": {name: float(row.mean()) for name, row in over_range.items()},
    }


# -- the two models ---------------------------------------------------------------------------

def _load_grid(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:  # `bench grid` rewrites it after every cell
        raise InvalidConfigError(f"grid {str(path)!r} is not valid JSON ({exc}); if `bench grid` "
                                 "is writing it, run again in a moment") from None


def _profiled(spec: str, shape, weights, repeats: int, warmup: int):
    loaded = load_model(spec, weights=weights, input_shape=shape)
    cuts = find_cuts(loaded.onnx_model, loaded.input_shape)
    profile = profile_model(loaded.onnx_model, loaded.input_shape, cuts, threads=THREADS,
                            repeats=repeats, warmup=warmup, statistic="min")
    param_bytes = max(c.head_param_bytes + c.tail_param_bytes for c in cuts)
    return cuts, profile, param_bytes


def _digits_splits(grid: dict, cuts, profile: dict, classes: int) -> list[VariantProfile]:
    """One candidate per measured (cut, codec) of the grid, with its measured accuracy and its
    bit-packed payload: a grid measures each unit once per wire coding (``coding``, lossless:
    the same accuracy), and the bit-packed cell is the one whose payload this benchmark plans
    with."""
    by_name = {cut.name: cut for cut in cuts}
    unknown = sorted({c["cut_name"] for c in grid["cells"]} - set(by_name))
    if unknown:
        raise InvalidConfigError(f"digits grid cuts {unknown} are not cuts of digits_cnn at "
                                 "1x1x16x16; was the grid measured on another model or shape?")
    return [_split(by_name[cell["cut_name"]], parse_codec(cell["codec"]),
                   profile["cuts"][by_name[cell["cut_name"]].label], cell["accuracy"], classes)
            for cell in grid["cells"] if cell.get("coding", "bitpack") == "bitpack"]


def _model_report(name: str, spec: str, shape, weights, grid: dict | None, repeats: int,
                  warmup: int) -> dict:
    """Profile one model, build its candidates, and evaluate every scenario."""
    classes = 10
    cuts, profile, param_bytes = _profiled(spec, shape, weights, repeats, warmup)
    measured = name == "digits_cnn" and bool(grid and grid.get("cells"))
    baseline = grid["baseline_accuracy"] if measured else 90.0
    points, how = knee_rule(grid)
    whole = _whole_model(profile["model_ms"], shape, classes, baseline, param_bytes)
    if measured:
        splits = _digits_splits(grid, cuts, profile, classes)
        source = (f"MEASURED: every cell of the digits grid ({len(grid['cells'])} cells over "
                  f"{len({c['cut'] for c in grid['cells']})} cuts, read as it was when the "
                  "benchmark ran: the grid was still being measured); baseline from the grid")
    else:
        splits = _ladder(cuts, profile, classes, _synthetic_accuracy(points, baseline))
        source = (f"SYNTHETIC ({'no digits grid' if name == 'digits_cnn' else 'random weights'}): nominal "
                  "baseline 90.0, kept by local, edge and Neurosurgeon plans; each split cell "
                  f"(every cut x codec_ladder({LADDER})) gets 90.0 minus a drop looked up by its "
                  "compression ratio (linear in log2 ratio, clamped at the ends) in the rule: "
                  f"{how}. By ratio, not by code bytes: this model's cut tensors are far larger "
                  "than the digits model's, and the digits knee in bytes would let it keep full "
                  "accuracy at ratios in the thousands, which nothing supports")
    constraints = Constraints(baseline, MAX_ACCURACY_DROP)
    timing = whole + _spread(_ladder(cuts, profile, classes, lambda cut, codec: baseline),
                             DECISION_CANDIDATES - 2)
    decision = measure_decision(timing, constraints, SCENARIOS[0])
    neurosurgeon = _neurosurgeon(cuts, profile, whole, classes, baseline)
    candidates = whole + splits
    feasible = Selector(candidates, constraints).feasible
    scenarios = {s.name: evaluate_scenario(candidates, neurosurgeon, constraints, s)
                 for s in SCENARIOS}
    headline, at = scenarios[SCENARIOS[0].name], K_VALUES.index(HEADLINE_K)
    return {
        "model": spec, "input_shape": list(shape),
        "weights": None if weights is None else str(weights), "baseline_accuracy": baseline,
        "accuracy_source": source, "knee_rule_points": None if measured else points,
        "headline": {"scenario": SCENARIOS[0].name, **decision,
                     f"coverage_regret_mean_k{HEADLINE_K}": headline["coverage_regret_mean"][at],
                     f"coverage_regret_max_k{HEADLINE_K}": headline["coverage_regret_max"][at]},
        "decision_note": (
            f"Selector.select over {decision['candidates']} candidates (local, edge and split "
            f"variants spread over every cut x codec_ladder({LADDER}), all at baseline accuracy "
            "so that all are ranked: the worst case); perf_counter_ns around each call, "
            f"{decision['trials']} random conditions of the range"),
        "candidates": len(candidates), "feasible_candidates": len(feasible),
        "feasible_split_candidates": sum(p.kind == "split" for p in feasible),
        "scenarios": scenarios, "profile": profile,
        "candidate_profiles": [asdict(p) for p in candidates],
    }


ASSUMPTIONS = [
    "latencies: the MINIMUM over the repeats of ONNX Runtime CPU runs at batch 1 on one thread "
    "of this host (profile_model statistic='min'): this 2-core host is shared with other jobs; "
    "while one ran, runs were bimodal (about 3.7 vs 7.7 ms for the whole ResNet) and medians "
    "flipped between the modes from one artifact to the next. p90s are in the profiles",
    "device compute = this host's ms x device_slowdown x device load; edge compute = this "
    "host's ms x edge_slowdown x edge load (edge_speedup = device_slowdown / edge_slowdown)",
    "encode / decode ms per cut: one representative codec (middle of codec_ladder(12)), "
    "untrained, applied to every codec of that cut",
    "payload = wire message bytes (header with a 16-character bundle id + packed codes); edge "
    "uploads the uint8 input, Neurosurgeon the float32 cut tensor; results are float32 logits",
    "regret = latency(best bundled plan) / latency(best of all feasible candidates) - 1, "
    "uniform over bandwidth x device load x edge load; local and edge are always bundled",
    "static_best_single = the one feasible candidate (local and edge included) with the lowest "
    "mean latency over the whole range; oracle = best of all feasible candidates per condition",
]


def run_selector_benchmark(out_json: str | os.PathLike[str], out_png: str | os.PathLike[str] | None, *,
                           digits_grid_path: str | os.PathLike[str] = "benchmarks/results/digits_grid.json",
                           digits_weights: str | os.PathLike[str] = "benchmarks/results/digits_cnn.pt",
                           repeats: int = 50, warmup: int = 5) -> dict:
    """Run the selector benchmark for the digits model and a ResNet; write JSON (and a PNG).

    Args:
        out_json: ``selector.json`` to write.
        out_png: Latency-against-bandwidth plot to write; None for none.
        digits_grid_path: Measured digits grid: accuracies of the digits candidates and the
            knee rule of the ResNet's synthetic accuracies; read as it is when it exists.
        digits_weights: Trained digits weights (latency does not depend on them; skipped
            when the file is missing).
        repeats, warmup: Profiling runs per artifact.

    Returns:
        The report that was written.
    """
    started = time.perf_counter()
    grid_path, weights = Path(digits_grid_path), Path(digits_weights)
    grid = _load_grid(grid_path)
    models = {
        "digits_cnn": _model_report("digits_cnn", "splitpack.models:digits_cnn", (1, 1, 16, 16),
                                    weights if weights.is_file() else None, grid, repeats, warmup),
        "resnet_small": _model_report("resnet_small", "splitpack.models:resnet_small",
                                      (1, 3, 128, 128), None, grid, repeats, warmup),
    }
    operating = OperatingRange()
    report = {
        "format": SELECTOR_FORMAT, "host": host_info(),
        "profiling": {"threads": THREADS, "repeats": repeats, "warmup": warmup, "batch": 1,
                      "provider": "CPUExecutionProvider", "statistic": "min"},
        "constraint": f"accuracy >= baseline - {MAX_ACCURACY_DROP}",
        "operating_range": {"bandwidths_mbps": list(operating.bandwidths_mbps),
                            "device_loads": list(operating.device_loads),
                            "edge_loads": list(operating.edge_loads)},
        "scenarios": [asdict(s) for s in SCENARIOS],
        "digits_grid": {"path": str(grid_path), "cells": len(grid["cells"]) if grid else 0,
                        "cuts": len({c["cut"] for c in grid["cells"]}) if grid else 0},
        "assumptions": ASSUMPTIONS, "models": models,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    # headline figures: the worst over both models (phone scenario, K = 4)
    headlines = [m["headline"] for m in models.values()]
    report = {
        "decision_us_median": max(h["decision_us_median"] for h in headlines),
        "coverage_regret_mean": max(h["coverage_regret_mean_k4"] for h in headlines),
        "coverage_regret_max": max(h["coverage_regret_max_k4"] for h in headlines),
        "headline_note": "worst of digits_cnn and resnet_small; Selector.select over 64 candidates; regret at K = 4 "
                         "over the phone scenario's operating range",
        **report,
    }
    path = Path(out_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    if out_png is not None:
        plot_selector(report, Path(out_png))
    return report


def format_selector_summary(report: dict) -> str:
    """A few lines of headline numbers for the terminal."""
    lines = []
    for model, entry in report["models"].items():
        head = entry["headline"]
        lines.append(f"{model}: decision {head['decision_us_median']:.1f} µs median, "
                     f"{head['decision_us_p99']:.1f} µs p99 over {head['candidates']} candidates")
        for name, scenario in entry["scenarios"].items():
            regrets = ", ".join(f"K={k} {m:.3f}/{x:.3f}" for k, m, x in zip(
                scenario["k"], scenario["coverage_regret_mean"], scenario["coverage_regret_max"]))
            lines.append(f"  {name}: regret mean/max {regrets} (local+edge only "
                         f"{scenario['regret_local_edge_only_mean']:.3f}/"
                         f"{scenario['regret_local_edge_only_max']:.3f})")
    return "\n".join(lines)


def run_bench_selector_command(out: str | os.PathLike[str], plot: str | os.PathLike[str] | None,
                               log: Callable[[str], None] = print) -> dict:
    """``splitpack bench selector``: run the benchmark with its defaults, log a summary.

    Args:
        out: ``selector.json`` to write.
        plot: PNG to write, or None.
        log: Where the summary lines go.

    Returns:
        The report.
    """
    report = run_selector_benchmark(out, plot)
    log(format_selector_summary(report))
    log(f"wrote {out}" + (f" and {plot}" if plot else ""))
    return report
