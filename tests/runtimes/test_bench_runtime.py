"""The runtime benchmarks on the test bundle: a short synthetic trace and a small concurrency run
against a real edge process. Keys and counts only; the timings are the benchmark's business."""

from __future__ import annotations

import argparse
import json

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from splitpack.errors import InvalidConfigError
from splitpack.packaging import read_samples
from splitpack.runtimes import bench_concurrency, bench_runtime
from splitpack.runtimes.device import DeviceRuntime
from splitpack.runtimes.edge import create_app
from splitpack.runtimes.netem import from_mbps
from splitpack.runtimes.wire import decode_payload

LOW_MBPS, HIGH_MBPS = 0.05, 50.0
RUNTIME_KEYS = {"median_latency_ms", "p90_latency_ms", "switches", "switch_ms_p99", "errors",
                "lost", "requests", "trace", "device_slowdown", "static_median_latency_ms",
                "best_static_variant", "log", "runs", "pacing", "targets"}


@pytest.fixture(scope="module")
def runtime_result(bundle_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-runtime")
    trace = from_mbps([LOW_MBPS, HIGH_MBPS] * 2, bin_seconds=0.6)  # low, high, low, high
    result = bench_runtime.run_runtime_benchmark(
        bundle_path, trace, requests=40, interval_s=0.05, device_slowdown=2.0,
        out_json=out / "runtime.json", out_png=out / "runtime.png")
    return result, out


def test_runtime_benchmark_writes_every_key(runtime_result, split_ids) -> None:
    result, out = runtime_result
    written = json.loads((out / "runtime.json").read_text())
    assert RUNTIME_KEYS <= set(written)
    for key in ("median_latency_ms", "p90_latency_ms"):
        assert set(written[key]) == {"adaptive", "best_static", "local", "edge"}
        assert all(isinstance(ms, float) and ms > 0 for ms in written[key].values())
    assert set(written["static_median_latency_ms"]) == set(split_ids)
    assert written["best_static_variant"] in split_ids
    assert set(written["runs"]) == {"adaptive", *split_ids, "local", "edge"}
    assert written["requests"] == 40 and written["device_slowdown"] == 2.0
    assert (out / "runtime.png").stat().st_size > 0


def test_runtime_benchmark_loses_nothing_and_adapts(runtime_result) -> None:
    result, _ = runtime_result
    assert (result["errors"], result["lost"], result["skipped"]) == (0, 0, 0), result["runs"]
    log = result["log"]
    assert len(log) == 40 and all("latency_ms" in record for record in log)
    assert all(record["argmax_agrees"] for record in log)
    used = {record["variant"] for record in log}
    assert len(used) > 1, result["adaptive_variants"]
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
    parser = argparse.ArgumentParser()
    bench_runtime.add_bench_runtime_commands(parser.add_subparsers(dest="bench", required=True))
    args = parser.parse_args(["concurrency", str(bundle_path), "--clients", "2", "--requests", "3",
                              "--max-inflight", "4", "--out", str(tmp_path / "c.json")])
    assert args.handler(args) == 0
    assert "errors 0" in capsys.readouterr().out
    assert json.loads((tmp_path / "c.json").read_text())["max_inflight"] == 4
    args = parser.parse_args(["runtime", str(bundle_path), "--trace", "t.up", "--out", "r.json"])
    assert (args.requests, args.interval, args.device_slowdown) == (150, 0.1, None)


@pytest.mark.parametrize("options, match", [
    ({"requests": 0}, "requests: found 0"),
    ({"interval_s": -1.0}, "interval_s: found -1.0"),
    ({"device_slowdown": 0.0}, "device_slowdown: found 0.0"),
])  # fmt: skip
def test_bad_settings_are_refused(bundle_path, options, match) -> None:
    with pytest.raises(InvalidConfigError, match=match):
        bench_runtime.run_runtime_benchmark(bundle_path, from_mbps([1.0], 1.0), **options)


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
