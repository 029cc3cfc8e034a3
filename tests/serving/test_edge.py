"""The edge server in process: answers, a table of refused requests, back-pressure, observability."""

from __future__ import annotations

import argparse
import asyncio
import re
import struct
import threading
import time as wall_time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitpack.cli import runtime as commands
from splitpack.errors import InvalidConfigError
from splitpack.formats import read_samples
from splitpack.formats.variants import normalize_uint8
from splitpack.formats.wire import decode_payload, encode_payload
from splitpack.runtimes.backends import load_backend
from splitpack.runtimes.load import EmulatedLoad, LoadSchedule, constant_load
from splitpack.serving.edge import EdgeServer, create_app, serve
from splitpack.serving.loopback import edge_server
from tests.runtimes.test_load import FakeTime

TOKEN = "s3cret"
AUTH = {"authorization": f"Bearer {TOKEN}", "content-type": "application/octet-stream"}


@pytest.fixture(scope="module")
def requests_by_variant(bundle, wire_id):
    """A valid payload per served variant and sample, and the offline-expected outputs."""
    inputs, expected = read_samples(bundle)
    normalized = normalize_uint8(inputs, bundle.manifest.preprocessing)
    payloads: dict[str, list[bytes]] = {"edge": [
        encode_payload(inputs[i:i + 1], bundle_id=wire_id, variant_id="edge", bits=8)
        for i in range(len(inputs))]}
    for variant in bundle.manifest.variants:
        if variant.kind != "split":
            continue
        head, q = load_backend(bundle, variant), variant.quantization
        payloads[variant.id] = [
            encode_payload(head.run(normalized[i:i + 1]), bundle_id=wire_id, variant_id=variant.id,
                           bits=q.bits, scale=q.scale, offset=q.offset)
            for i in range(len(inputs))]
    return payloads, expected


@pytest.fixture(scope="module")
def client(bundle):
    with TestClient(create_app(bundle, token=TOKEN, max_inflight=4)) as test_client:
        yield test_client


def _answer(response: httpx.Response, wire_id: str, variant_id: str) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    assert float(response.headers["x-splitpack-tail-ms"]) >= 0
    assert int(response.headers["x-splitpack-queue"]) >= 1
    header, output = decode_payload(response.content)
    assert (header.bundle_id, header.variant_id, header.dtype, header.bits) == (
        wire_id, variant_id, "float32", 32)
    return output


def test_every_variant_is_answered_with_its_offline_output(client, requests_by_variant,
                                                           wire_id) -> None:
    payloads, expected = requests_by_variant
    assert sorted(payloads) == sorted(v for v in expected if v != "local")
    for variant_id, messages in payloads.items():
        for index, message in enumerate(messages):
            output = _answer(client.post("/v1/infer", content=message, headers=AUTH), wire_id,
                             variant_id)
            assert output.shape == (1, 10)
            np.testing.assert_allclose(output[0], expected[variant_id][index], atol=1e-4)


def test_a_batch_is_answered_row_by_row(client, bundle, wire_id) -> None:
    inputs, expected = read_samples(bundle)
    message = encode_payload(inputs, bundle_id=wire_id, variant_id="edge", bits=8)
    output = _answer(client.post("/v1/infer", content=message, headers=AUTH), wire_id, "edge")
    np.testing.assert_allclose(output, expected["edge"], atol=1e-4)


def _patch(message: bytes, offset: int, fmt: str, *values) -> bytes:
    return message[:offset] + struct.pack(fmt, *values) + message[offset + struct.calcsize(fmt):]


def _dtype_offset(message: bytes) -> int:
    return 8 + message[6] + message[7]  # fixed 8 bytes, then the two ids


def _malformed(case: str, valid: bytes, wire_id: str, split_id: str):
    """(body, headers) of one bad request, built from a valid 2-bit payload of ``split_id``."""
    header, codes = decode_payload(valid)
    scale, offset = header.scale, header.offset  # the manifest's, whatever the codec chose
    ok = dict(bundle_id=wire_id, variant_id=split_id, bits=2, scale=scale, offset=offset)
    encode = lambda array, **changes: encode_payload(array, **{**ok, **changes})  # noqa: E731
    at = _dtype_offset(valid)
    cases = {
        "truncated": lambda: valid[: len(valid) // 2],
        "empty body": lambda: b"",
        "bad magic": lambda: b"JUNK" + valid[4:],
        "bad dtype code": lambda: _patch(valid, at, "<B", 9),
        "huge shape": lambda: _patch(valid, at + 3, "<4I", 65535, 65535, 65535, 65535),
        "wrong data length": lambda: _patch(valid, at + 3 + 16 + 17, "<I", 5),
        "bad checksum": lambda: valid[:-1] + bytes([valid[-1] ^ 0xFF]),
        "trailing bytes": lambda: valid + b"\x00",
        "wrong bundle id": lambda: encode(codes, bundle_id="0123456789abcdef"),
        "unknown variant": lambda: encode(codes, variant_id="cut99-c1s1b1"),
        "local variant": lambda: encode(codes, variant_id="local"),
        "float codes": lambda: encode(codes.astype(np.float32), bits=32),
        "wrong bits": lambda: encode(codes, bits=4),
        "wrong shape": lambda: encode(codes.reshape(1, 2, 4, 16)),
        "batch too large": lambda: encode(np.repeat(codes, 65, axis=0)),
        "wrong scale": lambda: encode(codes, scale=0.5),
        "wrong offset": lambda: encode(codes, offset=-0.5),
        "missing token": lambda: valid,
        "wrong token": lambda: valid,
        "wrong content type": lambda: valid,
        "body too large": lambda: valid + bytes(1_000_000),  # over 64 worst-case PNG uploads
    }
    headers = dict(AUTH)
    if case == "missing token":
        del headers["authorization"]
    if case == "wrong token":
        headers["authorization"] = "Bearer guess"
    if case == "wrong content type":
        headers["content-type"] = "application/json"
    return cases[case](), headers


MALFORMED = [
    ("truncated", 400, "truncated in field"),
    ("empty body", 400, "body: empty"),
    ("bad magic", 400, "field 'magic'"),
    ("bad dtype code", 400, "field 'dtype'"),
    ("huge shape", 400, "field 'shape'"),
    ("wrong data length", 400, "field 'data_length'"),
    ("bad checksum", 400, "field 'crc32'"),
    ("trailing bytes", 400, "trailing byte"),
    ("wrong bundle id", 409, "bundle_id: found '0123456789abcdef'"),
    ("unknown variant", 404, "variant_id: 'cut99-c1s1b1' has no tail"),
    ("local variant", 404, "variant_id: 'local' has no tail"),
    ("float codes", 400, "dtype: found 'float32'"),
    ("wrong bits", 400, "bits: found 4"),
    ("wrong shape", 400, r"shape: found \(1, 2, 4, 16\)"),
    ("batch too large", 400, "shape: found \\(65, 2, 8, 8\\).*batch <= 64"),
    ("wrong scale", 400, "scale: found 0.5"),
    ("wrong offset", 400, "offset: found -0.5"),
    ("missing token", 401, "authorization: missing"),
    ("wrong token", 401, "authorization: wrong bearer token"),
    ("wrong content type", 415, "content-type: found 'application/json'"),
    ("body too large", 413, "content-length: 100"),
]  # fmt: skip


@pytest.mark.parametrize("case, status, match", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_bad_requests_are_refused_and_the_server_keeps_answering(
        client, requests_by_variant, wire_id, split_ids, case, status, match) -> None:
    payloads, expected = requests_by_variant
    valid = payloads[split_ids[0]][0]
    body, headers = _malformed(case, valid, wire_id, split_ids[0])
    response = client.post("/v1/infer", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    reason = response.json()["error"]
    assert re.search(match, reason), reason
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    output = _answer(client.post("/v1/infer", content=valid, headers=AUTH), wire_id, split_ids[0])
    np.testing.assert_allclose(output[0], expected[split_ids[0]][0], atol=1e-4)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_damage_never_crashes_the_server(client, requests_by_variant, data) -> None:
    payloads, _ = requests_by_variant
    valid = payloads[data.draw(st.sampled_from(sorted(payloads)))][0]
    damage = data.draw(st.sampled_from(["flip", "cut", "random", "splice"]))
    if damage == "flip":
        position = data.draw(st.integers(0, len(valid) - 1))
        bit = data.draw(st.integers(0, 7))
        body = valid[:position] + bytes([valid[position] ^ (1 << bit)]) + valid[position + 1:]
    elif damage == "cut":
        body = valid[: data.draw(st.integers(0, len(valid) - 1))]
    elif damage == "random":
        body = data.draw(st.binary(min_size=0, max_size=300))
    else:
        body = valid[:40] + data.draw(st.binary(min_size=1, max_size=64)) + valid[40:]
    response = client.post("/v1/infer", content=body, headers=AUTH)
    assert response.status_code in (400, 404, 409), response.text
    assert set(response.json()) == {"error"}


def test_a_streamed_body_is_cut_off_at_the_limit(client, requests_by_variant, split_ids) -> None:
    valid = requests_by_variant[0][split_ids[0]][0]
    chunks = iter([valid] + [bytes(16_384)] * 64)  # no Content-Length: chunked upload
    response = client.post("/v1/infer", content=chunks, headers=AUTH)
    assert response.status_code == 413
    assert response.json()["error"].startswith("body: over the largest valid payload")


def test_requests_beyond_max_inflight_get_503(bundle, requests_by_variant, monkeypatch) -> None:
    app = create_app(bundle, max_inflight=1)
    server = app.state.edge
    entered, release = threading.Event(), threading.Event()
    run_tail = server.run_tail

    def blocked_tail(variant_id, array):  # holds the only slot until the test lets go
        entered.set()
        release.wait(10)
        return run_tail(variant_id, array)

    monkeypatch.setattr(server, "run_tail", blocked_tail)
    message = requests_by_variant[0]["edge"][0]

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as edge:
            first = asyncio.create_task(edge.post("/v1/infer", content=message))
            assert await asyncio.to_thread(entered.wait, 10)
            busy = await edge.post("/v1/infer", content=message)
            metadata = (await edge.get("/metadata")).json()
            release.set()
            return busy, await first, metadata

    busy, first, metadata = asyncio.run(scenario())
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert busy.json() == {"error": "server busy: 1 requests in flight (limit 1)"}
    assert metadata["queue"] == 1
    assert first.status_code == 200 and server.inflight == 0


def test_health_metadata_and_metrics(client, bundle, wire_id, requests_by_variant) -> None:
    health = client.get("/health")  # no token needed
    assert health.json() == {"status": "ok", "wire_bundle_id": wire_id}
    assert client.get("/metadata").status_code == 401
    assert client.get("/metrics").status_code == 401
    assert client.post("/v1/infer", content=b"x").status_code == 401
    client.post("/v1/infer", content=requests_by_variant[0]["edge"][0], headers=AUTH)
    metadata = client.get("/metadata", headers=AUTH).json()
    assert (metadata["bundle_id"], metadata["wire_bundle_id"]) == (bundle.manifest.bundle_id,
                                                                   wire_id)
    assert metadata["provider"] == "CPUExecutionProvider" and metadata["queue"] == 0
    by_id = {v["id"]: v for v in metadata["variants"]}
    assert sorted(by_id) == sorted(v.id for v in bundle.manifest.variants if v.kind != "local")
    assert by_id["edge"]["tail_ms"] == bundle.variant("edge").latency.tail_ms
    assert by_id["edge"]["measured_tail_ms"] > 0 and by_id["edge"]["requests"] >= 1
    assert by_id["edge"]["input"] == {"dtype": "uint8", "bits": 8, "shape": [1, 16, 16],
                                      "scale": 1.0, "offset": 0.0,
                                      "compressions": ["none", "zlib", "png"]}
    metrics = client.get("/metrics", headers=AUTH)
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = metrics.text
    assert "# TYPE splitpack_edge_requests_total counter" in text
    count = next(line for line in text.splitlines()
                 if line.startswith('splitpack_edge_requests_total{variant="edge",status="200"}'))
    assert int(count.split()[-1]) >= 1
    assert 'splitpack_edge_requests_total{variant="-",status="401"}' in text
    assert 'splitpack_edge_tail_seconds_count{variant="edge"}' in text
    assert "splitpack_edge_inflight 0" in text
    assert f'splitpack_edge_info{{wire_bundle_id="{wire_id}"' in text


def test_a_probe_is_read_and_dropped_after_the_checks_of_an_infer(client) -> None:
    """``POST /v1/probe``: what a device answering locally times to learn its uplink."""
    answer = client.post("/v1/probe", content=bytes(700), headers=AUTH)
    assert (answer.status_code, answer.content) == (204, b"")
    assert answer.headers["x-splitpack-probe-bytes"] == "700"
    refused = {
        "no token": (401, "authorization", {"content-type": "application/octet-stream"}, b"x"),
        "json": (415, "content-type", {**AUTH, "content-type": "application/json"}, b"x"),
        "empty": (400, "body", AUTH, b""),
        "too large": (413, "content-length", AUTH,
                      bytes(client.app.state.edge.max_body_bytes + 1)),
    }
    for name, (status, field, headers, body) in refused.items():
        answer = client.post("/v1/probe", content=body, headers=headers)
        assert answer.status_code == status, name
        assert answer.json()["error"].startswith(field), (name, answer.json())
    assert client.get("/v1/probe").status_code == 405


def test_server_settings_are_checked(bundle) -> None:
    with pytest.raises(InvalidConfigError, match="max_inflight: found 0"):
        EdgeServer(bundle, max_inflight=0)
    with pytest.raises(InvalidConfigError, match="token"):
        EdgeServer(bundle, token="")
    with pytest.raises(InvalidConfigError, match="emulated_load: this edge runs no tails"):
        EdgeServer(bundle, load_tails=False, emulated_load=EmulatedLoad(constant_load(2.0)))


def test_serve_command_passes_its_options(bundle_path, monkeypatch) -> None:
    seen = {}
    monkeypatch.setattr("splitpack.serving.edge.serve", lambda bundle, **kw: seen.update(kw))
    parser = argparse.ArgumentParser()
    commands.add_runtime_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", str(bundle_path), "--port", "9", "--max-inflight", "2",
                              "--token", "t", "--threads", "1"])
    assert args.handler(args) == 0
    assert seen == {"host": "127.0.0.1", "port": 9, "token": "t", "max_inflight": 2, "threads": 1,
                    "load_trace": None, "load_start_offset_s": 0.0, "load_clock": "start"}
    args = parser.parse_args(["serve", str(bundle_path), "--load-trace", "edge.csv",
                              "--load-start-offset", "5", "--load-clock", "stdin"])
    assert args.handler(args) == 0
    assert (seen["load_trace"], seen["load_start_offset_s"], seen["load_clock"]) == (
        "edge.csv", 5.0, "stdin")


@pytest.mark.parametrize("argv, match", [
    (["--engine", "ray", "--load-trace", "edge.csv"],
     r"--load-trace edge\.csv: the ray engine runs tails on its replicas, which cannot stretch "
     r"them; use --engine local"),
])  # fmt: skip
def test_serve_refuses_a_load_its_engine_cannot_apply(bundle_path, argv, match) -> None:
    parser = argparse.ArgumentParser()
    commands.add_runtime_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", str(bundle_path), *argv])
    with pytest.raises(InvalidConfigError, match=match):
        args.handler(args)


def test_serve_refuses_a_bad_load_clock(bundle) -> None:
    with pytest.raises(InvalidConfigError, match="load_clock: found 'later'; expected one of "
                       "start, stdin"):
        serve(bundle, load_trace="edge.csv", load_clock="later")


def test_the_edge_stretches_its_tails_to_its_load_schedule(bundle) -> None:
    """Each tail is stretched to the slowdown scheduled when it starts (fake time: 1 ms of
    compute sleeps 1 ms more at 2x, 5 ms more at 6x), and /metadata tells the load now."""
    inputs, expected = read_samples(bundle)
    time = FakeTime()
    load = time.load(LoadSchedule((0.0, 10.0, 30.0), (2.0, 6.0, 2.0)))
    server = EdgeServer(bundle, emulated_load=load)
    for elapsed in (5.0, 15.0, 35.0):
        time.now = 100.0 + elapsed
        output, _ = server.run_tail("edge", inputs[:1])
        np.testing.assert_allclose(output, expected["edge"][:1], atol=1e-4)
    assert time.sleeps == pytest.approx([0.001, 0.005, 0.001])
    assert server.metadata()["load"] == {"path": "<memory>", "trace_s": 35.0, "slowdown": 2.0}
    assert EdgeServer(bundle).metadata()["load"] is None


def test_an_edge_process_follows_the_load_clock_it_is_given(bundle_path, tmp_path) -> None:
    """The benchmark's way: the edge's load clock starts from its standard input, at the
    writer's wall-clock time (here 20 s ago, so its trace time is about 20 s)."""
    trace = tmp_path / "edge_load.csv"
    trace.write_text("seconds,slowdown\n0,1\n10,3\n100000,1\n")
    with edge_server(bundle_path, threads=1, load_trace=trace) as edge:
        before = httpx.get(f"{edge.url}/metadata").json()["load"]
        edge.start_load_clock(wall_time.time() - 20.0)
        for _ in range(100):  # the line is read by another thread of the edge
            after = httpx.get(f"{edge.url}/metadata").json()["load"]
            if after["trace_s"] is not None:
                break
            wall_time.sleep(0.05)
    assert before == {"path": str(trace), "trace_s": None, "slowdown": 1.0}
    assert after["slowdown"] == 3.0 and 20.0 <= after["trace_s"] < 100000


# -- entropy-coded codes and image uploads ------------------------------------------------------

from splitpack.formats.wire import read_payload  # noqa: E402
from splitpack.runtimes.backends import load_entropy_tables  # noqa: E402
from tests.formats.test_wire import craft  # noqa: E402


@pytest.fixture(scope="module")
def entropy_client(entropy_bundle):
    with TestClient(create_app(entropy_bundle)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def entropy_requests(entropy_bundle):
    """Per split variant: (entropy-coded payloads per sample, tables); and the edge's JPEGs."""
    bundle = entropy_bundle
    wire_id = app_wire_id(bundle)
    inputs, expected = read_samples(bundle)
    normalized = normalize_uint8(inputs, bundle.manifest.preprocessing)
    requests = {}
    for variant in bundle.manifest.variants:
        if variant.kind != "split":
            continue
        head, q, tables = load_backend(bundle, variant), variant.quantization, load_entropy_tables(bundle, variant)
        requests[variant.id] = ([encode_payload(head.run(normalized[i:i + 1]), bundle_id=wire_id,
                                                variant_id=variant.id, bits=q.bits, scale=q.scale,
                                                offset=q.offset, compression="entropy", tables=tables)
                                 for i in range(len(inputs))], tables)
    jpegs = [encode_payload(inputs[i:i + 1], bundle_id=wire_id, variant_id="edge", bits=8,
                            compression="jpeg", quality=50) for i in range(len(inputs))]
    return requests, jpegs, expected


def app_wire_id(bundle) -> str:
    from splitpack.runtimes.backends import wire_bundle_id

    return wire_bundle_id(bundle.manifest)


def test_entropy_coded_codes_give_the_offline_outputs(entropy_client, entropy_bundle,
                                                      entropy_requests) -> None:
    requests, _, expected = entropy_requests
    wire_id = app_wire_id(entropy_bundle)
    for variant_id, (messages, _) in requests.items():
        for index, message in enumerate(messages):
            assert read_payload(message).compression == "entropy"
            output = _answer(entropy_client.post("/v1/infer", content=message), wire_id, variant_id)
            np.testing.assert_allclose(output[0], expected[variant_id][index], atol=1e-4)


def test_jpeg_uploads_are_decoded_before_normalizing(entropy_client, entropy_bundle,
                                                     entropy_requests) -> None:
    _, jpegs, _ = entropy_requests
    tail = load_backend(entropy_bundle, "edge")
    for message in jpegs:
        pixels = decode_payload(message)[1]  # what the edge decodes with Pillow
        expected = tail.run(normalize_uint8(pixels, entropy_bundle.manifest.preprocessing))
        output = _answer(entropy_client.post("/v1/infer", content=message),
                         app_wire_id(entropy_bundle), "edge")
        np.testing.assert_allclose(output, expected, atol=1e-4)


def _recrafted(message: bytes, **changes) -> bytes:
    """``message`` with some fields replaced and a valid crc32 (so only the decoders catch it)."""
    header = read_payload(message)
    codes = {"none": 0, "zlib": 1, "entropy": 2, "png": 3, "jpeg": 4, "webp": 5}
    fields = {"bundle_id": header.bundle_id.encode(), "variant_id": header.variant_id.encode(),
              "dtype": 1, "bits": header.bits, "shape": header.shape, "scale": header.scale,
              "offset": header.offset, "compression": codes[header.compression],
              "data": header.data, **changes}
    return craft(**fields)


def _png(mode: str, size: tuple[int, int]) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return struct.pack("<I", buffer.tell()) + buffer.getvalue()


BAD_CODED = [
    ("entropy stream truncated", "split", lambda m: _recrafted(m, data=read_payload(m).data[:-4]),
     400, "field 'data'.*(words left|crc32)"),
    ("entropy stream corrupted", "split", lambda m: _recrafted(
        m, data=read_payload(m).data[:4] + bytes(len(read_payload(m).data) - 4)),
     400, "field 'data'.*(words left|crc32|invalid entropy-coded stream)"),
    ("entropy checksum wrong", "split", lambda m: _recrafted(
        m, data=bytes(4) + read_payload(m).data[4:]), 400, "crc32 .*sender's crc32"),
    ("entropy stream not in words", "split", lambda m: _recrafted(m, data=read_payload(m).data + b"x"),
     400, "data_length.*multiple of 4"),
    ("entropy to the edge variant", "edge", lambda m: _recrafted(m, compression=2, data=bytes(8)),
     400, "compression: found 'entropy' for variant 'edge'"),
    ("webp to an edge that takes jpeg", "edge", lambda m: _recrafted(m, compression=5),
     400, "compression: found 'webp'.*none, zlib, png, jpeg"),
    ("jpeg that is not one", "edge", lambda m: _recrafted(m, data=_png("L", (16, 16))),
     400, "image 0, not a readable jpeg"),
    ("png of another size", "edge", lambda m: _recrafted(m, compression=3, data=_png("L", (16, 15))),
     400, "image 0 of 16x15 pixels, allowed 16x16"),
    ("png of another mode", "edge", lambda m: _recrafted(m, compression=3, data=_png("RGB", (16, 16))),
     400, "image 0 in mode RGB, allowed mode L"),
]  # fmt: skip


@pytest.mark.parametrize("case, target, corrupt, status, match", BAD_CODED,
                         ids=[c[0] for c in BAD_CODED])
def test_bad_coded_payloads_get_a_4xx_with_the_reason(entropy_client, entropy_bundle,
                                                      entropy_requests, case, target, corrupt,
                                                      status, match) -> None:
    requests, jpegs, expected = entropy_requests
    variant_id = next(iter(requests)) if target == "split" else "edge"
    valid = requests[variant_id][0][0] if target == "split" else jpegs[0]
    response = entropy_client.post("/v1/infer", content=corrupt(valid))
    assert response.status_code == status, response.text
    assert re.search(match, response.json()["error"]), response.json()["error"]
    assert _answer(entropy_client.post("/v1/infer", content=valid), app_wire_id(entropy_bundle),
                   variant_id).shape == (1, 10)  # and it keeps answering


def test_a_bitpack_variant_refuses_entropy_coded_codes(client, requests_by_variant, wire_id,
                                                       split_ids) -> None:
    valid = requests_by_variant[0][split_ids[0]][0]
    response = client.post("/v1/infer", content=_recrafted(valid, compression=2,
                                                           data=bytes(8)), headers=AUTH)
    assert response.status_code == 400
    assert re.search(r"compression: found 'entropy' .* expected one of none, zlib$",
                     response.json()["error"]), response.json()["error"]


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_damage_of_coded_payloads_never_crashes_the_server(entropy_client, entropy_requests,
                                                                  data) -> None:
    requests, jpegs, _ = entropy_requests
    valid = data.draw(st.sampled_from([messages[0] for messages, _ in requests.values()] + jpegs[:1]))
    header = read_payload(valid)
    body = _recrafted(valid, data=data.draw(st.binary(min_size=1, max_size=len(header.data) + 8)))
    response = entropy_client.post("/v1/infer", content=body)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}
