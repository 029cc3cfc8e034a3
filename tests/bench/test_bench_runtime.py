"""The runtime benchmarks on the test bundle: a short synthetic trace (with device and edge load
traces) and a small concurrency run against a real edge process, keys and counts only (the
timings are the benchmark's business); the oracle and the load-change report on hand-made
logs; and the load schedule applied to the adaptive runtime and the fixed methods alike, on
fake time."""

from __future__ import annotations

import json
from contextlib import ExitStack

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from splitpack.bench import concurrency as bench_concurrency, runtime as bench_runtime
from splitpack.bench.report import (
    ORACLE_RULE, RUNTIME_FORMAT, oracle_rounds, oracle_summary, switches_after_changes,
)  # fmt: skip
from splitpack.cli import build_parser
from splitpack.errors import InvalidConfigError
from splitpack.formats import read_samples
from splitpack.formats.wire import decode_payload
from splitpack.runtimes.backends import load_backend
from splitpack.runtimes.device import DeviceRuntime
from splitpack.runtimes.load import LoadSchedule, read_load_trace
from splitpack.runtimes.netem import from_mbps
from splitpack.serving.edge import create_app
from tests.runtimes.test_load import FakeTime

LOW_MBPS, HIGH_MBPS = 0.05, 50.0
RUNTIME_KEYS = {"median_latency_ms", "p90_latency_ms", "switches", "switch_ms_p99", "errors",
                "lost", "requests", "trace", "device_slowdown", "static_median_latency_ms",
                "best_static_variant", "log", "runs", "pacing", "targets", "mean_latency_ms",
                "adaptive_to_oracle", "oracle", "oracle_log", "load", "load_changes"}
METHODS = {"adaptive", "best_static", "local", "edge", "oracle"}
DEVICE_LOAD = "seconds,slowdown\n0,2\n1.0,6\n"  # the fixture's device slowdown, tripled at 1 s
EDGE_LOAD = "0 1\n0.5 3\n1.5 1\n"


@pytest.fixture(scope="module")
def runtime_result(bundle_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-runtime")
    trace = from_mbps([LOW_MBPS, HIGH_MBPS] * 2, bin_seconds=0.6)  # low, high, low, high
    (out / "device_load.csv").write_text(DEVICE_LOAD)
    (out / "edge_load.txt").write_text(EDGE_LOAD)
    result = bench_runtime.run_runtime_benchmark(
        bundle_path, trace, requests=40, interval_s=0.05, device_slowdown=2.0,
        load_trace=out / "device_load.csv", edge_load_trace=out / "edge_load.txt",
        out_json=out / "runtime.json", out_png=out / "runtime.png")
    return result, out


def test_runtime_benchmark_writes_every_key(runtime_result, split_ids) -> None:
    result, out = runtime_result
    written = json.loads((out / "runtime.json").read_text())
    assert RUNTIME_KEYS <= set(written) and written["format"] == RUNTIME_FORMAT
    for key in ("median_latency_ms", "p90_latency_ms", "p99_latency_ms", "mean_latency_ms"):
        assert set(written[key]) == METHODS
        assert all(isinstance(ms, float) and ms > 0 for ms in written[key].values())
    assert set(written["adaptive_to_oracle"]) == {"median", "mean", "p90"}
    assert all(ratio > 0 for ratio in written["adaptive_to_oracle"].values())
    oracle = written["oracle"]
    assert (oracle["rule"], oracle["rounds"], oracle["rounds_counted"]) == (ORACLE_RULE, 40, 40)
    assert sum(oracle["best_method_rounds"].values()) == 40
    assert set(oracle["best_method_rounds"]) <= {*split_ids, "local", "edge"}
    assert len(written["oracle_log"]) == 40
    assert set(written["static_median_latency_ms"]) == set(split_ids)
    assert written["best_static_variant"] in split_ids
    assert set(written["runs"]) == {"adaptive", *split_ids, "local", "edge"}
    assert written["requests"] == 40 and written["device_slowdown"] == 2.0
    assert isinstance(written["runs"]["adaptive"]["deadline_misses"], int)
    assert written["hysteresis"] == 0.1
    assert (out / "runtime.png").stat().st_size > 0


def test_the_log_holds_what_the_runtime_planned_for_each_variant(runtime_result,
                                                                 split_ids) -> None:
    """Each request's record has the latency the runtime planned for every feasible variant
    just before it; the variant it then chose (if not an exploration) is among them."""
    result, _ = runtime_result
    for record in result["log"]:
        plans = record["plans_ms"]
        assert {"local", "edge", *split_ids} >= set(plans) >= {"local"}
        assert all(isinstance(ms, float) and ms > 0 for ms in plans.values())
        assert record["variant"] in plans


def test_each_round_takes_turns_in_its_own_order(runtime_result) -> None:
    """Drawn at random each round: a rotation would give at most one order per method."""
    result, _ = runtime_result
    times = {"adaptive": [r["t_s"] for r in result["log"]],
             **{name: [t for t, _ in log] for name, log in result["fixed_log"].items()}}
    orders = {tuple(sorted(times, key=lambda name: times[name][number])) for number in range(40)}
    assert len(orders) > len(times)


def test_runtime_benchmark_loses_nothing_and_adapts(runtime_result) -> None:
    result, _ = runtime_result
    assert (result["errors"], result["lost"], result["skipped"]) == (0, 0, 0), result["runs"]
    log = result["log"]
    assert len(log) == 40 and all("latency_ms" in record for record in log)
    assert all(record["argmax_agrees"] for record in log)
    # The test bundle's made-up local profile (100 ms) starts the runtime on a split; measured,
    # local is the best choice in every round here, so the runtime adapts by changing what it
    # selects (its answers may all be local: uploads given up over the slow phase are answered
    # locally, and probes, not remote requests, then time the link)
    selected = [record["selected"] for record in log]
    assert len(set(selected)) > 1 and selected[-1] == "local", result["adaptive_variants"]
    assert result["switches"] >= 1
    bandwidths = [record["mbps"] for record in log]  # 1 s means of the trace, logged per request
    assert LOW_MBPS <= min(bandwidths) < max(bandwidths) <= HIGH_MBPS


def test_concurrency_benchmark_answers_every_request(bundle_path, tmp_path) -> None:
    result = bench_concurrency.run_concurrency_benchmark(bundle_path, clients=4, requests=10,
                                                     edge_every=3, out_json=tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text())["requests"] == 40
    assert (result["errors"], result["mismatches"], result["answered"]) == (0, 0, 40)
    assert result["by_variant"]["edge"] == 4 * 3
    assert result["p50_latency_ms"] > 0 and result["max_inflight"] >= 1


def test_commands_parse_and_run(bundle_path, tmp_path, capsys) -> None:
    parser = build_parser()
    args = parser.parse_args(["bench", "concurrency", str(bundle_path), "--clients", "2", "--requests", "3",
                              "--max-inflight", "4", "--out", str(tmp_path / "c.json")])
    assert args.handler(args) == 0
    assert "errors 0" in capsys.readouterr().out
    assert json.loads((tmp_path / "c.json").read_text())["max_inflight"] == 4
    args = parser.parse_args(["bench", "runtime", str(bundle_path), "--trace", "t.up", "--out", "r.json"])
    assert (args.requests, args.interval, args.device_slowdown) == (150, 0.1, None)
    assert (args.load_trace, args.edge_load_trace) == (None, None)
    args = parser.parse_args(["bench", "runtime", str(bundle_path), "--trace", "t.up", "--out",
                              "r.json", "--load-trace", "device.csv", "--edge-load-trace", "edge.csv"])
    assert (args.load_trace, args.edge_load_trace) == ("device.csv", "edge.csv")


@pytest.mark.parametrize("options, match", [
    ({"requests": 0}, "requests: found 0"),
    ({"interval_s": -1.0}, "interval_s: found -1.0"),
    ({"device_slowdown": 0.0}, "device_slowdown: found 0.0"),
])  # fmt: skip
def test_bad_settings_are_refused(bundle_path, options, match) -> None:
    with pytest.raises(InvalidConfigError, match=match):
        bench_runtime.run_runtime_benchmark(bundle_path, from_mbps([1.0], 1.0), **options)


@pytest.mark.parametrize("option, text, match", [
    ("load_trace", "", r"load trace .*device\.csv: no rows"),
    ("load_trace", "0,2\n5,0\n", r"device\.csv:2: slowdown 0 is not a finite number > 0"),
    ("edge_load_trace", "0,1\n3,2\n3,4\n", r"edge\.csv:3: time 3 is not after"),
    ("edge_load_trace", "0,1\n3,busy\n", r"edge\.csv:2: found '3,busy'; expected two numbers"),
])  # fmt: skip
def test_bad_load_traces_are_refused(bundle_path, tmp_path, option, text, match) -> None:
    path = tmp_path / ("device.csv" if option == "load_trace" else "edge.csv")
    path.write_text(text)
    with pytest.raises(InvalidConfigError, match=match):
        bench_runtime.run_runtime_benchmark(bundle_path, from_mbps([1.0], 1.0), **{option: path})


def test_edge_uploads_are_zlib_compressed_uint8(bundle) -> None:
    """The raw upload of the ``edge`` variant, from the runtime and from the benchmarks."""
    inputs, expected = read_samples(bundle)
    edge, bodies = TestClient(create_app(bundle)), []

    def forward(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        answer = edge.post(request.url.path, content=request.content,
                           headers={"content-type": "application/octet-stream"})
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    with DeviceRuntime(bundle, "http://edge.test", transport=httpx.MockTransport(forward),
                       device_slowdown=1000.0, rtt_ms=1.0) as runtime:  # a slow device: edge
        result = runtime.infer(inputs[0])
    assert result.mode == "edge"
    np.testing.assert_allclose(result.output, expected["edge"][0], atol=1e-4)
    uploads = [body for vid, _, body in bench_concurrency._wire_payloads(bundle, inputs) if vid == "edge"]
    for body in (bodies[-1], *uploads):
        header, sent = decode_payload(body)
        assert (header.variant_id, header.dtype, header.bits, header.compression) == (
            "edge", "uint8", 8, "zlib")
    assert np.array_equal(decode_payload(bodies[-1])[1], inputs[:1])


# -- load traces in the benchmark ------------------------------------------------------------------

def test_runtime_benchmark_replays_the_load_traces(runtime_result) -> None:
    """Every method's log shows the slowdowns scheduled at its requests' trace times, the JSON
    the schedules, and each change in the segment gets a (possibly empty) switch report."""
    result, _ = runtime_result
    assert result["load"]["device"]["rows"] == [[0.0, 2.0], [1.0, 6.0]]
    assert result["load"]["edge"]["rows"] == [[0.0, 1.0], [0.5, 3.0], [1.5, 1.0]]
    assert result["device_slowdown"] == 2.0 and result["load"]["device"]["start_slowdown"] == 2.0
    for record in result["log"]:
        assert record["device_slowdown"] == (6.0 if record["trace_s"] >= 1.0 else 2.0)
        assert record["edge_slowdown"] == (3.0 if 0.5 <= record["trace_s"] < 1.5 else 1.0)
        assert record["selected"] in result["bundle"]["variants"]
    assert [r["round"] for r in result["log"]] == list(range(40))
    changes = result["load_changes"]
    assert [c["trace_s"] for c in changes["device"]] == [1.0]
    assert [c["trace_s"] for c in changes["edge"]] == [0.5, 1.5]
    for change in changes["device"] + changes["edge"]:
        assert {"t_s", "slowdown_before", "slowdown_after", "variant_before", "first_switch_t_s",
                "switch_after_s", "settled_t_s", "settled_variant"} <= set(change)
        if change["first_switch_t_s"] is not None:
            assert change["switch_after_s"] >= 0 and change["first_switch_t_s"] >= change["t_s"]


def test_the_load_schedule_stretches_every_method_alike(bundle) -> None:
    """The same schedule, on fake time, stretches the adaptive runtime's compute and each fixed
    method's by the slowdown scheduled at the moment: 1 ms of compute sleeps 1 ms more at 2x
    and 5 ms more at 6x, whichever variant runs (an edge upload's preparation included)."""
    inputs, _ = read_samples(bundle)
    edge = TestClient(create_app(bundle))

    def forward(request: httpx.Request) -> httpx.Response:
        answer = edge.post(request.url.path, content=request.content,
                           headers={"content-type": "application/octet-stream"})
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    transport = httpx.MockTransport(forward)
    schedule = LoadSchedule((0.0, 10.0, 30.0), (2.0, 6.0, 2.0))
    heads = {v.id: load_backend(bundle, v) for v in bundle.manifest.variants
             if v.kind in ("split", "local")}
    sleeps = {}
    for method in ("adaptive", *[v.id for v in bundle.manifest.variants]):
        time = FakeTime()
        load = time.load(schedule)
        if method == "adaptive":
            device = DeviceRuntime(bundle, "http://edge.test", transport=transport,
                                   emulated_load=load, device_slowdown=2.0, rtt_ms=1.0)
        else:
            client = httpx.Client(base_url="http://edge.test", transport=transport)
            device = bench_runtime._FixedVariant(bundle, method, heads, client, None, load)
        for elapsed in (5.0, 15.0, 29.9, 35.0):
            time.now = 100.0 + elapsed
            device.infer(inputs[0])
        sleeps[method] = time.sleeps
    assert sleeps == {method: pytest.approx([0.001, 0.005, 0.005, 0.001]) for method in sleeps}


# -- the oracle and the load-change report, on hand-made logs --------------------------------------

FIXED = {"cut_a": [5.0, 1.0, None, 4.0, 3.0],
         "local": [2.0, 3.0, 1.0, 4.0, 6.0],
         "edge": [9.0, 2.0, 2.0, 1.0, 3.0]}  # round 2: cut_a lost its request


def test_the_oracle_is_the_best_fixed_method_of_each_round() -> None:
    assert oracle_rounds(FIXED) == [("local", 2.0), ("cut_a", 1.0), None, ("edge", 1.0),
                                    ("cut_a", 3.0)]  # a tie goes to the first listed
    summary = oracle_summary(FIXED, [2.0, 2.0, 1.0, 3.0, None])  # adaptive: round 4 lost
    # Rounds 0, 1, 3 count: oracle 2, 1, 1; adaptive 2, 2, 3.
    assert (summary["rounds"], summary["rounds_counted"]) == (5, 3)
    assert summary["median_latency_ms"] == 1.0 and summary["mean_latency_ms"] == pytest.approx(4 / 3)
    assert summary["p90_latency_ms"] == pytest.approx(1.8)  # numpy's linear percentile
    assert summary["best_method_rounds"] == {"local": 1, "cut_a": 1, "edge": 1}
    assert summary["adaptive_to_oracle"] == pytest.approx(
        {"median": 2.0 / 1.0, "mean": (7 / 3) / (4 / 3), "p90": 2.8 / 1.8})
    assert summary["rule"] == ORACLE_RULE


def test_an_oracle_without_a_complete_round_has_no_figures() -> None:
    summary = oracle_summary({"local": [None, 1.0], "edge": [2.0, None]}, [1.0, 1.0])
    assert summary["rounds_counted"] == 0 and summary["median_latency_ms"] is None
    assert summary["adaptive_to_oracle"] == {"median": None, "mean": None, "p90": None}


@pytest.mark.parametrize("fixed, adaptive, match", [
    ({"local": [1.0, 2.0], "edge": [1.0]}, [1.0, 2.0], r"\[1, 2\] rounds"),
    ({"local": [1.0, 2.0]}, [1.0], "1 adaptive rounds for 2 rounds"),
])  # fmt: skip
def test_misaligned_logs_are_refused(fixed, adaptive, match) -> None:
    with pytest.raises(InvalidConfigError, match=match):
        oracle_summary(fixed, adaptive)


def _log(*rows: tuple[float, str]) -> list[dict]:
    """Adaptive records at start offset 100 s: (seconds since the start, selected variant)."""
    return [{"t_s": t, "trace_s": 100.0 + t, "selected": selected} for t, selected in rows]


def test_switches_after_each_load_change() -> None:
    log = _log((0.0, "cut_b"), (0.5, "cut_b"), (1.0, "cut_b"), (1.3, "edge"), (1.8, "cut_b"),
               (1.9, "edge"), (2.5, "edge"), (3.0, "edge"), (3.2, "cut_b"), (3.5, "cut_b"))
    changes = [(101.0, 2.0, 6.0), (103.0, 6.0, 2.0), (103.6, 2.0, 2.5)]
    first, back, last = switches_after_changes(log, changes)
    assert (first["t_s"], first["variant_before"], first["first_switch_t_s"],
            first["switched_to"], first["switch_after_s"]) == (1.0, "cut_b", 1.3, "edge", 0.3)
    # It re-measured the load once (cut_b at 1.8 s), then settled on edge until the next change.
    assert (first["settled_t_s"], first["settled_variant"], first["settled_after_s"]) == (
        1.9, "edge", 0.9)
    assert (back["variant_before"], back["first_switch_t_s"], back["switched_to"],
            back["switch_after_s"], back["settled_t_s"]) == ("edge", 3.2, "cut_b", 0.2, 3.2)
    assert (last["variant_before"], last["first_switch_t_s"], last["settled_t_s"]) == (
        "cut_b", None, None)  # no request after it


def test_an_edge_schedule_given_in_memory_reaches_the_edge_as_a_file() -> None:
    schedule = LoadSchedule((0.0, 2.5), (1.0, 1 / 3))
    with ExitStack() as stack:
        path = bench_runtime._edge_load_file(stack, schedule)
        assert read_load_trace(path).rows() == schedule.rows()
    assert bench_runtime._edge_load_file(ExitStack(), None) is None


def test_every_turn_of_a_round_starts_at_the_rounds_trace_moment() -> None:
    """Two devices take turns in a round that started at wall time 10: each one's link clock
    reads 10 when its turn starts, runs at the wall clock's pace within the turn, and never
    goes back."""
    from splitpack.bench.runtime import _TurnClock

    wall = [10.0]
    first, second = _TurnClock(lambda: wall[0]), _TurnClock(lambda: wall[0])
    first.begin_turn(10.0)
    assert first() == 10.0
    wall[0] = 10.03  # the first device's request took 30 ms
    assert first() == pytest.approx(10.03)
    second.begin_turn(10.0)
    assert second() == 10.0  # not 10.03: the same moment of the trace as the first's
    wall[0] = 10.05
    assert second() == pytest.approx(10.02)
    wall[0] = 10.1  # the next round
    first.begin_turn(10.1)
    assert first() == pytest.approx(10.1) and first() >= 10.03
