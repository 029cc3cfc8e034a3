"""``splitpack bench concurrency``: many concurrent clients send real wire payloads (split
variants' codes of the bundle's samples, and raw ``edge`` uploads) to one edge process."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from splitpack.bench.support import (
    MAX_BUSY_RETRIES, OCTET_STREAM_HEADERS, host_info, model_input, percentile,
)
from splitpack.errors import InternalError, InvalidConfigError, WireFormatError
from splitpack.formats.bundle import Bundle, read_bundle, read_samples
from splitpack.formats.wire import decode_payload
from splitpack.runtimes.backends import (
    encode_request, load_backend, load_entropy_tables, wire_bundle_id,
)  # fmt: skip
from splitpack.serving.loopback import edge_process

__all__ = ["CONCURRENCY_FORMAT", "run_concurrency_benchmark"]

CONCURRENCY_FORMAT = "splitpack-bench-concurrency/1"


def _wire_payloads(bundle: Bundle, inputs: np.ndarray) -> list[tuple[str, int, bytes]]:
    """(variant id, sample index, payload) for every split variant and sample, then ``edge``'s."""
    manifest, wire_id = bundle.manifest, wire_bundle_id(bundle.manifest)
    model_inputs = model_input(manifest, inputs)
    payloads = []
    for variant in manifest.variants:
        if variant.kind == "split":
            head, tables = load_backend(bundle, variant), load_entropy_tables(bundle, variant)
            for index in range(len(inputs)):
                codes = head.run(model_inputs[index:index + 1])
                payloads.append((variant.id, index, encode_request(
                    variant, codes, wire_bundle_id=wire_id, tables=tables)))
        elif variant.kind == "edge":  # as DeviceRuntime uploads: the manifest's format
            payloads += [(variant.id, index, encode_request(
                variant, inputs[index:index + 1], wire_bundle_id=wire_id))
                for index in range(len(inputs))]
    return payloads


async def _client(url: str, plan: list[tuple[str, int, bytes]], expected: dict,
                  outcomes: list[dict]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        for variant_id, index, payload in plan:
            started, busy, failure = time.perf_counter(), 0, None
            while True:
                try:
                    response = await client.post("/v1/infer", content=payload, headers=OCTET_STREAM_HEADERS)
                except httpx.HTTPError as exc:
                    failure = f"{type(exc).__name__}: {exc}"
                    break
                if response.status_code == 503 and busy < MAX_BUSY_RETRIES:
                    busy += 1  # the edge is full: wait as Retry-After says, then send again
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                    continue
                break
            latency_ms = (time.perf_counter() - started) * 1e3
            if failure is None and response.status_code != 200:
                failure = f"edge answered {response.status_code}: {response.text[:200]}"
            matches = None
            if failure is None:
                try:
                    output = decode_payload(response.content)[1][0]
                    matches = bool(np.allclose(output, expected[variant_id][index], atol=1e-3, rtol=1e-3))
                except WireFormatError as exc:
                    failure = f"malformed response: {exc}"
            outcomes.append({"variant": variant_id, "latency_ms": latency_ms, "busy": busy,
                             "error": failure, "matches": matches})


def run_concurrency_benchmark(bundle: str | os.PathLike[str], *, clients: int = 32,
                              requests: int = 200, edge_every: int = 8,
                              max_inflight: int | None = None, max_run_s: float = 300.0,
                              out_json: str | os.PathLike[str] | None = None) -> dict:
    """Many concurrent clients send real wire payloads to one edge process (no shaping).

    Args:
        bundle: A bundle folder or archive with samples.
        clients: Concurrent clients, each with its own connection.
        requests: Requests per client, one at a time.
        edge_every: Every ``edge_every``-th request of a client is a raw ``edge`` upload; the
            rest cycle through the split variants' codes of the bundle's samples.
        max_inflight: The server's ``--max-inflight``; None for ``clients``, so that every
            client's request can be in flight at once (the server's default, 8, answers 32
            clients with 503s). A 503 is still retried after ``Retry-After`` (at most
            ``MAX_BUSY_RETRIES`` times), and counted.
        max_run_s: Give up (an InternalError) when the clients take longer than this.
        out_json: Where to write the result (optional).

    Returns:
        errors, busy_503, p50/p90/p99 latency, throughput, max_inflight and the counts.
    """
    for name, value in (("clients", clients), ("requests", requests), ("edge_every", edge_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidConfigError(f"{name}: found {value!r}; expected an int >= 1")
    opened, host = read_bundle(bundle), host_info()
    inputs, expected = read_samples(opened)
    payloads = _wire_payloads(opened, inputs)
    split = [p for p in payloads if p[0] != "edge"] or payloads
    edge = [p for p in payloads if p[0] == "edge"]
    plans = [[edge[(c + r) % len(edge)] if edge and r % edge_every == edge_every - 1
              else split[(c * requests + r) % len(split)] for r in range(requests)]
             for c in range(clients)]
    outcomes: list[dict] = []
    with edge_process(opened.root, max_inflight=max_inflight or clients) as url:
        metadata = httpx.get(f"{url}/metadata", timeout=5.0).json()

        async def all_clients() -> None:
            await asyncio.wait_for(asyncio.gather(*(_client(url, plan, expected, outcomes)
                                                    for plan in plans)), max_run_s)

        started = time.perf_counter()
        try:
            asyncio.run(all_clients())
        except TimeoutError:
            raise InternalError(f"{clients} clients x {requests} requests took over "
                                f"{max_run_s:g} s; {len(outcomes)} answered") from None
        wall_s = time.perf_counter() - started
    latencies = [o["latency_ms"] for o in outcomes if o["error"] is None]
    result = {
        "format": CONCURRENCY_FORMAT, "clients": clients, "requests_per_client": requests,
        "requests": clients * requests, "answered": len(latencies),
        "errors": sum(o["error"] is not None for o in outcomes),
        "error_examples": [o["error"] for o in outcomes if o["error"]][:5],
        "mismatches": sum(o["matches"] is False for o in outcomes),
        "busy_503": sum(o["busy"] for o in outcomes),
        "requests_retried_after_503": sum(o["busy"] > 0 for o in outcomes),
        "max_inflight": metadata["max_inflight"],
        "max_inflight_source": "= clients" if max_inflight is None else "--max-inflight",
        "busy_policy": f"503: wait Retry-After, resend (at most {MAX_BUSY_RETRIES} times)",
        "provider": metadata["provider"],
        "p50_latency_ms": percentile(latencies, 50), "p90_latency_ms": percentile(latencies, 90),
        "p99_latency_ms": percentile(latencies, 99), "max_latency_ms": max(latencies, default=None),
        "wall_s": wall_s, "throughput_rps": len(latencies) / wall_s,
        "by_variant": dict(Counter(o["variant"] for o in outcomes)),
        "payload_bytes_min_max": {vid: [min(sizes), max(sizes)] for vid, sizes in (
            (vid, [len(p) for v, _, p in payloads if v == vid])
            for vid in dict.fromkeys(v for v, _, _ in payloads))},
        "shaping": "none (loopback)", "bundle": os.fspath(opened.root),
        "host": {**host, "load_average_after": [round(v, 2) for v in os.getloadavg()]},
    }
    if out_json is not None:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(result, indent=1) + "\n")
    return result


