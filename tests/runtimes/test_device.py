"""The device runtime: against a real edge process over loopback (switches, fallback, recovery),
and against the in-process app behind an httpx transport (each failure mode, deterministically)."""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from splitpack.cli import runtime as commands
from splitpack.errors import InvalidConfigError, InvalidInputError
from splitpack.formats import read_samples
from splitpack.formats.variants import normalize_uint8
from splitpack.formats.wire import decode_payload
from splitpack.runtimes.device import PROBE_FAR_GAP_S, DeviceRuntime
from splitpack.runtimes.load import EmulatedLoad, LoadSchedule, constant_load
from splitpack.runtimes.netem import ShapedLink, constant_trace, from_mbps
from splitpack.serving.edge import create_app
from splitpack.serving.loopback import free_port
from tests.bundles import follow_uplink
from tests.runtimes.test_load import FakeTime

ROOT = Path(__file__).resolve().parents[2]
ATOL = 1e-4
LOW_MBPS, HIGH_MBPS = 0.05, 50.0


@pytest.fixture(scope="module")
def samples(bundle):
    return read_samples(bundle)


# -- a real edge process -----------------------------------------------------------------------

class EdgeProcess:
    """``python -m splitpack.serving.edge`` on a loopback port; start, kill, start again."""

    def __init__(self, bundle_path: Path, port: int) -> None:
        self.bundle_path, self.port, self.process = bundle_path, port, None
        self.url = f"http://127.0.0.1:{port}"

    def start(self, deadline_s: float = 20.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "splitpack.serving.edge", str(self.bundle_path),
             "--port", str(self.port), "--host", "127.0.0.1"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"edge exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"edge did not answer /health within {deadline_s} s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process is not None:
            self.process.stderr.close()


@pytest.fixture
def edge_process(bundle_path):
    edge = EdgeProcess(bundle_path, free_port())
    edge.start()
    yield edge
    edge.kill()


def _check(result, expected, index: int) -> None:
    """The output equals the offline output of the variant the runtime says it used."""
    assert result.output.shape == expected[result.variant_id][index].shape
    np.testing.assert_allclose(result.output, expected[result.variant_id][index], atol=ATOL)


def test_end_to_end_switches_falls_back_and_recovers(bundle, edge_process, samples,
                                                     split_ids) -> None:
    inputs, expected = samples
    low, high = split_ids
    # plan_measured_heads=False: the fixture's profiles are made up (local 100 ms) to force the
    # choices; this host runs every head in well under a millisecond.
    runtime = DeviceRuntime(bundle, edge_process.url, link=ShapedLink(constant_trace(LOW_MBPS)),
                            initial_uplink_mbps=LOW_MBPS, rtt_ms=1.0, timeout_s=1.0, probe_interval_s=0.05,
                            plan_measured_heads=False, hedge_factor=None)
    with runtime:
        follow_uplink(runtime, inputs, expected, low, high, HIGH_MBPS, _check)
        stats = runtime.stats
        assert stats["switches"] >= 1 and len(stats["switch_ms"]) == stats["switches"]
        assert all(math.isfinite(ms) and ms >= 0 for ms in stats["switch_ms"])

        edge_process.kill()
        for index in range(len(inputs)):  # every request is still answered, locally
            result = runtime.infer(inputs[index])
            assert (result.variant_id, result.mode, result.fallback) == ("local", "local", True)
            _check(result, expected, index)
        assert runtime.stats["fallbacks"] == 1 and not runtime.edge_up
        assert re.match(rf"variant {high}: (ConnectError|RemoteProtocolError|ReadError|WriteError)",
                        runtime.stats["errors"][-1]), runtime.stats["errors"]

        edge_process.start()
        deadline, step = time.monotonic() + 10.0, 0
        while time.monotonic() < deadline:
            result = runtime.infer(inputs[step % len(inputs)])
            _check(result, expected, step % len(inputs))
            if result.mode == "split":
                break
            step += 1
            time.sleep(0.01)
        assert (result.mode, result.fallback) == ("split", False), runtime.stats
        assert runtime.edge_up and runtime.stats["probes"] >= 1


def test_run_command_prints_one_line_per_sample(bundle, edge_process, samples, tmp_path,
                                                capsys, monkeypatch) -> None:
    import functools

    import splitpack.runtimes.device as device

    # the fixture's profiles are made up (local 100 ms); measured, local would answer everything
    monkeypatch.setattr(device, "DeviceRuntime", functools.partial(
        DeviceRuntime, plan_measured_heads=False, hedge_factor=None))
    inputs, expected = samples
    np.save(tmp_path / "inputs.npy", inputs[:4])
    (tmp_path / "trace.csv").write_text("seconds,mbps\n0,1\n1,2\n")
    parser = argparse.ArgumentParser()
    commands.add_runtime_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["run", str(bundle.root), "--edge", edge_process.url, "--input",
                              str(tmp_path / "inputs.npy"), "--trace", str(tmp_path / "trace.csv")])
    assert args.handler(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    for index, line in enumerate(lines):
        fields = dict(part.split("=") for part in line.split()[1:])
        assert fields["mode"] in ("split", "edge") and float(fields["latency_ms"]) > 0
        assert int(fields["argmax"]) == int(np.argmax(expected[fields["variant"]][index]))


def test_run_command_refuses_a_bad_input_file(bundle, tmp_path) -> None:
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(InvalidConfigError, match="cannot be read as a .npy"):
        commands.load_inputs(tmp_path / "bad.npy", 3)
    np.save(tmp_path / "flat.npy", np.zeros(5))
    with pytest.raises(InvalidConfigError, match=r"found shape \(5,\)"):
        commands.load_inputs(tmp_path / "flat.npy", 3)


# -- the in-process app behind a transport that can fail on demand -----------------------------

class FlakyEdge:
    """An httpx transport to the edge app; ``failure`` makes the next requests fail."""

    def __init__(self, app) -> None:
        self.client, self.failure, self.health_id, self.bodies = TestClient(app), None, None, []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health" and self.health_id is not None:
            return httpx.Response(200, json={"status": "ok", "wire_bundle_id": self.health_id})
        if self.failure == "refuse":
            raise httpx.ConnectError("connection refused", request=request)
        if self.failure == "timeout" and request.url.path == "/v1/infer":
            raise httpx.ReadTimeout("timed out", request=request)
        if self.failure == "busy" and request.url.path == "/v1/infer":
            return httpx.Response(503, json={"error": "server busy: 8 requests in flight"})
        if self.failure == "noprobe" and request.url.path == "/v1/probe":  # an older edge
            return httpx.Response(404, json={"error": "path: '/v1/probe' is not served"})
        if self.failure == "probe-refused" and request.url.path == "/v1/probe":  # a proxy's
            return httpx.Response(502, json={"error": "bad gateway"})
        if self.failure == "garbage" and request.url.path == "/v1/infer":
            return httpx.Response(200, content=b"SPLT garbage")
        self.bodies.append(request.content)
        headers = {k: v for k, v in request.headers.items() if k not in ("host", "content-length")}
        answer = self.client.request(request.method, request.url.path, content=request.content,
                                     headers=headers)
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def app(bundle):
    return create_app(bundle, token="t")


def _runtime(bundle, edge: FlakyEdge, clock: FakeClock, **options) -> DeviceRuntime:
    options.setdefault("plan_measured_heads", False)  # the fixture's profiles are made up
    return DeviceRuntime(bundle, "http://edge.test", token="t", transport=httpx.MockTransport(edge),
                         clock=clock, probe_interval_s=1.0, rtt_ms=1.0, **options)


@pytest.mark.parametrize("failure, reason", [
    ("refuse", "ConnectError: connection refused"),
    ("timeout", "timed out after 2 s"),
    ("busy", "edge answered 503: server busy"),
    ("garbage", "malformed response: wire payload"),
])  # fmt: skip
def test_each_failure_is_answered_locally_then_probed(bundle, app, samples, failure,
                                                      reason) -> None:
    inputs, expected = samples
    edge, clock = FlakyEdge(app), FakeClock()
    with _runtime(bundle, edge, clock) as runtime:
        assert runtime.infer(inputs[0]).mode == "split"
        edge.failure = failure
        result = runtime.infer(inputs[1])
        assert (result.variant_id, result.fallback) == ("local", True)
        _check(result, expected, 1)
        assert reason in runtime.stats["errors"][-1] and not runtime.edge_up
        edge.failure = None
        clock.now += 0.5  # within the probe interval: local, no probe
        assert runtime.infer(inputs[2]).fallback and runtime.stats["probes"] == 0
        clock.now += 0.6
        result = runtime.infer(inputs[3])
        assert (result.mode, result.fallback, runtime.stats["probes"]) == ("split", False, 1)
        _check(result, expected, 3)
        assert runtime.stats["fallbacks"] == 1 and runtime.stats["modes"]["local"] == 2


def test_a_probe_of_another_bundle_keeps_the_edge_down(bundle, app, samples) -> None:
    inputs, _ = samples
    edge, clock = FlakyEdge(app), FakeClock()
    with _runtime(bundle, edge, clock) as runtime:
        edge.failure = "refuse"
        assert runtime.infer(inputs[0]).fallback
        edge.failure, edge.health_id = None, "0123456789abcdef"
        clock.now += 5
        assert runtime.infer(inputs[1]).fallback
        assert (runtime.stats["probes"], runtime.stats["probe_failures"]) == (1, 1)


def test_a_slow_device_uploads_raw_input_even_when_given_floats(bundle, app, samples) -> None:
    inputs, expected = samples
    edge, clock = FlakyEdge(app), FakeClock()
    normalized = normalize_uint8(inputs, bundle.manifest.preprocessing)
    with _runtime(bundle, edge, clock, device_slowdown=1000.0) as runtime:
        result = runtime.infer(normalized[:4])  # a batch of float32 inputs
        assert (result.variant_id, result.mode, result.fallback) == ("edge", "edge", False)
        assert result.output.shape == (4, 10)
        np.testing.assert_allclose(result.output, expected["edge"][:4], atol=ATOL)
        header, sent = decode_payload(edge.bodies[-1])
        assert header.variant_id == "edge" and np.array_equal(sent, inputs[:4])


def test_a_runtime_that_prefers_local_still_explores_the_uplink(bundle, app, samples) -> None:
    inputs, expected = samples
    edge, clock = FlakyEdge(app), FakeClock()
    with _runtime(bundle, edge, clock, initial_uplink_mbps=0.001, uplink_probes=False) as runtime:
        first = runtime.infer(inputs[0])
        assert (first.mode, first.fallback) == ("local", False)
        clock.now += 1.0
        remote = [p for p in runtime.selector.feasible if p.kind != "local"]
        device_ms = {p.id: p.head_ms + p.encode_ms for p in remote}
        explored = runtime.infer(inputs[1])
        assert explored.mode != "local" and runtime.stats["explorations"] == 1
        assert device_ms[explored.variant_id] == min(device_ms.values())  # the cheapest head
        _check(explored, expected, 1)
        assert runtime.infer(inputs[2]).mode != "local"  # the new estimate keeps it remote


def test_a_runtime_answering_locally_probes_its_link_instead_of_exploring(bundle, app,
                                                                        samples) -> None:
    """Over a link at 0.002 Mbit/s for 2 s, then 50: local answers hand probes of the best
    remote plan's payload size to the link (one a second: remote plans are far above local)
    and do not wait for them; the next request takes one in once it has gone out. No
    request is sent to the edge while the link is slow, none is an exploration, and the
    probes find the fast link within 1.5 s."""
    inputs, expected = samples
    edge, clock = FlakyEdge(app), LinkClock()
    link = ShapedLink(from_mbps([0.002, 50.0, 50.0], bin_seconds=2.0), clock=clock,
                      sleep=clock.sleep)
    with _runtime(bundle, edge, clock, link=link, initial_uplink_mbps=0.002) as runtime:
        remote = {p.id: p.payload_bytes for p in runtime.selector.feasible if p.kind != "local"}
        modes = []
        for step in range(55):  # one request every 0.1 s
            started = clock.now
            result = runtime.infer(inputs[step % len(inputs)])
            _check(result, expected, step % len(inputs))
            if result.mode == "local":
                assert clock.now == started  # a probe never makes the device wait
            modes.append((round(step * 0.1, 1), result.mode))
            clock.now = started + 0.1
        assert all(mode == "local" for t, mode in modes if t < 2.0) and len(edge.bodies) > 0
        first_remote = next(t for t, mode in modes if mode != "local")
        assert 2.0 <= first_remote < 3.5
        assert runtime.stats["explorations"] == 0 and runtime.stats["uplink_probes"] >= 3
        assert all(mode != "local" for t, mode in modes if t > first_remote)
        assert runtime.stats["uplink_probe_bytes"] % runtime.stats["uplink_probes"] == 0
        assert runtime.stats["uplink_probe_bytes"] // runtime.stats["uplink_probes"] in (
            remote.values())


def test_while_a_probe_waits_on_the_link_requests_stay_local_and_send_nothing(
        bundle, app, samples) -> None:
    """A probe sent into a 1 s outage: until it has gone out the runtime answers locally,
    sends nothing more (an upload would queue behind it) and takes no sample; then its wait
    is one."""
    inputs, _ = samples
    edge, clock = FlakyEdge(app), LinkClock()
    link = ShapedLink(from_mbps([0.0, 50.0], bin_seconds=1.0), clock=clock, sleep=clock.sleep)
    with _runtime(bundle, edge, clock, link=link, initial_uplink_mbps=0.002) as runtime:
        assert runtime.infer(inputs[0]).mode == "local" and runtime.stats["uplink_probes"] == 1
        for step in range(1, 9):
            clock.now += 0.1
            assert runtime.infer(inputs[step % len(inputs)]).mode == "local" and link.pending()
        assert runtime.stats["uplink_probes"] == 1 and runtime.estimator.fit().samples == 0
        assert edge.bodies == []
        sent = runtime.stats["uplink_probe_bytes"]
        clock.now += 0.25  # 1.05 s: it went out at 1 s
        runtime.infer(inputs[0])  # (and sends the next one)
        fit = runtime.estimator.fit()
        assert fit.samples == 1 and fit.transfer_ms(sent) == pytest.approx(1000.0, abs=1.0)


def test_without_a_link_the_probes_go_to_the_edge(bundle, app, samples) -> None:
    """No emulated link (a real network): a worker thread POSTs the probe to ``/v1/probe``
    and the request does not wait for it; the next request takes its time in."""
    inputs, _ = samples
    edge, clock = FlakyEdge(app), FakeClock()
    with _runtime(bundle, edge, clock, initial_uplink_mbps=0.0001) as runtime:
        assert runtime.infer(inputs[0]).mode == "local"
        runtime._probe_future.result(timeout=30)  # the worker's exchange is over
        (probe,) = edge.bodies
        best = min((p for p in runtime.selector.feasible if p.kind != "local"),
                   key=lambda p: runtime.plans_ms()[p.id])
        assert probe == bytes(len(probe)) and len(probe) == best.payload_bytes
        for step in range(1, 6):  # each takes the last probe in; the loopback edge is fast
            clock.now += PROBE_FAR_GAP_S  # at most one probe per that, far from local
            if runtime.infer(inputs[step]).mode != "local":
                break
            # the first exchange opened the probe client's connection: not counted
            assert runtime.estimator.fit().samples == step - 1
            runtime._probe_future.result(timeout=30)
        else:
            pytest.fail("five probes of a loopback edge did not make a remote plan the best")
        assert runtime.stats["explorations"] == 0


def test_an_edge_that_does_not_answer_probes_is_explored_instead(bundle, app, samples) -> None:
    inputs, _ = samples
    edge, clock = FlakyEdge(app), FakeClock()
    edge.failure = "noprobe"
    with _runtime(bundle, edge, clock, initial_uplink_mbps=0.001) as runtime:
        assert runtime.infer(inputs[0]).mode == "local"
        runtime._probe_future.result(timeout=30)
        clock.now += 0.1
        assert runtime.infer(inputs[1]).mode == "local" and not runtime.uplink_probes
        assert runtime.estimator.fit().samples == 0  # a refused probe measured nothing
        clock.now += 1.0
        assert runtime.infer(inputs[2]).mode != "local"  # an exploration, as before probes
        assert runtime.stats["explorations"] == 1 and runtime.stats["uplink_probes"] == 1


def test_a_refused_probe_teaches_nothing_and_probes_go_on(bundle, app, samples) -> None:
    """A probe refused by something other than a missing route (a proxy's 502 here) and a
    worker that failed are nothing learnt, not the end of probing, and leave nothing stuck."""
    inputs, _ = samples
    edge, clock = FlakyEdge(app), FakeClock()
    edge.failure = "probe-refused"
    with _runtime(bundle, edge, clock, initial_uplink_mbps=0.001) as runtime:
        for step in range(3):
            assert runtime.infer(inputs[step]).mode == "local"
            runtime._probe_future.result(timeout=30)
            clock.now += PROBE_FAR_GAP_S
        assert runtime.uplink_probes and runtime.stats["uplink_probes"] == 3
        assert runtime.estimator.fit().samples == 0

        def broken(nbytes: int) -> float:
            raise RuntimeError("the worker failed")

        runtime._http_probe = broken
        assert runtime.infer(inputs[3]).mode == "local"  # takes the third in, sends a fourth
        with pytest.raises(RuntimeError):
            runtime._probe_future.result(timeout=30)
        clock.now += PROBE_FAR_GAP_S
        assert runtime.infer(inputs[4]).mode == "local" and runtime._probe_future is not None
        assert runtime.stats["uplink_probes"] == 5 and runtime.estimator.fit().samples == 0


def test_explorations_back_off_while_the_edge_stays_worse(bundle, app, samples) -> None:
    """A 10 s assumed round trip keeps every remote plan worse than local: explorations come
    after 1, 2, 2, ... s (doubling, capped at 2 probe intervals), not every second."""
    inputs, _ = samples
    edge, clock = FlakyEdge(app), FakeClock()
    with _runtime(bundle, edge, clock, uplink_probes=False) as runtime:
        runtime.rtt_ms = 10_000.0
        explored_at = []
        for second in range(40):
            if runtime.infer(inputs[second % len(inputs)]).mode != "local":
                explored_at.append(second)
            clock.now += 1.0
        assert explored_at == list(range(1, 40, 2))
        assert runtime.stats["explorations"] == 20
        assert runtime.explore_interval_s == 2.0
        clock.now += 2.0
        runtime.rtt_ms = 1.0  # the edge is the better plan again: the exploration finds it
        assert runtime.infer(inputs[0]).mode != "local"
        assert runtime.infer(inputs[1]).mode != "local" and runtime.explore_interval_s == 1.0


def test_a_failed_exploration_does_not_count_as_a_measurement(bundle, app, samples) -> None:
    inputs, _ = samples
    edge, clock = FlakyEdge(app), FakeClock()
    with _runtime(bundle, edge, clock, uplink_probes=False) as runtime:
        runtime.rtt_ms = 10_000.0
        for _ in range(5):  # explorations at 1 and 3 s: the interval is 2 s (the cap) from 2 s on
            runtime.infer(inputs[0])
            clock.now += 1.0
        assert runtime.explore_interval_s == 2.0
        clock.now += 2.0
        edge.failure = "refuse"
        assert runtime.infer(inputs[0]).fallback  # the exploration failed: answered locally
        assert (runtime.edge_up, runtime.explore_interval_s) == (False, 1.0)


def test_planning_uses_the_bytes_really_sent(bundle, app, samples) -> None:
    """Edge uploads are zlib-compressed: the runtime starts from its bundle's sample images as
    they would be sent, then follows what it sends (EWMA); the selector plans with that."""
    inputs, _ = samples
    edge, clock = FlakyEdge(app), FakeClock()
    declared = bundle.variant("edge").payload_bytes
    with _runtime(bundle, edge, clock, device_slowdown=1000.0) as runtime:
        sizes = [len(runtime._payload("edge", inputs[i:i + 1])[0]) for i in range(len(inputs))]
        seeded = round(sum(sizes) / len(sizes))
        assert runtime.sent_bytes["edge"] == seeded
        blank = np.zeros_like(inputs[0])
        assert runtime.infer(blank).variant_id == "edge"
        sent = len(edge.bodies[-1])
        assert runtime.sent_bytes["edge"] == pytest.approx(0.8 * seeded + 0.2 * sent)
        for _ in range(30):  # only blank images now: the planned size follows them
            runtime.infer(blank)
        assert runtime.sent_bytes["edge"] == pytest.approx(sent, rel=0.02)
        assert sent < 0.9 * declared  # so the tolerance is exceeded
        planned = next(p for p in runtime.selector.feasible if p.id == "edge").payload_bytes
        assert planned == runtime.profiles["edge"].payload_bytes < 0.9 * declared
        assert abs(planned - runtime.sent_bytes["edge"]) <= 0.1 * planned  # the tolerance
        uploads = len(edge.bodies)
        assert runtime.infer(inputs[:2]).variant_id == "edge" and len(edge.bodies) == uploads + 1
        assert runtime.sent_bytes["edge"] == pytest.approx(sent, rel=0.02)  # batches: not tracked


class LinkClock(FakeClock):
    """The runtime's clock, also the emulated link's: a link sleep advances it."""

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class StepTimer:
    """A compute timer on which every computation takes 1 ms."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.001  # read before and after each computation
        return self.now


def _slow_device(clock: LinkClock) -> EmulatedLoad:
    """A device 100x slower than the StepTimer's 1 ms: every head takes 0.1 s, 1 ms of it
    computing (on the timer) and 99 ms asleep (on ``clock``)."""
    return EmulatedLoad(constant_load(100.0), clock=clock, sleep=clock.sleep, timer=StepTimer())


def test_an_upload_into_an_outage_is_given_up_and_answered_locally(bundle, app,
                                                                   samples) -> None:
    """The upload waits its planned transfer time, then the local answer is computed beside
    it (0.1 s on this device); the link is out, so the local answer is ready first and
    answers (no fallback: the edge is up), the wait becomes a sample, and the runtime answers
    locally while the given-up bytes are still queued; once the link is back, the next remote
    request finds it and the fresh sample outweighs the stale one."""
    inputs, expected = samples
    edge, clock = FlakyEdge(app), LinkClock()
    outage = from_mbps([0.0, 50.0], bin_seconds=5.0)  # 5 s without capacity, then 50 Mbit/s
    link = ShapedLink(outage, clock=clock, sleep=clock.sleep)
    with _runtime(bundle, edge, clock, link=link, emulated_load=_slow_device(clock)) as runtime:
        started = clock.now
        result = runtime.infer(inputs[0])
        assert (result.variant_id, result.mode, result.fallback) == ("local", "local", False)
        _check(result, expected, 0)
        hedge_ms = result.transfer_ms - 100.0  # the planned transfer, then the local answer
        assert 0 < hedge_ms < 10 and result.head_ms == pytest.approx(200.0)  # head + local
        assert clock.now - started == pytest.approx(0.099 + hedge_ms / 1e3 + 0.1, abs=1e-3)
        assert runtime.stats["hedges"] == runtime.stats["deadline_misses"] == 1
        assert runtime.edge_up and runtime.stats["fallbacks"] == 0 and edge.bodies == []
        assert runtime.estimator.fit().delay_ms > 90  # the wait is a sample
        clock.now += 0.5  # the bytes still wait: local without trying the link
        assert runtime.infer(inputs[1]).mode == "local" and runtime.stats["hedges"] == 1
        clock.now += 6.0  # the outage is over (the stale sample still says 100 ms)
        result = runtime.infer(inputs[2])
        assert result.mode == "split" and runtime.stats["deadline_misses"] == 1
        _check(result, expected, 2)
        assert runtime.estimator.fit().delay_ms < 1.0
        assert runtime.infer(inputs[3]).mode == "split"


def test_after_a_missed_deadline_the_runtime_is_local_only_while_the_bytes_wait(
        bundle, app, samples) -> None:
    """A short outage (0.5 s): the given-up upload goes out when it ends; until then every
    request is answered locally without touching the link, and the first one after it
    sends remotely again (well before a probe interval has passed)."""
    inputs, expected = samples
    edge, clock = FlakyEdge(app), LinkClock()
    link = ShapedLink(from_mbps([0.0, 50.0], bin_seconds=0.5), clock=clock, sleep=clock.sleep)
    with _runtime(bundle, edge, clock, link=link, emulated_load=_slow_device(clock)) as runtime:
        assert runtime.infer(inputs[0]).mode == "local"  # given up at about 0.2 s
        assert runtime.stats["deadline_misses"] == 1 and link.pending()
        assert runtime.infer(inputs[1]).mode == "local" and edge.bodies == []  # at 0.3 s
        assert link.pending()
        clock.now += 0.25  # 0.55 s: the bytes went out at 0.5 s
        assert not link.pending()
        result = runtime.infer(inputs[2])
        assert result.mode == "split" and runtime.stats["deadline_misses"] == 1
        _check(result, expected, 2)


def test_a_hedged_upload_that_goes_out_first_answers_remotely(bundle, app, samples) -> None:
    """The upload waits past its planned time (the rate is 10x below the initial guess), the
    local answer is started beside it, and the upload goes out before that is ready: the
    remote answer is the one returned."""
    inputs, expected = samples
    edge, clock = FlakyEdge(app), LinkClock()
    link = ShapedLink(constant_trace(0.5), clock=clock, sleep=clock.sleep)
    with _runtime(bundle, edge, clock, link=link, emulated_load=_slow_device(clock)) as runtime:
        started = clock.now
        result = runtime.infer(inputs[0])
        assert result.mode == "split" and len(edge.bodies) == 1
        _check(result, expected, 0)
        assert runtime.stats["hedges"] == 1 and runtime.stats["deadline_misses"] == 0
        link_s = len(edge.bodies[0]) * 8e-6 / 0.5
        assert clock.now - started == pytest.approx(0.099 + link_s, abs=1e-4)  # head, upload
        assert result.transfer_ms >= link_s * 1e3
        assert result.head_ms == pytest.approx(100.0)  # the local run beside it does not count


class _CountingHead:
    """Wraps a head and counts its runs."""

    def __init__(self, head) -> None:
        self.head, self.runs = head, 0

    def run(self, inputs):
        self.runs += 1
        return self.head.run(inputs)


@pytest.mark.parametrize("mbps, answered_by", [(0.5, "split"), (0.0, "local")])
def test_a_hedge_computes_the_local_answer_only_when_it_is_needed(bundle, app, samples, mbps,
                                                                   answered_by) -> None:
    """Once the local run's typical time is known, a hedged upload waits for that time less
    its host share before the local head runs: an upload that goes out in that wait answers
    without a local run; one into an outage is answered locally, the link waited on for the
    local run's device time (99 ms here: 100 ms less the 1 ms the fake timer gives the run)."""
    inputs, expected = samples
    edge, clock = FlakyEdge(app), LinkClock()
    trace = constant_trace(0.5) if mbps else from_mbps([0.0, 50.0], bin_seconds=5.0)
    link = ShapedLink(trace, clock=clock, sleep=clock.sleep)
    with _runtime(bundle, edge, clock, link=link, emulated_load=_slow_device(clock)) as runtime:
        local = runtime.heads[runtime.local_id] = _CountingHead(runtime.heads[runtime.local_id])
        runtime.emulated_load.device_seconds(0.001, 100.0, key=(runtime.local_id, 1))  # typical
        started = clock.now
        result = runtime.infer(inputs[0])
        assert result.mode == answered_by and runtime.stats["hedges"] == 1
        _check(result, expected, 0)
        if answered_by == "split":
            assert local.runs == 0 and runtime.stats["deadline_misses"] == 0
            link_s = len(edge.bodies[0]) * 8e-6 / 0.5
            assert clock.now - started == pytest.approx(0.099 + link_s, abs=1e-4)
        else:
            assert local.runs == 1 and runtime.stats["deadline_misses"] == 1
            hedge_s = clock.now - started - 0.099 - 0.099  # head, hedge, the local run's wait
            assert 0 < hedge_s < 0.01 and edge.bodies == []
            assert result.transfer_ms == pytest.approx((hedge_s + 0.1) * 1e3)  # + its 1 ms here
            assert result.head_ms == pytest.approx(200.0)


def test_without_a_deadline_an_upload_waits_out_the_outage(bundle, app, samples) -> None:
    inputs, _ = samples
    edge, clock = FlakyEdge(app), LinkClock()
    link = ShapedLink(from_mbps([0.0, 50.0], bin_seconds=5.0), clock=clock, sleep=clock.sleep)
    with _runtime(bundle, edge, clock, link=link, hedge_factor=None) as runtime:
        result = runtime.infer(inputs[0])
        assert result.mode == "split" and result.transfer_ms >= 5000
        assert runtime.stats["deadline_misses"] == 0


@pytest.mark.parametrize("x, match", [
    (np.zeros((1, 16, 16), np.float64), r"found float64 \(1, 16, 16\)"),
    (np.zeros((16, 16), np.uint8), r"found uint8 \(16, 16\)"),
    (np.zeros((2, 1, 8, 8), np.uint8), r"found uint8 \(2, 1, 8, 8\)"),
])  # fmt: skip
def test_bad_inputs_are_refused(bundle, app, x, match) -> None:
    with _runtime(bundle, FlakyEdge(app), FakeClock()) as runtime:
        with pytest.raises(InvalidInputError, match=match):
            runtime.infer(x)


@pytest.mark.parametrize("options, match", [
    ({"edge_url": "edge:8000"}, "edge_url: found 'edge:8000'"),
    ({"device_slowdown": 0}, "device_slowdown: found 0"),
    ({"hysteresis": 1.0}, "hysteresis: found 1.0"),
    ({"backend": "tensorrt"}, "backend 'tensorrt' is not known"),
    ({"threads": 0}, "threads: found 0; expected an int >= 1"),
    ({"threads": 0, "backend": "litert"}, "threads: found 0; expected an int >= 1"),
    ({"hedge_factor": -1.0}, "hedge_factor: found -1.0; expected a finite number >= 0"),
    ({"hedge_factor": float("inf")}, "hedge_factor: found inf"),
    ({"initial_uplink_mbps": -1.0}, r"initial_uplink_mbps: found -1\.0"),
])  # fmt: skip
def test_bad_settings_are_refused(bundle, options, match) -> None:
    url = options.pop("edge_url", "http://127.0.0.1:9")
    with pytest.raises(InvalidConfigError, match=match):
        DeviceRuntime(bundle, url, **options)


# -- entropy-coded codes and lossy uploads ---------------------------------------------------------

from splitpack.formats import read_bundle  # noqa: E402
from splitpack.formats.entropy import calibrate_tables, tables_to_bytes  # noqa: E402
from splitpack.formats.wire import message_bytes, read_payload  # noqa: E402
from splitpack.runtimes.backends import load_backend  # noqa: E402
from tests.bundles import rewrite_bundle  # noqa: E402


def test_entropy_variants_send_entropy_coded_codes(entropy_bundle) -> None:
    inputs, expected = read_samples(entropy_bundle)
    edge, clock = FlakyEdge(create_app(entropy_bundle, token="t")), FakeClock()
    with _runtime(entropy_bundle, edge, clock) as runtime:
        for index in range(len(inputs)):
            result = runtime.infer(inputs[index])
            assert (result.mode, result.fallback) == ("split", False)
            _check(result, expected, index)
            header = read_payload(edge.bodies[-1])
            assert (header.variant_id, header.compression) == (result.variant_id, "entropy")
            q = entropy_bundle.variant(result.variant_id).quantization
            packed = message_bytes((1, *q.codes_shape), q.bits, bundle_id=header.bundle_id,
                                   variant_id=header.variant_id)
            assert len(edge.bodies[-1]) < packed


def test_a_slow_device_uploads_a_jpeg_at_the_compiled_quality(entropy_bundle) -> None:
    inputs, _ = read_samples(entropy_bundle)
    edge, clock = FlakyEdge(create_app(entropy_bundle, token="t")), FakeClock()
    tail = load_backend(entropy_bundle, "edge")
    with _runtime(entropy_bundle, edge, clock, device_slowdown=1000.0) as runtime:
        result = runtime.infer(inputs[:3])
        assert (result.variant_id, result.fallback) == ("edge", False)
        header, pixels = decode_payload(edge.bodies[-1])
        assert header.compression == "jpeg" and pixels.shape == inputs[:3].shape
        expected = tail.run(normalize_uint8(pixels, entropy_bundle.manifest.preprocessing))
        np.testing.assert_allclose(result.output, expected, atol=ATOL)


def test_codes_that_entropy_coding_would_inflate_go_bit_packed(entropy_bundle_path, entropy_bundle,
                                                               tmp_path) -> None:
    """Tables calibrated on all-zero codes make every other code cost ~16 bits: bit-packing is
    smaller, so the device sends that, and the edge (which accepts both) answers."""
    replace = {}
    for variant in entropy_bundle.manifest.variants:
        if variant.kind == "split":
            q = variant.quantization
            zeros = np.zeros((4, *q.codes_shape), np.uint8)
            replace[variant.artifacts.entropy_tables] = tables_to_bytes(calibrate_tables(zeros, q.bits))
    bundle = read_bundle(rewrite_bundle(entropy_bundle_path, tmp_path / "bundle", replace))
    inputs, expected = read_samples(bundle)
    edge, clock = FlakyEdge(create_app(bundle, token="t")), FakeClock()
    with _runtime(bundle, edge, clock) as runtime:
        result = runtime.infer(inputs[0])
        assert (result.mode, result.fallback) == ("split", False)
        _check(result, expected, 0)
        assert read_payload(edge.bodies[-1]).compression == "none"


# -- a device load that changes ---------------------------------------------------------------

def test_the_runtime_follows_a_device_load_from_what_it_measures(bundle, app, samples) -> None:
    """The device slowdown triples from 10 s to 30 s of a schedule the runtime is not told
    (fake time, one request every 100 ms, a fast uplink): its measured device load (against
    the compute it timed at start-up) moves it from its split variant to ``edge`` within 1 s of
    the change, where it stays, and back within 1 s after the load ends."""
    inputs, _ = samples
    edge, time = FlakyEdge(app), FakeTime()
    load = time.load(LoadSchedule((0.0, 10.0, 30.0), (2.0, 6.0, 2.0)))
    link = ShapedLink(constant_trace(HIGH_MBPS), clock=time.clock, sleep=lambda seconds: None)
    selected = []
    with _runtime(bundle, edge, time.clock, device_slowdown=2.0, emulated_load=load,
                  link=link) as runtime:
        for number in range(400):
            time.now = 100.0 + number * 0.1
            runtime.infer(inputs[number % len(inputs)])
            selected.append((round(number * 0.1, 1), runtime.current_variant,
                             runtime.device_load))
    before = {variant for t, variant, _ in selected if t < 10.0}
    assert len(before) == 1 and before != {"edge"}
    assert all(load == pytest.approx(1.0) for t, _, load in selected if t < 10.0)
    (usual,) = before
    switched = next(t for t, variant, _ in selected if t >= 10.0 and variant != usual)
    assert switched < 11.0
    assert {variant for t, variant, _ in selected if switched <= t < 30.0} == {"edge"}
    assert all(load == pytest.approx(3.0) for t, _, load in selected if switched <= t < 30.0)
    back = next(t for t, variant, _ in selected if t >= 30.0 and variant == usual)
    assert back < 31.0
    assert {variant for t, variant, _ in selected if t >= back} == {usual}


def test_a_reference_set_by_slow_first_runs_comes_down_and_a_load_does_not_raise_it(
        bundle, app) -> None:
    """A head's first runs are slow: once three later runs take less (by more than the
    slack), their median is its reference and its plan; runs three times slower (a load)
    read as load 3 and leave the reference where it is."""
    edge, clock = FlakyEdge(app), FakeClock()
    with _runtime(bundle, edge, clock, plan_measured_heads=True, device_slowdown=10.0) as runtime:
        for _ in range(3):
            runtime._observe_device_ms("local", 12.0)  # the first runs
        assert runtime.unloaded_ms["local"] == 12.0
        runtime._observe_device_ms("local", 11.9)
        runtime._observe_device_ms("local", 11.9)
        assert runtime.unloaded_ms["local"] == 12.0  # within the slack (and one is 12)
        runtime._observe_device_ms("local", 10.0)
        runtime._observe_device_ms("local", 10.0)
        assert runtime.unloaded_ms["local"] == 10.0  # median of 11.9, 10, 10
        assert runtime.profiles["local"].head_ms == pytest.approx(1.0)  # 10 ms / 10x
        for _ in range(5):
            runtime._observe_device_ms("local", 30.0)
        assert runtime.unloaded_ms["local"] == 10.0 and runtime.device_load == pytest.approx(3.0)


def test_measured_heads_replace_their_profiles_and_unmeasured_ones_stay_optimistic(bundle, app) -> None:
    """A measured variant is planned with what its device computation took (the head and the
    encoding of what it sends, so ``encode_ms`` 0); one not measured yet with its profile,
    scaled down when the measured ones run faster than theirs, never up."""
    from splitpack.formats.bundle import Bundle

    coded = Bundle(bundle.root, bundle.manifest.model_copy(update={"variants": [
        v.model_copy(update={"latency": v.latency.model_copy(update={"encode_ms": 0.02})})
        if v.kind == "split" else v for v in bundle.manifest.variants]}))
    edge, clock = FlakyEdge(app), FakeClock()
    with _runtime(coded, edge, clock, plan_measured_heads=True, device_slowdown=10.0) as runtime:
        low, high = [v for v, p in runtime.profiles.items() if p.kind == "split"]
        head = {vid: p.head_ms for vid, p in runtime.profiles.items()}
        encode = {vid: p.encode_ms for vid, p in runtime.profiles.items()}
        assert encode[low] > 0 and encode[high] > 0  # so that folding it in shows
        device = {vid: head[vid] + encode[vid] for vid in head}
        for _ in range(3):  # the reference: 3 requests at load 1, stretched 10x
            runtime._observe_device_ms(low, 10.0 * device[low] * 4.0)  # 4x its profile
        assert runtime.profiles[low].head_ms == pytest.approx(4.0 * device[low])
        assert runtime.profiles[low].encode_ms == 0.0  # measured with the head
        assert (runtime.profiles[high].head_ms, runtime.profiles[high].encode_ms) == (
            head[high], encode[high])  # slower than profiled: not scaled up
        planned = {p.id: p for p in runtime.selector.candidates}  # what the selector plans with
        assert (planned[low].head_ms, planned[low].encode_ms) == (pytest.approx(4.0 * device[low]), 0.0)
        for _ in range(3):  # a head faster than its profile scales the unmeasured ones down
            runtime._observe_device_ms("local", 10.0 * device["local"] * 0.01)
        scale = min(1.0, float(np.median([4.0, 0.01])))
        assert runtime.profiles["local"].head_ms == pytest.approx(0.01 * device["local"])
        assert runtime.profiles[high].head_ms == pytest.approx(scale * head[high])
        assert runtime.profiles[high].encode_ms == pytest.approx(scale * encode[high])


class _SentLongAgo:
    """A link whose upload went out 10 ms ago by its own clock: longer ago than the local
    head's 1 ms run (two clocks read a few microseconds apart can say so)."""

    def backlog_s(self) -> float:
        return -0.010


def test_an_upload_that_went_out_before_the_local_head_ran_waited_nothing_more(
        bundle, app, samples) -> None:
    inputs, _ = samples
    clock = LinkClock()
    with _runtime(bundle, FlakyEdge(app), clock, emulated_load=_slow_device(clock)) as runtime:
        runtime.link = _SentLongAgo()
        waited, output, _ = runtime._local_beside(inputs[:1].astype(np.float32), ("local", 1),
                                                  100.0, 0.0)
        assert output is None and waited == 0.0  # was -0.009: a negative transfer sample


def test_each_plan_is_corrected_by_what_its_requests_take_beyond_it(bundle, app, samples) -> None:
    """``plan_offsets_ms``: the median, over a variant's last requests, of what each took
    beyond its plan with the device compute and the link left out; a split not run yet
    borrows the other splits'; the selector plans with them (``plans_ms``)."""
    import statistics

    from splitpack.runtimes import device

    inputs, _ = samples
    edge, clock = FlakyEdge(app), FakeClock()
    with _runtime(bundle, edge, clock, plan_measured_heads=True) as runtime:
        low, high = [v for v, p in runtime.profiles.items() if p.kind == "split"]
        runtime.pin("local")
        beyond = []
        for step in range(device.RESIDUAL_REQUESTS + 3):
            result = runtime.infer(inputs[step % len(inputs)])
            beyond.append(result.latency_ms - result.head_ms)  # local plans its head only
            if step + 1 < device.RESIDUAL_MIN:
                assert "local" not in runtime.plan_offsets_ms
        # refreshed every RESIDUAL_REFRESH requests: RESIDUAL_REQUESTS + 3 is a multiple of it
        assert (device.RESIDUAL_REQUESTS + 3) % device.RESIDUAL_REFRESH == 0
        assert runtime.plan_offsets_ms["local"] == pytest.approx(
            statistics.median(beyond[-device.RESIDUAL_REQUESTS:]), abs=1e-9)
        assert runtime.plan_offsets_ms["local"] > 0  # the runtime's own time is not nothing
        assert set(runtime.plan_offsets_ms) == {"local"}  # a kind not run has no offset

        runtime.pin(low)
        for step in range(device.RESIDUAL_MIN):
            assert runtime.infer(inputs[step]).variant_id == low
        conditions = runtime.conditions()
        offsets = runtime.plan_offsets_ms
        assert offsets[high] == offsets[low] and "edge" not in offsets
        plain = runtime.selector.latencies_ms(conditions)
        assert runtime.plans_ms() == {
            vid: pytest.approx(ms + offsets.get(vid, 0.0)) for vid, ms in plain.items()}

    # a runtime that plans with its profiles (plan_measured_heads=False) learns no offset
    with _runtime(bundle, FlakyEdge(app), FakeClock()) as runtime:
        for step in range(device.RESIDUAL_MIN + 1):
            runtime.infer(inputs[step])
        assert runtime.plan_offsets_ms == {}
