"""The Ray Serve engine on a local Ray cluster on loopback: the device runtime end to end against
two tail replicas, the same answers as the uvicorn edge to bad requests, complete counters, and
``splitpack serve --engine ray`` as a process that blocks until Ctrl-C."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from splitpack.bench.serve import run_serve_benchmark
from splitpack.cli import runtime as commands
from splitpack.errors import InvalidConfigError
from splitpack.formats import read_samples
from splitpack.formats.variants import normalize_uint8
from splitpack.formats.wire import encode_payload
from splitpack.runtimes.backends import load_backend
from splitpack.runtimes.device import DeviceRuntime
from splitpack.runtimes.netem import ShapedLink, constant_trace
from splitpack.serving.edge import create_app
from splitpack.serving.loopback import free_port
from tests.bundles import follow_uplink

NO_RAY = "Ray Serve is not installed: pip install 'splitpack[ray]'"
ray = pytest.importorskip("ray", reason=NO_RAY)
serve = pytest.importorskip("ray.serve", reason=NO_RAY)

from splitpack.serving.ray_serve import APP_NAME, build_app, ray_edge  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ATOL = 1e-4
LOW_MBPS, HIGH_MBPS = 0.05, 50.0
CLI_START_S, CLI_STOP_S = 150.0, 180.0  # Ray starts and stops slowly on a loaded 2-core host


@pytest.fixture(scope="module")
def samples(bundle):
    return read_samples(bundle)


def _check(result, expected, index: int) -> None:
    assert not result.fallback, result
    assert result.output.shape == expected[result.variant_id][index].shape
    np.testing.assert_allclose(result.output, expected[result.variant_id][index], atol=ATOL)


# Runs first, before the module's cluster exists, so that two clusters never share the cores.
def test_serve_command_runs_ray_on_loopback_until_ctrl_c(bundle_path, bundle, samples) -> None:
    inputs, expected = samples
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "splitpack.cli", "serve", str(bundle_path), "--engine", "ray",
         "--replicas", "2", "--port", str(port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True)  # its own process group: Ctrl-C reaches it and its Ray processes
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + CLI_START_S
        while not any("serving at" in line for line in lines):
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.1)
        assert any(f"serving at http://127.0.0.1:{port};" in line for line in lines), lines
        with DeviceRuntime(bundle, f"http://127.0.0.1:{port}", rtt_ms=1.0) as runtime:
            _check(runtime.infer(inputs[0]), expected, 0)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        try:
            assert process.wait(timeout=CLI_STOP_S) == 0, "".join(lines)[-3000:]
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit {CLI_STOP_S:g} s after Ctrl-C; stderr: {''.join(lines)[-3000:]}")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        reader.join(timeout=10)
        process.stderr.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2.0)


@pytest.fixture(scope="module")
def ray_url(bundle):
    """Two tail replicas on a local Ray cluster that this fixture starts on loopback and stops."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # read by the processes ray.init starts
        ray.init(address="local", include_dashboard=False, num_cpus=2,
                 _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        with ray_edge(bundle, port=free_port(), replicas=2, replica_cpus=0.5) as url:
            yield url
    finally:
        ray.shutdown()


def test_device_runtime_end_to_end_against_two_replicas(bundle, ray_url, samples,
                                                        split_ids) -> None:
    deployments = serve.status().applications[APP_NAME].deployments
    assert deployments["splitpack-tails"].replica_states == {"RUNNING": 2}
    assert deployments["splitpack-edge"].replica_states == {"RUNNING": 1}
    inputs, expected = samples
    low, high = split_ids
    runtime = DeviceRuntime(bundle, ray_url, link=ShapedLink(constant_trace(LOW_MBPS)),
                            initial_uplink_mbps=LOW_MBPS, rtt_ms=1.0, timeout_s=5.0, probe_interval_s=0.05,
                            plan_measured_heads=False)  # the fixture's profiles are made up
    with runtime:
        follow_uplink(runtime, inputs, expected, low, high, HIGH_MBPS, _check)
        assert runtime.stats["switches"] >= 1 and runtime.stats["fallbacks"] == 0
    with DeviceRuntime(bundle, ray_url, rtt_ms=1.0, device_slowdown=1000.0) as slow_device:
        result = slow_device.infer(inputs[:4])  # a batch of raw uploads to the edge variant
        assert result.variant_id == "edge" and not result.fallback
        np.testing.assert_allclose(result.output, expected["edge"][:4], atol=ATOL)


def _requests(bundle, wire_id) -> dict[str, tuple[dict, bytes]]:
    """Bad (and one good) /v1/infer requests: name -> (headers, body)."""
    inputs, _ = read_samples(bundle)
    variant = next(v for v in bundle.manifest.variants if v.kind == "split")
    q = variant.quantization
    codes = load_backend(bundle, variant).run(normalize_uint8(inputs[:1],
                                                             bundle.manifest.preprocessing))

    def payload(**changes) -> bytes:
        fields = {"bundle_id": wire_id, "variant_id": variant.id, "bits": q.bits,
                  "scale": q.scale, "offset": q.offset, **changes}
        return encode_payload(codes, **fields)

    octet = {"content-type": "application/octet-stream"}
    return {
        "good": (octet, payload()),
        "garbage": (octet, b"SPLT not a payload"),
        "empty": (octet, b""),
        "json body": ({"content-type": "application/json"}, b"{}"),
        "too large": (octet, bytes(70_000)),
        "other bundle": (octet, payload(bundle_id="0123456789abcdef")),
        "unknown variant": (octet, payload(variant_id="cut99-c1s1b8")),
        "other scale": (octet, payload(scale=q.scale * 2)),
    }  # fmt: skip


def test_ray_answers_every_request_as_the_local_edge_does(bundle, wire_id, ray_url) -> None:
    local = TestClient(create_app(bundle))
    with httpx.Client(base_url=ray_url, timeout=10.0) as remote:
        for name, (headers, body) in _requests(bundle, wire_id).items():
            want = local.post("/v1/infer", content=body, headers=headers)
            got = remote.post("/v1/infer", content=body, headers=headers)
            assert got.status_code == want.status_code, (name, got.text, want.text)
            if want.status_code == 200:
                assert got.content == want.content, name
            else:
                assert got.json() == want.json(), name
        assert remote.get("/v1/infer").status_code == 405
        assert remote.post("/v2/infer", content=b"x").status_code == 404
        assert remote.get("/health").json() == local.get("/health").json()
        probe = remote.post("/v1/probe", content=bytes(100),
                            headers={"content-type": "application/octet-stream"})
        assert (probe.status_code, probe.headers["x-splitpack-probe-bytes"]) == (204, "100")


def test_metrics_and_metadata_count_every_replica(bundle, wire_id, ray_url) -> None:
    headers, body = _requests(bundle, wire_id)["good"]
    variant = next(v.id for v in bundle.manifest.variants if v.kind == "split")
    line = f'splitpack_edge_requests_total{{variant="{variant}",status="200"}} '

    def count(text: str) -> int:
        found = [row for row in text.splitlines() if row.startswith(line)]
        return int(found[0].split()[-1]) if found else 0

    with httpx.Client(base_url=ray_url, timeout=10.0) as client:
        before = count(client.get("/metrics").text)
        for _ in range(12):  # more than one replica's share
            assert client.post("/v1/infer", content=body, headers=headers).status_code == 200
        assert count(client.get("/metrics").text) == before + 12
        metadata = client.get("/metadata").json()
    assert metadata["wire_bundle_id"] == wire_id and metadata["max_inflight"] == 16
    assert metadata["provider"] == "CPUExecutionProvider"
    served = {v["id"]: v for v in metadata["variants"]}
    assert served[variant]["requests"] >= 12 and served[variant]["measured_tail_ms"] > 0


def test_serve_benchmark_writes_numbers_for_an_engine(bundle_path, tmp_path) -> None:
    out = tmp_path / "serve.json"
    result = run_serve_benchmark(bundle_path, "local", clients=2, requests=5, out=out, warmup=1)
    assert json.loads(out.read_text()) == result
    local = result["engines"]["local"]
    assert (local["requests"], local["ok"], local["mismatches"], local["errors"]) == (10, 10, 0, {})
    latency = local["latency_ms"]
    assert local["requests_per_s"] > 0 and 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    with pytest.raises(InvalidConfigError, match="engines: found \\['triton'\\]"):
        run_serve_benchmark(bundle_path, "triton", clients=1, requests=1, out=None)


@pytest.mark.parametrize("options, match", [
    ({"replicas": 0}, "replicas: found 0"),
    ({"replica_cpus": 0}, "replica_cpus: found 0"),
    ({"max_inflight": 0}, "max_inflight: found 0"),
    ({"token": ""}, "token: expected a non-empty string"),
])  # fmt: skip
def test_bad_settings_are_refused_before_deploying(bundle, options, match) -> None:
    with pytest.raises(InvalidConfigError, match=match):
        build_app(bundle, **options)


def test_serve_command_passes_replicas_to_ray_and_refuses_them_locally(bundle_path,
                                                                       monkeypatch) -> None:
    parser = argparse.ArgumentParser()
    commands.add_runtime_commands(parser.add_subparsers(dest="command", required=True))
    seen: dict = {}
    monkeypatch.setattr("splitpack.serving.ray_serve.serve_ray",
                        lambda bundle, **options: seen.update(options, bundle=bundle))
    args = parser.parse_args(["serve", str(bundle_path), "--engine", "ray", "--replicas", "3"])
    assert args.handler(args) == 0
    assert (seen["replicas"], seen["host"], seen["bundle"]) == (3, "127.0.0.1", str(bundle_path))
    args = parser.parse_args(["serve", str(bundle_path), "--replicas", "3"])
    with pytest.raises(InvalidConfigError, match="--replicas 3: only the ray engine"):
        args.handler(args)

