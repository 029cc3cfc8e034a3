"""The edge server: every tail of a bundle behind one HTTP endpoint (FastAPI + uvicorn).

Protocol (all bodies of errors are JSON ``{"error": reason}``, the reason naming the field):

* ``POST /v1/infer`` — body: one wire payload (:mod:`splitpack.formats.wire`) as
  ``application/octet-stream``. Checked in this order, each failure with its status:
  401 ``authorization`` (when a token is set: ``Authorization: Bearer <token>``),
  415 ``content-type`` (when one is sent and it is not octet-stream),
  413 ``content-length`` / ``body`` (over the largest valid payload of the bundle, before
  anything is decoded), 503 server busy (``max_inflight`` requests running; ``Retry-After``),
  400 the wire header (:func:`~splitpack.formats.wire.read_payload` names the field),
  409 ``bundle_id`` (not this bundle's :func:`~splitpack.runtimes.backends.wire_bundle_id`),
  404 ``variant_id`` (no tail for it), 400 ``dtype`` / ``bits`` / ``shape`` / ``scale`` /
  ``offset`` / ``compression`` (not the variant's, see
  :func:`~splitpack.runtimes.backends.expected_wire_input`), 400 ``data`` (the data does not
  decode to the header's shape: a truncated or corrupted entropy-coded stream, an image of
  another size; :func:`~splitpack.formats.wire.decode_data` names the reason).
  200: the model output as a wire payload (float32, bits 32, the same ids), with headers
  ``X-Splitpack-Tail-Ms`` (tail compute) and ``X-Splitpack-Queue`` (requests in flight).
  500: the tail failed on a valid input (a bug; the reason says where).
* ``POST /v1/probe`` — body: any bytes (octet-stream, as large as the largest payload at
  most), read and dropped: 204 with ``X-Splitpack-Probe-Bytes`` (how many arrived). A device
  answering locally times it to learn its uplink without running a head (see
  :class:`~splitpack.runtimes.device.DeviceRuntime`). The token, content type and size checks
  of ``/v1/infer`` (401, 415, 413, 400 ``body``: empty), not its in-flight limit (a probe runs
  no tail); no wire header is read.
* ``GET /health`` — ``{"status": "ok", "wire_bundle_id": ...}``; never needs the token.
* ``GET /metadata`` — bundle ids, provider, limits, queue depth, the emulated load (``load``:
  its trace file, trace time and slowdown now; null without one), and per served variant its
  expected input and its profiled and measured (median) tail ms.
* ``GET /metrics`` — Prometheus text: requests by variant and status, tail and request
  seconds (sum, count), requests in flight.

``/v1/probe``, ``/metadata`` and ``/metrics`` need the token when one is set. Tails run in a
thread pool so that the event loop keeps answering (and refusing) while they compute; so do the
decoders of entropy-coded codes and images. Entropy tables are loaded with the tails, at
start-up, and a missing, corrupted or mismatched tables file stops the edge there, naming the
file.

The protocol lives in :func:`handle_request` (and the per-path functions it calls), over an
:class:`EdgeServer` and a Starlette request: :func:`create_app` routes to them, and so does the
Ray Serve ingress (:mod:`splitpack.serving.ray_serve`), which passes its own ``run_tail`` so
that tails run on its replicas.

Edge load that changes: ``--load-trace FILE`` (``seconds,slowdown`` rows, see
:mod:`splitpack.runtimes.load`) stretches every tail to the slowdown scheduled when it starts
(``X-Splitpack-Tail-Ms`` reports the stretched time); trace time is ``--load-start-offset``
when the server starts, or, with ``--load-clock stdin``, at the wall-clock time a line
``start UNIX_SECONDS`` names on its standard input (how ``bench runtime`` puts the edge on its
own clock). Only this engine can: tails that run elsewhere (Ray Serve) refuse a load.

Imports fastapi, uvicorn, numpy, onnxruntime, constriction, Pillow and the standard library;
never torch, onnx or the compiler.
"""

from __future__ import annotations

import hmac
import math
import os
import sys
import time
from typing import Awaitable, Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from splitpack.errors import InvalidConfigError, SplitpackError, WireFormatError
from splitpack.formats.bundle import Bundle, read_bundle
from splitpack.formats.entropy import EntropyTables
from splitpack.formats.variants import normalize_uint8
from splitpack.formats.wire import (
    HEADER_MAX_BYTES, Payload, data_length_bound, decode_data, encode_payload, read_payload,
)  # fmt: skip
from splitpack.runtimes.backends import (
    WireInput, expected_wire_input, load_backend, load_entropy_tables, wire_bundle_id,
)
from splitpack.runtimes.load import (
    LOAD_CLOCKS, EmulatedLoad, follow_clock_lines, read_load_trace,
)  # fmt: skip
from splitpack.serving.metrics import EdgeMetrics

__all__ = [
    "DEFAULT_MAX_BATCH", "REMOTE_PROVIDER", "EdgeServer", "TailRunner", "handle_request",
    "handle_infer", "handle_probe", "create_app", "serve", "start_server", "BackgroundServer",
]  # fmt: skip

DEFAULT_MAX_BATCH = 64
FALLBACK_MAX_BODY_BYTES = 64 * 2**20  # when a symbolic input dim leaves the size open
RETRY_AFTER_S = 1
OCTET_STREAM = "application/octet-stream"
REMOTE_PROVIDER = "remote"  # the provider an EdgeServer without tails reports until told

# Runs one admitted request's tail: (variant id, decoded array) -> (float32 output, tail ms).
TailRunner = Callable[[str, np.ndarray], Awaitable[tuple[np.ndarray, float]]]


class _Rejection(Exception):
    """A request refused with ``status``; ``variant`` is a served id or None (for metrics)."""

    def __init__(self, status: int, reason: str, variant: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.variant, self.headers = status, reason, variant, headers


class EdgeServer:
    """Everything one edge holds: the bundle, one loaded tail per served variant, limits and
    counters. Created by :func:`create_app` and kept in ``app.state.edge``.

    Args:
        bundle: A verified bundle.
        token: Required bearer token, or None for none.
        max_inflight: Requests that may be decoded and computed at once (>= 1).
        max_batch: Largest batch one payload may carry (>= 1).
        providers, threads: Passed to each tail's ONNX Runtime session.
        load_tails: False for a front that only checks and counts requests and has their
            tails run elsewhere (the Ray Serve ingress); its ``provider`` is then
            ``"remote"`` until the owner sets it.
        emulated_load: Stretch every tail to the slowdown this schedules when it starts
            (:class:`~splitpack.runtimes.load.EmulatedLoad`); None for the host's speed.
            Only with ``load_tails``: tails run elsewhere cannot be stretched here.
    """

    def __init__(self, bundle: Bundle, *, token: str | None = None, max_inflight: int = 8,
                 max_batch: int = DEFAULT_MAX_BATCH, providers: list[str] | None = None,
                 threads: int | None = None, load_tails: bool = True,
                 emulated_load: EmulatedLoad | None = None) -> None:
        for name, value in (("max_inflight", max_inflight), ("max_batch", max_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidConfigError(f"{name}: found {value!r}; expected an int >= 1")
        if token is not None and (not isinstance(token, str) or not token):
            raise InvalidConfigError("token: expected a non-empty string or None")
        if emulated_load is not None and not load_tails:
            raise InvalidConfigError("emulated_load: this edge runs no tails of its own (they "
                                     "run elsewhere, e.g. on Ray Serve replicas), so it cannot "
                                     "stretch them; serve with the local engine to emulate load")
        self.emulated_load = emulated_load
        self.bundle, self.manifest = bundle, bundle.manifest
        self.wire_bundle_id = wire_bundle_id(self.manifest)
        self.token, self.max_inflight, self.max_batch = token, max_inflight, max_batch
        self.variants = {v.id: v for v in self.manifest.variants if v.kind != "local"}
        # Before the tails: a bad tables file is reported before minutes of session creation.
        self.tables: dict[str, EntropyTables] = {
            vid: tables for vid, v in self.variants.items()
            if (tables := load_entropy_tables(bundle, v)) is not None}
        # Every tail is loaded up front: a request never waits for a session to be created.
        self.tails = {vid: load_backend(bundle, v, part="tail", providers=providers,
                                        threads=threads)
                      for vid, v in self.variants.items()} if load_tails else {}
        self.inputs: dict[str, WireInput] = {vid: expected_wire_input(self.manifest, v)
                                             for vid, v in self.variants.items()}
        self.max_elements = self._max_elements()
        self.max_body_bytes = self._max_body_bytes()
        self.provider = (next(iter(self.tails.values())).provider if self.tails
                         else REMOTE_PROVIDER)
        self.inflight = 0  # touched only on the event loop thread, so no lock
        self.metrics = EdgeMetrics()

    def _elements(self, spec: WireInput) -> int | None:
        dims = spec.shape
        return None if any(not isinstance(d, int) for d in dims) else self.max_batch * math.prod(dims)

    def _max_elements(self) -> int:
        counts = [self._elements(spec) for spec in self.inputs.values()]
        return max(FALLBACK_MAX_BODY_BYTES if c is None else c for c in counts)

    def _max_body_bytes(self) -> int:
        sizes = []
        for spec in self.inputs.values():
            if self._elements(spec) is None:
                return FALLBACK_MAX_BODY_BYTES
            shape = (self.max_batch, *spec.shape)
            sizes += [HEADER_MAX_BYTES + data_length_bound(compression, shape, spec.bits)
                      for compression in spec.compressions]
        return max(sizes)

    # -- checks, in the order the protocol lists them ------------------------------------------

    def authorize(self, request: Request) -> None:
        """401 unless the request carries the configured bearer token (constant-time compare)."""
        if self.token is None:
            return
        header = request.headers.get("authorization")
        if header is None:
            raise _Rejection(401, "authorization: missing; send 'Authorization: Bearer <token>'",
                             headers={"WWW-Authenticate": "Bearer"})
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                credential.strip().encode("utf-8", "replace"), self.token.encode("utf-8")):
            raise _Rejection(401, "authorization: wrong bearer token; use the token the edge "
                             "was started with", headers={"WWW-Authenticate": "Bearer"})

    def check_envelope(self, request: Request) -> None:
        """415 for a wrong content type; 400 / 413 for a bad or too large Content-Length."""
        content_type = request.headers.get("content-type")
        if content_type is not None and content_type.split(";")[0].strip().lower() != OCTET_STREAM:
            raise _Rejection(415, f"content-type: found {content_type[:80]!r}, expected "
                             f"{OCTET_STREAM} (one wire payload)")
        declared = request.headers.get("content-length")
        if declared is None:
            return
        if not declared.strip().isdigit():
            raise _Rejection(400, f"content-length: found {declared[:40]!r}, expected bytes")
        if int(declared) > self.max_body_bytes:
            raise _Rejection(413, f"content-length: {int(declared)} bytes is over the largest "
                             f"valid payload of this bundle ({self.max_body_bytes} bytes, batch "
                             f"<= {self.max_batch}); send smaller batches")

    async def read_body(self, request: Request) -> bytes:
        """The body, read in chunks and refused (413) as soon as it passes the limit."""
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise _Rejection(413, f"body: over the largest valid payload of this bundle "
                                     f"({self.max_body_bytes} bytes); send smaller batches")
                chunks.append(chunk)
        except ClientDisconnect:
            raise _Rejection(400, "body: the client disconnected before sending it all") from None
        if size == 0:
            raise _Rejection(400, "body: empty; send one wire payload")
        return b"".join(chunks)

    def admit(self, payload: Payload) -> str:
        """409 / 404 / 400 unless the payload's header fits a served variant; returns its id."""
        if payload.bundle_id != self.wire_bundle_id:
            raise _Rejection(409, f"bundle_id: found {payload.bundle_id!r}, this edge serves "
                             f"{self.wire_bundle_id!r} (model {self.manifest.model_id!r}); deploy "
                             "the same bundle on the device and the edge")
        vid = payload.variant_id
        if vid not in self.variants:
            raise _Rejection(404, f"variant_id: {vid[:64]!r} has no tail on this edge; served: "
                             f"{', '.join(self.variants)}")
        spec = self.inputs[vid]
        for field, found, wanted in (("dtype", payload.dtype, spec.dtype),
                                     ("bits", payload.bits, spec.bits)):
            if found != wanted:
                raise _Rejection(400, f"{field}: found {found!r} for variant {vid!r}, expected "
                                 f"{wanted!r}", vid)
        sample = payload.shape[1:]
        fits = len(sample) == len(spec.shape) and all(
            not isinstance(w, int) or w == d for d, w in zip(sample, spec.shape))
        if not fits or payload.shape[0] > self.max_batch:
            raise _Rejection(400, f"shape: found {payload.shape} for variant {vid!r}, expected "
                             f"(batch <= {self.max_batch}, {', '.join(map(str, spec.shape))})", vid)
        for field, found, wanted in (("scale", payload.scale, spec.scale),
                                     ("offset", payload.offset, spec.offset)):
            if not math.isclose(found, wanted, rel_tol=1e-12, abs_tol=1e-300):
                raise _Rejection(400, f"{field}: found {found!r} for variant {vid!r}, expected "
                                 f"{wanted!r} (the manifest's quantization)", vid)
        if payload.compression not in spec.compressions:
            raise _Rejection(400, f"compression: found {payload.compression!r} for variant "
                             f"{vid!r}, expected one of {', '.join(spec.compressions)}", vid)
        return vid

    def decode(self, payload: Payload) -> np.ndarray:
        """The admitted payload's tensor; 400 ``data`` when it does not decode."""
        try:
            return decode_data(payload, tables=self.tables.get(payload.variant_id))
        except WireFormatError as exc:
            raise _Rejection(400, str(exc), payload.variant_id) from None

    def run_tail(self, variant_id: str, array: np.ndarray) -> tuple[np.ndarray, float]:
        """Run one tail (in a worker thread); raw uploads are normalized first.

        Args:
            variant_id: A served variant.
            array: The decoded codes (split) or raw uint8 pixels (edge), decoded from any
                upload format already.

        Returns:
            The float32 output and the tail's compute time in ms.
        """
        if self.variants[variant_id].kind == "edge":
            array = normalize_uint8(array, self.manifest.preprocessing)
        tail = self.tails[variant_id]
        if self.emulated_load is not None:
            output, seconds = self.emulated_load.stretch(lambda: tail.run(array))
            return np.asarray(output, dtype=np.float32), seconds * 1e3
        started = time.perf_counter()
        output = tail.run(array)
        elapsed_ms = (time.perf_counter() - started) * 1e3
        return np.asarray(output, dtype=np.float32), elapsed_ms

    # -- observability -------------------------------------------------------------------------

    def record(self, variant: str | None, status: int, seconds: float, tail_ms: float | None) -> None:
        """Count one answered request; unserved variant ids count as ``-`` (never a variant id,
        and a client cannot grow the label set)."""
        label = variant if variant in self.variants else "-"
        self.metrics.record(label, status, seconds, tail_ms)

    def metadata(self) -> dict:
        """The ``/metadata`` document."""
        variants = []
        for vid, variant in self.variants.items():
            spec = self.inputs[vid]
            variants.append({
                "id": vid, "kind": variant.kind, "tail_ms": variant.latency.tail_ms,
                "measured_tail_ms": self.metrics.measured_tail_ms(vid),
                "requests": self.metrics.request_count(vid),
                "input": {"dtype": spec.dtype, "bits": spec.bits, "shape": list(spec.shape),
                          "scale": spec.scale, "offset": spec.offset,
                          "compressions": list(spec.compressions)},
            })  # fmt: skip
        return {"bundle_id": self.manifest.bundle_id, "wire_bundle_id": self.wire_bundle_id,
                "model_id": self.manifest.model_id, "provider": self.provider,
                "queue": self.inflight, "max_inflight": self.max_inflight,
                "max_batch": self.max_batch, "max_body_bytes": self.max_body_bytes,
                "load": self._load_now(), "variants": variants}

    def _load_now(self) -> dict | None:
        load = self.emulated_load
        if load is None:
            return None
        return {"path": load.schedule.source, "trace_s": load.trace_time(),
                "slowdown": load.slowdown_now()}

    def metrics_text(self) -> str:
        """The ``/metrics`` page in the Prometheus text exposition format (0.0.4)."""
        return self.metrics.prometheus_text(inflight=self.inflight,
                                            wire_bundle_id=self.wire_bundle_id,
                                            provider=self.provider)


def _error(rejection: _Rejection) -> JSONResponse:
    return JSONResponse({"error": rejection.reason}, status_code=rejection.status,
                        headers=rejection.headers)


async def handle_infer(server: EdgeServer, request: Request,
                       run_tail: TailRunner | None = None) -> Response:
    """Answer one ``POST /v1/infer``: every check of the protocol, the tail, the counters.

    Args:
        server: The edge's state.
        request: The HTTP request.
        run_tail: Runs the tail of an admitted request; default :meth:`EdgeServer.run_tail`
            in a worker thread. A :class:`~splitpack.errors.SplitpackError` it raises is
            answered with 500.

    Returns:
        The wire answer (200) or a JSON ``{"error": reason}`` with the status of the check.
    """
    if run_tail is None:
        async def run_tail(variant_id: str, array: np.ndarray) -> tuple[np.ndarray, float]:
            return await run_in_threadpool(server.run_tail, variant_id, array)
    started, variant, tail_ms = time.perf_counter(), None, None
    try:
        server.authorize(request)
        server.check_envelope(request)
        if server.inflight >= server.max_inflight:  # refused before the body is even read
            raise _Rejection(503, f"server busy: {server.inflight} requests in flight (limit "
                             f"{server.max_inflight})", headers={"Retry-After": str(RETRY_AFTER_S)})
        server.inflight += 1
        try:
            body = await server.read_body(request)
            try:
                payload = read_payload(body, max_elements=server.max_elements)
            except WireFormatError as exc:
                raise _Rejection(400, str(exc)) from None
            variant = server.admit(payload)
            if payload.compression in ("none", "zlib"):  # microseconds: on the event loop
                array = server.decode(payload)
            else:  # rANS and image decoders take up to milliseconds a sample
                array = await run_in_threadpool(server.decode, payload)
            try:
                output, tail_ms = await run_tail(variant, array)
            except SplitpackError as exc:
                raise _Rejection(500, f"tail of variant {variant!r} failed: {exc}", variant) from None
            queue = server.inflight
        finally:
            server.inflight -= 1
        content = encode_payload(output, bundle_id=server.wire_bundle_id, variant_id=variant,
                                 bits=32)
    except _Rejection as rejection:
        server.record(rejection.variant or variant, rejection.status,
                      time.perf_counter() - started, None)
        return _error(rejection)
    server.record(variant, 200, time.perf_counter() - started, tail_ms)
    return Response(content, media_type=OCTET_STREAM, headers={
        "X-Splitpack-Tail-Ms": f"{tail_ms:.3f}", "X-Splitpack-Queue": str(queue)})


async def handle_probe(server: EdgeServer, request: Request) -> Response:
    """``POST /v1/probe``: read the body and drop it (token, content type and size checked as
    for ``/v1/infer``); 204 with the bytes read. Not counted in ``/metrics``, whose counters
    are per variant."""
    try:
        server.authorize(request)
        server.check_envelope(request)
        body = await server.read_body(request)
    except _Rejection as rejection:
        return _error(rejection)
    return Response(status_code=204, headers={"X-Splitpack-Probe-Bytes": str(len(body))})


async def handle_health(server: EdgeServer, request: Request) -> Response:
    """``GET /health``: names the bundle; never needs the token."""
    return JSONResponse({"status": "ok", "wire_bundle_id": server.wire_bundle_id})


async def handle_metadata(server: EdgeServer, request: Request) -> Response:
    """``GET /metadata`` (token checked)."""
    try:
        server.authorize(request)
    except _Rejection as rejection:
        return _error(rejection)
    return JSONResponse(server.metadata())


async def handle_metrics(server: EdgeServer, request: Request) -> Response:
    """``GET /metrics`` (token checked), Prometheus text format 0.0.4."""
    try:
        server.authorize(request)
    except _Rejection as rejection:
        return _error(rejection)
    return PlainTextResponse(server.metrics_text(),
                             media_type="text/plain; version=0.0.4; charset=utf-8")


_ROUTES = {"/v1/infer": "POST", "/v1/probe": "POST", "/health": "GET", "/metadata": "GET",
           "/metrics": "GET"}


async def handle_request(server: EdgeServer, request: Request,
                         run_tail: TailRunner | None = None) -> Response:
    """Answer a request to any path of the protocol (for hosts other than :func:`create_app`).

    Args:
        server: The edge's state.
        request: The HTTP request; its path is matched exactly.
        run_tail: As in :func:`handle_infer`.

    Returns:
        The path's answer; 404 for another path, 405 (with ``Allow``) for another method.
    """
    path, method = request.url.path, request.method.upper()
    allowed = _ROUTES.get(path)
    if allowed is None:
        return JSONResponse({"error": f"path: {path[:80]!r} is not served; paths: "
                             f"{', '.join(_ROUTES)}"}, status_code=404)
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        return JSONResponse({"error": f"method: {method} is not allowed on {path}; use {allowed}"},
                            status_code=405, headers={"Allow": allowed})
    if path == "/v1/infer":
        return await handle_infer(server, request, run_tail)
    handler = {"/v1/probe": handle_probe, "/health": handle_health,
               "/metadata": handle_metadata, "/metrics": handle_metrics}[path]
    return await handler(server, request)


def create_app(bundle_path: str | os.PathLike[str] | Bundle, *, token: str | None = None,
               max_inflight: int = 8, max_batch: int = DEFAULT_MAX_BATCH,
               providers: list[str] | None = None, threads: int | None = None,
               emulated_load: EmulatedLoad | None = None) -> FastAPI:
    """Build the edge's FastAPI app; every tail of the bundle is loaded before it returns.

    Args:
        bundle_path: A bundle folder or archive (verified on load), or a :class:`Bundle`.
        token: Bearer token required by ``/v1/infer``, ``/v1/probe``, ``/metadata`` and
            ``/metrics``.
        max_inflight: Requests handled at once; more get 503 with ``Retry-After``.
        max_batch: Largest batch one payload may carry.
        providers, threads: ONNX Runtime settings (default CUDA when available, else CPU).
        emulated_load: Stretch every tail to the slowdown it schedules (default: none).

    Returns:
        The app; its :class:`EdgeServer` is ``app.state.edge``.
    """
    bundle = bundle_path if isinstance(bundle_path, Bundle) else read_bundle(bundle_path)
    server = EdgeServer(bundle, token=token, max_inflight=max_inflight, max_batch=max_batch,
                        providers=providers, threads=threads, emulated_load=emulated_load)
    app = FastAPI(title="splitpack edge", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.edge = server

    @app.post("/v1/infer")
    async def infer(request: Request) -> Response:
        return await handle_infer(server, request)

    @app.post("/v1/probe")
    async def probe(request: Request) -> Response:
        return await handle_probe(server, request)

    @app.get("/health")
    async def health(request: Request) -> Response:
        return await handle_health(server, request)

    @app.get("/metadata")
    async def metadata(request: Request) -> Response:
        return await handle_metadata(server, request)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return await handle_metrics(server, request)

    return app


def serve(bundle_path: str | os.PathLike[str] | Bundle, host: str = "127.0.0.1", port: int = 8000,
          token: str | None = None, max_inflight: int = 8,
          max_batch: int = DEFAULT_MAX_BATCH, threads: int | None = None,
          load_trace: str | os.PathLike[str] | None = None, load_start_offset_s: float = 0.0,
          load_clock: str = "start") -> None:
    """Serve a bundle with uvicorn until interrupted (binds loopback unless told otherwise).

    Args:
        bundle_path: A bundle folder or archive, or a :class:`Bundle`.
        host, port: Where to listen.
        token, max_inflight, max_batch, threads: As in :func:`create_app`.
        load_trace: A ``seconds,slowdown`` file: stretch every tail to its schedule.
        load_start_offset_s: The load trace's time when its clock starts.
        load_clock: ``"start"``: the clock starts once the tails are loaded; ``"stdin"``: at
            the time a ``start UNIX_SECONDS`` line on standard input names (see above).
    """
    import uvicorn

    if load_clock not in LOAD_CLOCKS:
        raise InvalidConfigError(f"load_clock: found {load_clock!r}; expected one of "
                                 f"{', '.join(LOAD_CLOCKS)}")
    load = None if load_trace is None else EmulatedLoad(
        read_load_trace(load_trace), start_offset_s=load_start_offset_s, started=False)
    app = create_app(bundle_path, token=token, max_inflight=max_inflight, max_batch=max_batch,
                     threads=threads, emulated_load=load)
    server: EdgeServer = app.state.edge
    if load is not None and load_clock == "stdin":
        follow_clock_lines(sys.stdin, load, on_error=_exit_on_bad_clock_line)
    elif load is not None:
        load.start()
    print(f"splitpack edge: serving {server.manifest.model_id!r} (bundle "
          f"{server.wire_bundle_id}, {len(server.tails)} tails on {server.provider}) at "
          f"http://{host}:{port}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


class BackgroundServer:
    """An edge server running in a thread of this process (:func:`start_server`): for
    notebooks, scripts and tests. A context manager; :meth:`stop` ends it.

    Attributes:
        url: ``http://HOST:PORT`` with the port it bound (``127.0.0.1`` for a server on every
            interface: the address this process reaches it at).
        port: The port it bound.
        app: The FastAPI application (its ``state.edge`` is the :class:`EdgeServer`).
    """

    def __init__(self, app, host: str, port: int, start_timeout_s: float) -> None:
        import threading

        import uvicorn

        self.app, self.port = app, port
        self.url = f"http://{host}:{port}"
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port,
                                                     log_level="warning", access_log=False))
        self._thread = threading.Thread(target=self._server.run, name="splitpack-edge",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + start_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise InvalidConfigError(f"the edge server did not start on {self.url} within "
                                         f"{start_timeout_s:g} s; is the port free? (port=0 "
                                         "picks a free one)")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]  # port 0: the one bound
        reachable = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        self.url = f"http://{reachable}:{self.port}"

    def stop(self) -> None:
        """Stop serving and wait for the server thread."""
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> "BackgroundServer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_server(bundle_path: str | os.PathLike[str] | Bundle, host: str = "127.0.0.1",
                 port: int = 8000, *, start_timeout_s: float = 30.0, **options) -> BackgroundServer:
    """Serve a bundle from a thread of this process and return once it answers.

    Args:
        bundle_path: A bundle folder or archive, or a :class:`Bundle`.
        host, port: Where to listen (port 0: a free one, the one bound in ``.url``).
        start_timeout_s: How long to wait for the server to start.
        **options: ``token``, ``max_inflight``, ``max_batch``, ``threads``: as in
            :func:`create_app`.

    Returns:
        The running :class:`BackgroundServer`.

    Raises:
        InvalidBundleError: the bundle cannot be loaded.
        InvalidConfigError: an option is out of range, or the server did not start.
    """
    return BackgroundServer(create_app(bundle_path, **options), host, port, start_timeout_s)


def _exit_on_bad_clock_line(message: str) -> None:
    # The clock thread cannot raise into uvicorn; an edge on the wrong clock must not serve.
    print(f"splitpack edge: error: {message}", file=sys.stderr, flush=True)
    os._exit(2)


if __name__ == "__main__":  # the CLI's `serve`, this engine (the import runs only as a script)
    from splitpack.cli import run_as

    run_as(["serve", "--engine", "local"])
