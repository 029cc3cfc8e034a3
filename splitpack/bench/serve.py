"""``splitpack bench serve``: throughput and latency of the edge engines under concurrent clients.

For each engine, :func:`run_serve_benchmark` starts the server in its own process on a free
loopback port (``local``: ``python -m splitpack.serving.edge``, one uvicorn process; ``ray``:
``python -m splitpack.serving.ray_serve``, a local Ray cluster with ``replicas`` tail
replicas), waits for ``GET /health``, and has ``clients`` threads, each with its own keep-alive
httpx client, send ``requests`` real wire payloads each: one split variant's codes, made by
running that variant's head on the bundle's sample inputs. Every answer is decoded and compared
with the bundle's expected output (``mismatches``). Each client first sends ``warmup``
untimed requests; the timed phase starts for all clients at once and ends with the last answer.

Reported per engine: requests per second (answered 200 / wall time of the timed phase),
p50 / p99 / mean / max latency of one request as a client sees it, the edge's median tail
compute (``X-Splitpack-Tail-Ms``), errors by status. The clients share this process (and its
GIL) and the host's cores with the server, the same way for both engines.

Imports what the runtimes import (numpy, httpx, onnxruntime); the servers import their own.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np

from splitpack.bench.support import OCTET_STREAM_HEADERS
from splitpack.errors import InvalidConfigError, WireFormatError
from splitpack.formats.bundle import Bundle, read_bundle, read_samples
from splitpack.formats.variants import normalize_uint8
from splitpack.formats.wire import decode_payload
from splitpack.runtimes.backends import (
    encode_request, load_backend, load_entropy_tables, wire_bundle_id,
)
from splitpack.serving import ENGINES
from splitpack.serving.loopback import free_port

__all__ = ["SERVE_FORMAT", "ENGINES", "run_serve_benchmark"]

SERVE_FORMAT = "splitpack-bench-serve/1"
START_TIMEOUT_S = {"local": 60.0, "ray": 240.0}  # a Ray cluster takes tens of seconds on 2 cores
STOP_TIMEOUT_S = 60.0
BARRIER_TIMEOUT_S = 300.0  # every client warmed up; a lost client breaks it instead of hanging
ATOL = 1e-4


@contextmanager
def _server(engine: str, bundle_root: Path, replicas: int, max_inflight: int) -> Iterator[str]:
    """One engine's server process on a free loopback port; stopped with SIGTERM (graceful)."""
    port = free_port()
    module = {"local": "splitpack.serving.edge", "ray": "splitpack.serving.ray_serve"}[engine]
    command = [sys.executable, "-m", module, str(bundle_root), "--host", "127.0.0.1",
               "--port", str(port), "--max-inflight", str(max_inflight)]
    if engine == "ray":
        command += ["--replicas", str(replicas)]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S[engine]
            while not _healthy(url):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    state = (f"exited with status {process.returncode}"
                             if process.poll() is not None
                             else f"did not answer /health within {START_TIMEOUT_S[engine]:g} s")
                    raise InvalidConfigError(f"the {engine} server {state}: "
                                             f"{log.read().decode(errors='replace')[-1500:]}")
                time.sleep(0.2)
            yield url
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _payloads(bundle: Bundle, variant_id: str | None) -> tuple[dict, list[bytes], list[np.ndarray]]:
    """(variant facts, one payload per sample, the expected output per sample)."""
    splits = [v for v in bundle.manifest.variants if v.kind == "split"]
    if not splits:
        raise InvalidConfigError(f"bundle {bundle.root} has no split variant to send codes of")
    if variant_id is None:
        variant = splits[0]
    else:
        variant = bundle.variant(variant_id)
        if variant.kind != "split":
            raise InvalidConfigError(f"--variant {variant_id!r} is a {variant.kind} variant; "
                                     f"pick a split one: {', '.join(v.id for v in splits)}")
    inputs, expected = read_samples(bundle)
    if inputs.dtype == np.uint8 and bundle.manifest.input.dtype != "uint8":
        inputs = normalize_uint8(inputs, bundle.manifest.preprocessing)
    head, q = load_backend(bundle, variant), variant.quantization
    wire_id, tables = wire_bundle_id(bundle.manifest), load_entropy_tables(bundle, variant)
    payloads = [encode_request(variant, head.run(inputs[i:i + 1]), wire_bundle_id=wire_id,
                               tables=tables) for i in range(len(inputs))]
    facts = {"id": variant.id, "payload_bytes": len(payloads[0]), "bits": q.bits,
             "codes_shape": list(q.codes_shape), "compression_ratio": variant.compression_ratio}
    return facts, payloads, [expected[variant.id][i:i + 1] for i in range(len(inputs))]


def _client(url: str, payloads: list[bytes], expected: list[np.ndarray], first: int,
            requests: int, warmup: int, start: threading.Barrier, records: list) -> None:
    """One client: ``warmup`` untimed requests, then ``requests`` timed ones into ``records``."""
    with httpx.Client(base_url=url, timeout=30.0, headers=OCTET_STREAM_HEADERS) as client:
        for i in range(warmup):
            try:
                client.post("/v1/infer", content=payloads[(first + i) % len(payloads)])
            except httpx.HTTPError:
                pass  # the timed phase counts errors; warm-up only opens connections
        start.wait(timeout=BARRIER_TIMEOUT_S)
        for i in range(requests):
            index = (first + i) % len(payloads)
            started = time.perf_counter()
            try:
                response = client.post("/v1/infer", content=payloads[index])
                status = response.status_code
            except httpx.HTTPError as exc:
                records.append((time.perf_counter() - started, type(exc).__name__, None, False))
                continue
            latency = time.perf_counter() - started
            correct, tail_ms = False, None
            if status == 200:
                tail_ms = float(response.headers.get("x-splitpack-tail-ms", "nan"))
                try:
                    output = decode_payload(response.content)[1]
                    correct = output.shape == expected[index].shape and np.allclose(
                        output, expected[index], atol=ATOL)
                except WireFormatError:
                    pass
            records.append((latency, status, tail_ms, correct))


def _measure(url: str, payloads: list[bytes], expected: list[np.ndarray], clients: int,
             requests: int, warmup: int) -> dict:
    records: list = []  # (seconds, status, tail ms, correct); list.append is atomic
    start = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=_client, args=(url, payloads, expected, c * requests,
                                                      requests, warmup, start, records))
               for c in range(clients)]
    for thread in threads:
        thread.start()
    start.wait(timeout=BARRIER_TIMEOUT_S)
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall_s = time.perf_counter() - began
    ok = [r for r in records if r[1] == 200]
    latencies_ms = np.array([r[0] * 1e3 for r in records]) if records else np.zeros(1)
    tails = [r[2] for r in ok if r[2] is not None and np.isfinite(r[2])]
    errors = Counter(str(r[1]) for r in records if r[1] != 200)
    return {
        "requests": len(records), "ok": len(ok), "errors": dict(errors),
        "mismatches": sum(1 for r in ok if not r[3]), "wall_s": round(wall_s, 4),
        "requests_per_s": round(len(ok) / wall_s, 2),
        "latency_ms": {"p50": round(float(np.percentile(latencies_ms, 50)), 3),
                       "p99": round(float(np.percentile(latencies_ms, 99)), 3),
                       "mean": round(float(latencies_ms.mean()), 3),
                       "max": round(float(latencies_ms.max()), 3)},
        "edge_tail_ms_p50": round(float(np.median(tails)), 4) if tails else None,
    }  # fmt: skip


def _versions(engines: list[str]) -> dict:
    names = ["onnxruntime", "httpx", "uvicorn", "fastapi"] + (["ray"] if "ray" in engines else [])
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def run_serve_benchmark(bundle: str | os.PathLike[str] | Bundle, engines: list[str] | str,
                        clients: int, requests: int, out: str | os.PathLike[str] | None, *,
                        replicas: int = 2, max_inflight: int = 8, warmup: int = 5,
                        variant: str | None = None, bundle_note: str | None = None) -> dict:
    """Measure each engine under ``clients`` concurrent clients and write the JSON.

    Args:
        bundle: A bundle folder or archive, or a :class:`Bundle`.
        engines: ``"local"``, ``"ray"``, ``"both"``, or a list of engine names.
        clients: Concurrent clients (>= 1).
        requests: Timed requests per client (>= 1).
        out: JSON file to write, or None.
        replicas: Tail replicas of the ray engine.
        max_inflight: Each server's ``--max-inflight`` (per tail replica for ray).
        warmup: Untimed requests per client before the timed phase.
        variant: The split variant whose codes are sent; default the manifest's first.
        bundle_note: Where the bundle came from, for the JSON.

    Returns:
        The result document (also written to ``out``).
    """
    if isinstance(engines, str):
        names = list(ENGINES) if engines == "both" else [engines]
    else:
        names = list(engines)
    unknown = [name for name in names if name not in ENGINES]
    if unknown or not names:
        raise InvalidConfigError(f"engines: found {names!r}; allowed: {', '.join(ENGINES)} or both")
    for name, value, least in (("clients", clients, 1), ("requests", requests, 1),
                               ("replicas", replicas, 1), ("max_inflight", max_inflight, 1),
                               ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InvalidConfigError(f"{name}: found {value!r}; expected an int >= {least}")
    loaded = bundle if isinstance(bundle, Bundle) else read_bundle(bundle)
    facts, payloads, expected = _payloads(loaded, variant)
    results = {}
    for engine in names:
        with _server(engine, loaded.root, replicas, max_inflight) as url:
            results[engine] = {
                "server": ("uvicorn, one process" if engine == "local"
                           else f"Ray Serve: 1 ingress + {replicas} tail replicas, local cluster"),
                **({"replicas": replicas} if engine == "ray" else {}),
                **_measure(url, payloads, expected, clients, requests, warmup),
            }  # fmt: skip
    result = {
        "format": SERVE_FORMAT,
        "bundle": {"path": str(loaded.root), "note": bundle_note,
                   "model_id": loaded.manifest.model_id,
                   "wire_bundle_id": wire_bundle_id(loaded.manifest)},
        "variant": facts, "clients": clients, "requests_per_client": requests,
        "warmup_per_client": warmup, "max_inflight": max_inflight,
        "host": {"platform": platform.platform(), "python": platform.python_version(),
                 "cpus": os.cpu_count()},
        "versions": _versions(names), "engines": results,
    }  # fmt: skip
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result


