"""The figures of ``bench runtime`` from its request logs: per-run summaries, the oracle (the
best fixed method of each round), the adaptive runtime's switches after each load change, the
replayed traces, and the result document. Pure functions; nothing here times anything.

Imports numpy and the standard library.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from splitpack.bench.support import percentile
from splitpack.errors import InvalidConfigError
from splitpack.runtimes.load import LoadSchedule
from splitpack.runtimes.netem import BandwidthTrace

__all__ = ["RUNTIME_FORMAT", "ORACLE_RULE", "summarize_run", "oracle_rounds", "oracle_summary",
           "switches_after_changes", "trace_info", "load_info", "runtime_result"]

# /2: the oracle and mean figures, load schedules, "round", "selected" and the scheduled
# slowdowns in the log, and the edge upload's preparation stretched like device compute.
RUNTIME_FORMAT = "splitpack-bench-runtime/2"
ORACLE_RULE = ("per round, the lowest latency among the fixed methods (each split variant, "
               "local and edge) in that round; a round where a fixed method or the adaptive "
               "runtime got no answer counts neither in the oracle nor in the ratios")


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def summarize_run(records: list[dict], requests: int, errors: int) -> dict:
    """One run's counts and latency figures (``records``: its log, one per issued round)."""
    latencies = [r["latency_ms"] for r in records if "latency_ms" in r]
    return {"requests": requests, "answered": len(latencies), "errors": errors,
            "lost": len(records) - len(latencies), "skipped": requests - len(records),
            "median_latency_ms": percentile(latencies, 50),
            "p90_latency_ms": percentile(latencies, 90),
            "p99_latency_ms": percentile(latencies, 99),
            "mean_latency_ms": _mean(latencies),
            "argmax_disagreements": sum(not r["argmax_agrees"] for r in records if "variant" in r),
            "variants": dict(Counter(r["variant"] for r in records if "variant" in r)),
            "error_examples": [r["error"] for r in records if "error" in r][:5]}


def oracle_rounds(fixed: Mapping[str, Sequence[float | None]]) -> list[tuple[str, float] | None]:
    """The best fixed method of each round.

    Args:
        fixed: Per fixed method, its latency (ms) in each round, None where it got no answer;
            every sequence as long as the others (round ``i`` is index ``i``).

    Returns:
        Per round, ``(method, latency_ms)`` of the fastest method (the first listed on a tie),
        or None where some method got no answer (the oracle would have to guess).
    """
    lengths = {len(latencies) for latencies in fixed.values()}
    if len(lengths) > 1:
        raise InvalidConfigError(f"oracle_rounds: the methods' logs have {sorted(lengths)} rounds; "
                         "expected one latency (or None) per round for every method")
    best: list[tuple[str, float] | None] = []
    for number in range(lengths.pop() if lengths else 0):
        row = {name: latencies[number] for name, latencies in fixed.items()}
        if not row or any(ms is None for ms in row.values()):
            best.append(None)
            continue
        name = min(row, key=row.get)
        best.append((name, float(row[name])))
    return best


def oracle_summary(fixed: Mapping[str, Sequence[float | None]],
                   adaptive: Sequence[float | None]) -> dict:
    """The oracle's figures and the adaptive runtime's against them, under :data:`ORACLE_RULE`.

    Args:
        fixed: As in :func:`oracle_rounds`.
        adaptive: The adaptive runtime's latency in each round (None: no answer), as long.

    Returns:
        ``rule``, ``rounds`` and ``rounds_counted``; the oracle's ``median``, ``p90``, ``p99``
        and ``mean_latency_ms``; ``best_method_rounds`` (how often each method was the best);
        ``adaptive_to_oracle``: the adaptive runtime's median, mean and p90 over the counted
        rounds, each divided by the oracle's (None when no round counts).
    """
    best = oracle_rounds(fixed)
    if len(adaptive) != len(best):
        raise InvalidConfigError(f"oracle_summary: {len(adaptive)} adaptive rounds for {len(best)} "
                         "rounds of the fixed methods; expected one per round")
    counted = [(pick[1], ms) for pick, ms in zip(best, adaptive)
               if pick is not None and ms is not None]
    oracle = [pair[0] for pair in counted]
    ours = [pair[1] for pair in counted]

    def ratio(numerator: float | None, denominator: float | None) -> float | None:
        return None if numerator is None or not denominator else numerator / denominator

    figures = {"median": (percentile(ours, 50), percentile(oracle, 50)),
               "mean": (_mean(ours), _mean(oracle)),
               "p90": (percentile(ours, 90), percentile(oracle, 90))}
    return {"rule": ORACLE_RULE, "rounds": len(best), "rounds_counted": len(counted),
            "median_latency_ms": percentile(oracle, 50), "p90_latency_ms": percentile(oracle, 90),
            "p99_latency_ms": percentile(oracle, 99), "mean_latency_ms": _mean(oracle),
            "best_method_rounds": dict(Counter(pick[0] for pick, ms in zip(best, adaptive)
                                               if pick is not None and ms is not None)),
            "adaptive_to_oracle": {name: ratio(*pair) for name, pair in figures.items()}}


def switches_after_changes(log: Sequence[dict],
                           changes: Sequence[tuple[float, float, float]]) -> list[dict]:
    """When the adaptive runtime first switched variant after each load change.

    A switch is a change of the selector's choice (``selected`` in the log: explorations and
    fallbacks are not switches), for any reason: replay a constant-rate uplink to attribute
    the switches to the load. Only switches before the next change count. A runtime whose
    variant measures nothing of the load (see :data:`~splitpack.runtimes.load.LOAD_MAX_AGE_S`)
    switches to re-measure it now and then: ``settled_t_s`` is when it last switched before
    the next change, so the first switch and the settled choice tell the two apart.

    Args:
        log: The adaptive runtime's records, in order, with ``t_s``, ``trace_s`` and
            ``selected``.
        changes: ``(trace time, slowdown before, slowdown after)`` per change, in order.

    Returns:
        Per change: its ``trace_s`` and ``t_s`` (seconds since the run started), the slowdowns,
        ``variant_before``; ``first_switch_t_s``, ``switched_to`` and ``switch_after_s``, and
        ``settled_t_s``, ``settled_variant`` and ``settled_after_s`` (the last switch before
        the next change); None when the runtime kept its variant until then.
    """
    rows = [r for r in log if r.get("selected") is not None]
    offset = rows[0]["trace_s"] - rows[0]["t_s"] if rows else 0.0  # start_offset_s
    report = []
    for number, (when, before, after) in enumerate(changes):
        until = changes[number + 1][0] if number + 1 < len(changes) else float("inf")
        earlier = [r for r in rows if r["trace_s"] < when]
        previous = earlier[-1]["selected"] if earlier else None
        entry = {"trace_s": when, "t_s": round(when - offset, 4), "slowdown_before": before,
                 "slowdown_after": after, "variant_before": previous, "first_switch_t_s": None,
                 "switched_to": None, "switch_after_s": None, "settled_t_s": None,
                 "settled_variant": None, "settled_after_s": None}
        for record in (r for r in rows if when <= r["trace_s"] < until):
            if previous is not None and record["selected"] != previous:
                switch = (record["t_s"], record["selected"], round(record["trace_s"] - when, 4))
                if entry["first_switch_t_s"] is None:
                    entry.update(zip(("first_switch_t_s", "switched_to", "switch_after_s"), switch))
                entry.update(zip(("settled_t_s", "settled_variant", "settled_after_s"), switch))
            previous = record["selected"]
        report.append(entry)
    return report


def trace_info(trace: BandwidthTrace, source: str, start_offset_s: float, span_s: float,
               window_s: float) -> dict:
    """The trace's statistics, and its ``window_s`` mean capacity every 0.1 s over the
    replayed segment ``[start_offset_s, start_offset_s + span_s]``."""
    p10, p50, p90 = trace.percentiles_mbps()
    curve = [[round(float(t), 2), round(trace.mbps_at(start_offset_s + t, window_s), 4)]
             for t in np.arange(0.0, span_s + 1e-9, 0.1)]
    segment_bytes = trace.bytes_between(start_offset_s, start_offset_s + span_s)
    return {"path": source, "duration_s": trace.duration_s, "mean_mbps": trace.mean_mbps,
            "p10_p50_p90_mbps": [p10, p50, p90], "start_offset_s": start_offset_s,
            "segment_s": [start_offset_s, start_offset_s + span_s],
            "segment_mean_mbps": segment_bytes * 8 / 1e6 / span_s, "segment_mbps": curve}


def load_info(schedule: LoadSchedule, start_offset_s: float, span_s: float) -> dict:
    """A load schedule's rows, its slowdown at the start, and its changes within the segment."""
    return {"path": schedule.source, "rows": schedule.rows(),
            "start_slowdown": schedule.slowdown_at(start_offset_s),
            "changes": [list(change) for change in
                        schedule.changes(start_offset_s, start_offset_s + span_s)]}


def runtime_result(runs: dict, logs: dict, stats: dict, split_ids: list[str],
                   local_id: str, edge_id: str) -> dict:
    """The result document's figures (see :func:`~splitpack.bench.runtime.
    run_runtime_benchmark`), from each run's summary and log and the runtime's stats."""
    static = {vid: runs[vid]["median_latency_ms"] for vid in split_ids}
    answered = {vid: ms for vid, ms in static.items() if ms is not None}
    best = min(answered, key=answered.get) if answered else None
    names = {"adaptive": "adaptive", "best_static": best, "local": local_id, "edge": edge_id}
    fixed_ids = [*split_ids, local_id, edge_id]
    oracle = oracle_summary({vid: [r.get("latency_ms") for r in logs[vid]] for vid in fixed_ids},
                            [r.get("latency_ms") for r in logs["adaptive"]])

    def pick(key: str) -> dict:
        figures = {name: (runs[vid][key] if vid is not None else None)
                   for name, vid in names.items()}
        return {**figures, "oracle": oracle[key]}

    median, switch_ms = pick("median_latency_ms"), stats["switch_ms"]
    fixed_best = min((v for v in (median["best_static"], median["local"], median["edge"])
                      if v is not None), default=None)
    adaptive = median["adaptive"]
    switch_p99 = percentile(switch_ms, 99) or 0.0
    errors = sum(run["errors"] for run in runs.values())
    lost = sum(run["lost"] for run in runs.values())
    skipped = sum(run["skipped"] for run in runs.values())

    def at_most(a: float | None, b: float | None) -> bool | None:
        return None if a is None or b is None else a <= b

    rounds = oracle_rounds({vid: [r.get("latency_ms") for r in logs[vid]] for vid in fixed_ids})
    starts = [min(logs[vid][number]["t_s"] for vid in ("adaptive", *fixed_ids))
              for number in range(len(rounds))]
    return {
        "format": RUNTIME_FORMAT, "requests": runs["adaptive"]["requests"],
        "median_latency_ms": median, "p90_latency_ms": pick("p90_latency_ms"),
        "p99_latency_ms": pick("p99_latency_ms"), "mean_latency_ms": pick("mean_latency_ms"),
        "adaptive_to_oracle": oracle["adaptive_to_oracle"], "oracle": oracle,
        "best_static_variant": best, "static_median_latency_ms": static,
        "static_p90_latency_ms": {vid: runs[vid]["p90_latency_ms"] for vid in split_ids},
        "switches": stats["switches"], "switch_ms_p99": switch_p99,
        "switch_ms_max": max(switch_ms, default=0.0), "errors": errors, "lost": lost,
        "skipped": skipped,
        "adaptive_variants": runs["adaptive"]["variants"],
        "targets": {
            "adaptive_median_le_best_static": at_most(adaptive, median["best_static"]),
            "adaptive_median_le_edge": at_most(adaptive, median["edge"]),
            "adaptive_median_le_every_fixed_choice": at_most(adaptive, fixed_best),
            "switch_ms_p99_le_1": switch_p99 <= 1.0, "no_errors_no_lost": errors == lost == 0,
            "every_request_issued": skipped == 0},
        "runs": runs,
        "log": logs["adaptive"],
        "fixed_log": {vid: [[r["t_s"], r.get("latency_ms")] for r in records]
                      for vid, records in logs.items() if vid != "adaptive"},
        "oracle_log": [[t, None, None] if best_of is None else [t, round(best_of[1], 4), best_of[0]]
                       for t, best_of in zip(starts, rounds)],
    }
