"""The device runtime: run a head, send its codes to the edge, and adapt the variant per request.

Every head (each split variant's, and the ``local`` variant's whole model) is loaded when the
runtime is built, so switching variant is a dict lookup. Per request the runtime:

1. picks a variant with :meth:`Selector.select_with_hysteresis` under its current
   :class:`Conditions`: the uplink from a :class:`~splitpack.planning.transfer.TransferEstimator`
   fed by its own transfers (a per-message delay, added to ``rtt_ms``, and a rate: on a
   cellular link a small message mostly waits for a transmission opportunity),
   ``device_load`` from each variant's device compute observed against what the same variant
   took unloaded (learned from its first requests), ``edge_load`` from the tail time the edge
   reports against its profile, each the median of its last few ratios of the last half second
   (:class:`~splitpack.runtimes.load.LoadEstimator`, clamped to >= 1): the runtime follows a
   changing load only from what it measures; each head planned with its own unloaded
   time once measured (``plan_measured_heads``), not the compile's profile; and each plan
   corrected by the median of what that variant's last requests took beyond it, device
   compute and link left out (``plan_offsets_ms``: the runtime's own time, the HTTP exchange
   beyond ``rtt_ms``, a tail off its profile; see ``_note_residual``);
2. runs the head (at the device's own speed; a benchmark that emulates a slower or a busier
   device passes an ``emulated_load``, which stretches it to the slowdown scheduled at that
   moment, see :meth:`~splitpack.runtimes.load.EmulatedLoad.stretch`), encodes
   the wire payload (codes bit-packed, or entropy-coded with the variant's tables when its
   coding is ``entropy`` and that is smaller; an ``edge`` upload in the format its ``upload``
   names, JPEG or WebP at the compiled quality, else zlib: device compute too, stretched and
   observed with the head as one computation, so that a runtime on ``edge`` still sees its
   load change, and planned as measured, ``encode_ms`` folded in), pushes it
   through the emulated ``link`` if one is given, and POSTs it to the edge (see
   :mod:`splitpack.serving.edge` for the protocol);
3. on a timeout, connection error, non-200 answer or malformed response, answers the same
   request with the ``local`` variant (no request is lost) and marks the edge down. While down
   every request runs locally, and at most every ``probe_interval_s`` one request first probes
   ``GET /health`` (which must name this bundle); when the probe succeeds, the selector is
   consulted again.

Uplink probes. A runtime that answers locally learns nothing of its uplink from its requests,
so while it prefers ``local`` with the edge up, a local answer sends an uplink probe beside it
(one in flight at most): as many bytes as the remote plan of least latency would send,
dropped by the edge. At most one per ``UPLINK_PROBE_GAP_S`` while that plan is within
``PROBE_NEAR`` x the local one's (a link that gets a little better or worse changes the
choice), one per ``PROBE_FAR_GAP_S`` while it is further (it was 1 s; a sweep of both
benchmark bundles with 0.25 s met the marks no less often, see benchmarks/README.md). The
device does not wait for it: over an emulated ``link`` its bytes are handed to the link, and
the next request takes in their time there once they have gone out (until then it answers
locally: an upload would queue behind them); without one a worker thread POSTs them to
``/v1/probe`` and times the exchange less ``rtt_ms`` (requests stay local until it is back;
the client's first exchange, which opens its connection, is not counted). So the transfer estimate follows the link at the
request pace while the device computes locally, for no device time
(``stats["uplink_probes"]``, ``stats["uplink_probe_bytes"]``: the price is those bytes on the
radio). Against an edge that has no probe route (404 or 405), or with ``uplink_probes=False``,
the runtime explores instead.

Explorations (without probes). The selector can only learn the uplink from remote requests, so
while it prefers ``local`` with the edge up, one request per exploration interval is sent with
the best remote variant instead (``stats["explorations"]``): otherwise a runtime that once
chose ``local`` on a bad link would never notice that the link recovered. The interval
starts at ``probe_interval_s`` and doubles after each exploration that leaves ``local``
preferred, up to ``MAX_EXPLORE_BACKOFF`` times ``probe_interval_s``; it is back at
``probe_interval_s`` as soon as a remote variant is chosen. Each exploration is a request
answered late when the edge is the worse choice, so a link that stays bad is explored less
often (but never less than once per 2 intervals). The cap was 8
intervals; in the demo's schedule (``splitpack demo``: 20, 2, 0.3, 5 Mbit/s for 10 s each, a
device 30x slower than this host) the runtime then answered locally for 7.5 s of the 5 Mbit/s
phase, where a split variant took 9.8 ms against local's 17.5 (its median there 16.5 ms). An
exploration costs little even when the link stays bad: its local answer is computed while its
upload waits (below).

Hedged uploads. A remote request over an emulated ``link`` whose upload has not gone out after
``hedge_factor`` x its planned transfer time (at once for an exploration) computes the local
answer while it keeps waiting: the device's CPU is idle while its radio waits for a
transmission opportunity. Whichever is ready first answers: the upload, then the edge's reply;
or the local answer (``stats["deadline_misses"]``; not a fallback: the edge is up), in which
case the upload is given up (its bytes stay on the link, as a real sender's would), its wait
goes to the estimator as a sample (a lower bound of the transfer time), and the runtime answers
locally without touching the link for as long as the link still holds those bytes (what a
sender learns from its own socket, :meth:`ShapedLink.pending`), then decides afresh (exploring
at once if it prefers ``local``). ``stats["hedges"]`` counts the local answers started. A
request sent into an outage so costs its head, its planned transfer time and one local answer,
never the outage (up to seconds on the cellular traces). Without an emulated link the upload
is inside the HTTP exchange, which only ``timeout_s`` bounds. Emulated on one host, the local
answer's host compute is done only when the upload has not gone out near the end of the local
run's device time (``_local_beside``: one host shares the device's and the edge's CPU, and a
local run in a thread beside every hedged upload took it from the edge).

What this replaced, on the demo's scenes bundle over the three real traces at 10, 30 and 100x
(``scenes_demo_runtime_*``): an upload given up when it had waited as long as the local answer's
planned latency, the local answer computed only then, and the runtime local for a whole
``probe_interval_s`` after each such miss. On ATT-LTE-driving at 30x a miss cost 40-56 ms where
the round's best fixed method took 10-12, and the stalls that followed answered 69 of 150
requests locally (18.1 ms median where the splits took about 15).
(A shorter stall, 1/8 of the interval doubling with each miss in a row, changed nothing beyond
run-to-run noise.) One sweep of the nine runs each, with ``bench runtime`` already putting
every request of a round on the same trace moment: local while the given-up bytes wait but no
hedge, the adaptive mean 1.16-1.40x the oracle's; with hedged uploads, 1.08-1.20x.
``hedge_factor`` 2 instead of 1 (hedge only past twice the planned transfer time: fewer local
runs beside uploads on a steady link) was tried on the nine runs and not kept: 1 of 9 met issue
15's marks as with 1, the mean over the oracle up to 1.35 (ATT 30x) against 1.26.

Tried and not kept: raising every remote plan by what the last 9 remote answers took beyond
their plans (encoding, decoding and bookkeeping, which no profile holds). In the demo's
0.3 Mbit/s phase the runtime stays on a split whose plan falls short of its requests' time by
more than the 10 % hysteresis (24.90 ms median where ``local`` took 20.91); with the term it
answered locally (19.66 against 19.44). But over the nine trace runs the adaptive median went
to 1.02-1.16x the best fixed method's (1 and 0 of 9 runs met every mark, in two sweeps: with
the whole excess, then with the link's share left to the transfer estimator) against
1.006-1.062x without it: the excess is noisy on cellular links and held the runtime on
``local`` where splits were faster (Verizon 30x: 27 local answers at 19.4 ms where the splits
took 13.4).

Tried and not kept: ``hysteresis`` 0.03 instead of 0.1 (``bench runtime --hysteresis``; the
demo's three splits plan within a few percent of each other, and on Verizon-LTE-short at 100x
the runtime stayed on ``cut03`` for 142 of 150 requests where its plan of ``cut01`` was 8 %
lower and ``cut01`` was the faster fixed method, 32.5 against 34.3 ms). One sweep of the nine
runs: 1 of 9 met every mark (median over the best fixed method's 1.005-1.139) against 2 of 9
with 0.1 in the sweep just before (without the lowered references of ``_observe_device_ms``),
on a host that ran the fixed ``local`` method 6-27 % slower than in that sweep: no gain that
this host's run-to-run spread would show.

Runs on devices: numpy, httpx, onnxruntime (or ai-edge-litert), pydantic, constriction,
Pillow, standard library.
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable

import httpx
import numpy as np

from splitpack.errors import InvalidConfigError, InvalidInputError, WireFormatError
from splitpack.formats.bundle import Bundle, read_bundle, read_samples
from splitpack.formats.variants import VariantProfile, denormalize_to_uint8, normalize_uint8
from splitpack.formats.wire import decode_payload
from splitpack.planning.latency import Conditions, after_upload_ms, plan_latency_ms
from splitpack.planning.selector import Constraints, Selector
from splitpack.planning.transfer import TransferEstimator
from splitpack.runtimes.backends import (
    encode_request, load_backend, load_entropy_tables, wire_bundle_id,
)
from splitpack.runtimes.load import EmulatedLoad, LoadEstimator, constant_load
from splitpack.runtimes.netem import ShapedLink

__all__ = ["InferenceResult", "DeviceRuntime"]

# The edge variant's uploads (zlib, PNG, JPEG, WebP) and entropy-coded codes have sizes that
# depend on the content; the manifest states their mean. The bundle's samples give a first size
# for the edge variant, and the bytes really sent (EWMA, one-sample requests) take the place of
# the planned size once they differ from it by more than this fraction.
PAYLOAD_SMOOTHING = 0.2
PAYLOAD_TOLERANCE = 0.1
MAX_EXPLORE_BACKOFF = 2  # explorations: at least once per 2 x probe_interval_s
# Uplink probes: at most one per UPLINK_PROBE_GAP_S while the best remote plan is within
# PROBE_NEAR x the local plan; one per PROBE_FAR_GAP_S while it is further (see the docstring).
UPLINK_PROBE_GAP_S = 0.05
PROBE_NEAR = 1.5
PROBE_FAR_GAP_S = 0.25
# Requests of a variant that set its unloaded reference (see _observe_device_ms).
REFERENCE_REQUESTS = 3  # odd: its median is its middle value
REFERENCE_SLACK = 0.02  # a reference is lowered only when a variant runs this much faster
# Requests of a variant whose time beyond its plan (the link's share left out) is the median
# that corrects the plan (see _note_residual), and how many it takes before it counts.
RESIDUAL_REQUESTS = 9
RESIDUAL_MIN = 3
RESIDUAL_REFRESH = 4  # ... and how often (in requests of the variant) that median is refreshed
MAX_ERRORS_KEPT = 100
_OCTET_STREAM = "application/octet-stream"
_INPUT_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))


@dataclass(frozen=True)
class InferenceResult:
    """The answer to one :meth:`DeviceRuntime.infer` call.

    Attributes:
        output: Model output; batch first if the input had a batch dim, else one sample's.
        variant_id: The variant that produced ``output``.
        mode: ``"split"``, ``"edge"`` or ``"local"`` (the kind of that variant).
        latency_ms: Wall time of the whole call.
        head_ms: Device compute (stretched by the emulated slowdown): a split's head and the
            coding of its codes; for ``edge``, the time to prepare the raw upload; after a
            given-up upload, the remote variant's and the local one's.
        transfer_ms: Uplink shaping plus the HTTP exchange, less the edge's compute; after a
            given-up upload, the time it waited.
        edge_ms: Tail compute the edge reported.
        fallback: True when the edge was down or failed and ``local`` answered instead.
    """

    output: np.ndarray
    variant_id: str
    mode: str
    latency_ms: float
    head_ms: float
    transfer_ms: float
    edge_ms: float
    fallback: bool


class _EdgeFailure(Exception):
    """The edge did not answer this request usefully; ``reason`` says how."""


class _DeadlineMissed(Exception):
    """The upload had not gone out when the local answer started beside it was ready, after
    ``seconds`` of waiting; ``output`` is that answer and ``local_ms`` its device time."""

    def __init__(self, seconds: float, output: np.ndarray, local_ms: float) -> None:
        super().__init__(f"upload still waiting after {seconds * 1e3:.3g} ms")
        self.seconds, self.output, self.local_ms = seconds, output, local_ms


def _positive(name: str, value: float, *, minimum: float = 0.0, strict: bool = True) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or not (value > minimum if strict else value >= minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise InvalidConfigError(f"{name}: found {value!r}; expected a finite number {bound}")
    return float(value)


class DeviceRuntime:
    """Runs a bundle's heads on the device and its tails on an edge server.

    Args:
        bundle: A bundle folder or archive (verified on load) or a :class:`Bundle`.
        edge_url: Base URL of the edge, e.g. ``http://127.0.0.1:8000``.
        backend: ``"onnxruntime"`` or ``"litert"`` for the heads.
        threads: Threads of each head's session; default the runtime's choice. A device
            answering one request at a time gains little from more than one for a small head.
        token: Bearer token the edge requires, if any.
        link: An emulated uplink; each payload is ``send`` through it before the HTTP request.
        device_slowdown: The device is this many times slower than the host the bundle was
            profiled on: the selector plans with it. It only tells; nothing is slowed down.
        emulated_load: For benchmarks and trials on a fast host: stretch device compute to the
            slowdown this schedules when it starts (:class:`~splitpack.runtimes.load.EmulatedLoad`,
            e.g. ``EmulatedLoad(constant_load(device_slowdown))`` for a slower device, or a
            load that changes). Default: none, compute runs at the device's own speed. The
            selector is not told: it sees the load only as measured ``device_load``. May be
            replaced between requests (the benchmark does).
        max_accuracy_drop: Accuracy points a variant may lose against the baseline.
        hysteresis: Fraction by which a new variant must beat the current one to switch.
        timeout_s: HTTP timeout of each request and probe.
        probe_interval_s: Least time between health probes while the edge is down, and the
            first interval between explorations while ``local`` is preferred (see above).
        rtt_ms: Round trip to the edge assumed by the latency model (the HTTP exchange); the
            uplink's per-message delay, learned from the transfers, comes on top.
        initial_uplink_mbps: Uplink rate assumed until the transfers' sizes identify it.
        hedge_factor: An upload over ``link`` still waiting after this many times its planned
            transfer time (>= 0) has the local answer computed beside it, and whichever is
            ready first answers (see above); None: wait for every upload.
        plan_measured_heads: Once a variant's unloaded device time is known (its first
            requests), plan it with that instead of its profiled ``head_ms`` (see
            ``_plan_with_measured_heads``), and correct each plan by what its requests take
            beyond it (``_note_residual``); False plans with the profiles throughout (tests
            whose bundles carry made-up profiles).
        uplink_probes: While it answers locally with the edge up, time the uplink with
            probes (the best remote plan's payload size in dropped bytes, one in flight at
            most) instead of exploring with remote requests (see "Uplink probes" above);
            False: explore.
        clock: Monotonic seconds, for probe scheduling and the age of load and transfer
            observations; injectable for tests.
        transport: An httpx transport to use instead of the network (tests, custom TLS).

    Attributes:
        variants: Variant id -> the manifest's :class:`Variant`.
        current_variant: The selector's choice for the last request (the one a request
            answered with can differ: explorations, hedges and fallbacks; see
            :class:`InferenceResult`).
        pinned: The variant :meth:`pin` fixed, or None.
        plan_offsets_ms: Variant id -> milliseconds added to its plan: what its requests take
            beyond the model, device compute and link left out (see ``_note_residual``).
        stats: Counters (requests, switches, fallbacks, hedges, explorations, per variant and
            per mode) and the last errors.

    Raises:
        InvalidConfigError: An option is out of range.
        InvalidBundleError: The bundle cannot be loaded or verified.
    """

    def __init__(self, bundle: str | os.PathLike[str] | Bundle, edge_url: str, *,
                 backend: str = "onnxruntime", threads: int | None = None,
                 token: str | None = None,
                 link: ShapedLink | None = None, device_slowdown: float = 1.0,
                 emulated_load: EmulatedLoad | None = None,
                 max_accuracy_drop: float = 1.0, hysteresis: float = 0.1, timeout_s: float = 2.0,
                 probe_interval_s: float = 1.0, rtt_ms: float = 20.0,
                 initial_uplink_mbps: float = 5.0, hedge_factor: float | None = 1.0,
                 plan_measured_heads: bool = True, uplink_probes: bool = True,
                 clock: Callable[[], float] = time.monotonic,
                 transport: httpx.BaseTransport | None = None) -> None:
        if not isinstance(edge_url, str) or not edge_url.startswith(("http://", "https://")):
            raise InvalidConfigError(f"edge_url: found {edge_url!r}; expected an http:// or "
                                     "https:// URL such as http://127.0.0.1:8000")
        self.device_slowdown = _positive("device_slowdown", device_slowdown)
        # no emulation is a slowdown of 1 for ever: measured times are the device's own
        self.emulated_load = emulated_load or EmulatedLoad(constant_load(1.0))
        self.timeout_s = _positive("timeout_s", timeout_s)
        self.probe_interval_s = _positive("probe_interval_s", probe_interval_s, strict=False)
        self.rtt_ms = _positive("rtt_ms", rtt_ms, strict=False)
        self.hedge_factor = (None if hedge_factor is None
                             else _positive("hedge_factor", hedge_factor, strict=False))
        if not (isinstance(hysteresis, (int, float)) and 0.0 <= hysteresis < 1.0):
            raise InvalidConfigError(f"hysteresis: found {hysteresis!r}; expected a fraction "
                                     "in [0, 1)")
        self.hysteresis = float(hysteresis)
        self.bundle = bundle if isinstance(bundle, Bundle) else read_bundle(bundle)
        self.manifest = self.bundle.manifest
        self.wire_bundle_id = wire_bundle_id(self.manifest)
        self.variants = {v.id: v for v in self.manifest.variants}
        self._sample_shape = tuple(self.manifest.input.shape[1:])  # may hold named dims
        self.local_id = next(v.id for v in self.manifest.variants if v.kind == "local")
        self.tables = {v.id: tables for v in self.manifest.variants
                       if (tables := load_entropy_tables(self.bundle, v)) is not None}
        # Every head up front: a switch must never wait for a session to be created.
        self.heads = {v.id: load_backend(self.bundle, v, backend, threads=threads)
                      for v in self.manifest.variants if v.kind in ("split", "local")}
        self.profiles = {v.id: v.profile() for v in self.manifest.variants}
        self.plan_measured_heads = bool(plan_measured_heads)
        self._profiled_device_ms = {vid: (p.head_ms, p.encode_ms)
                                    for vid, p in self.profiles.items()}
        self.sent_bytes: dict[str, float] = {}  # EWMA of one-sample payloads, per variant
        self._seed_edge_payload()
        self.unloaded_ms: dict[str, float] = {}  # per variant: device ms a sample at load 1
        self._residuals: dict[str, deque[float]] = {}  # per variant: see _note_residual
        self.plan_offsets_ms: dict[str, float] = {}
        self._own_offsets: dict[str, float] = {}  # from each variant's own residuals
        self._residual_count: Counter[str] = Counter()
        self._split_ids = [v.id for v in self.manifest.variants if v.kind == "split"]
        self._conditions: Conditions | None = None  # what the last choice was made under
        self._link_ms = 0.0  # the last upload's time on the link (or its HTTP estimate)
        self._reference_ms: dict[str, list[float]] = {}
        self._recent_ms: dict[str, deque[float]] = {}  # per variant: its last observations
        self.constraints = Constraints(self.manifest.baseline_accuracy, max_accuracy_drop)
        self.selector = Selector(list(self.profiles.values()), self.constraints)
        self.link = link
        self.estimator = TransferEstimator(_positive("initial_uplink_mbps", initial_uplink_mbps),
                                           clock=clock)
        self.device_loads, self.edge_loads = LoadEstimator(clock=clock), LoadEstimator(clock=clock)
        self._clock = clock
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=edge_url, timeout=timeout_s, headers=headers,
                                    transport=transport)
        # probes without an emulated link come from a worker thread: a client of their own
        self._probe_client = httpx.Client(base_url=edge_url, timeout=timeout_s, headers=headers,
                                          transport=transport)
        self.edge_up = True
        self._last_probe = self._last_sample = clock()
        self._stalled = False  # after a given-up upload: local while the link holds its bytes
        self.explore_interval_s, self._just_explored = self.probe_interval_s, False
        self.uplink_probes = bool(uplink_probes)
        self._probe_bytes = 0  # a probe in flight: its size (0: none)
        self._probe_link_s = 0.0  # ... and over an emulated link, its time on the link
        self._probe_future: Future | None = None  # ... or its HTTP exchange, without one
        self._probe_pool: ThreadPoolExecutor | None = None
        self._probe_connected = False  # the probe client's connection is open
        # the last selection's best remote plan: its payload size (0: none) and how often
        self._probe_sent, self._probe_size, self._probe_gap_s = -math.inf, 0, UPLINK_PROBE_GAP_S
        self.current_variant = self.selector.select(self.conditions()).id
        self.pinned: str | None = None  # see pin()
        self._in_use: str | None = None
        self._cold: str | None = None
        self.active_head = None
        self._lock = threading.Lock()
        self.stats: dict = {"requests": 0, "switches": 0, "switch_ms": [], "fallbacks": 0,
                            "errors": [], "probes": 0, "probe_failures": 0, "explorations": 0,
                            "hedges": 0, "deadline_misses": 0, "uplink_probes": 0,
                            "uplink_probe_bytes": 0, "variants": Counter(),
                            "modes": Counter()}

    # -- conditions ---------------------------------------------------------------------------

    def conditions(self) -> Conditions:
        """The conditions the selector sees now."""
        fit = self.estimator.fit()
        return Conditions(uplink_mbps=fit.mbps, rtt_ms=self.rtt_ms + fit.delay_ms,
                          device_slowdown=self.device_slowdown,
                          device_load=self.device_loads.estimate(),
                          edge_load=self.edge_loads.estimate())

    @property
    def device_load(self) -> float:
        """Measured device compute over each variant's reference ``unloaded_ms`` (>= 1,
        recent median)."""
        return self.device_loads.estimate()

    @property
    def edge_load(self) -> float:
        """Tail compute the edge reports over profiled (>= 1, recent median)."""
        return self.edge_loads.estimate()

    # -- choosing ------------------------------------------------------------------------------

    def _probe(self) -> bool:
        """GET /health; up only if it answers 200 for this very bundle."""
        self.stats["probes"] += 1
        try:
            response = self._client.get("/health")
            body = response.json() if response.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            body = {}
        if isinstance(body, dict) and body.get("wire_bundle_id") == self.wire_bundle_id:
            return True
        self.stats["probe_failures"] += 1
        return False

    def pin(self, variant_id: str) -> None:
        """Answer every request with ``variant_id`` until :meth:`unpin`: no selection, no
        exploration and no hedge (a pinned remote variant waits for its upload, even behind
        bytes an earlier hedge gave up on). While the edge is down, or when its answer fails, a
        pinned remote variant still falls back to ``local`` (``fallback`` in the result), as
        any request does.

        Args:
            variant_id: One of the bundle's variant ids (``runtime.variants``).

        Raises:
            InvalidConfigError: The bundle has no such variant.
        """
        if variant_id not in self.variants:
            raise InvalidConfigError(f"pin: variant {variant_id!r} is not in this bundle; its "
                                     f"variants: {', '.join(self.variants)}")
        with self._lock:
            self.pinned = variant_id

    def unpin(self) -> None:
        """Let the selector choose again, from the next request."""
        with self._lock:
            self.pinned = None

    def plans_ms(self) -> dict[str, float]:
        """The latency the selector plans for each feasible variant now (id -> ms), its
        learned correction (``plan_offsets_ms``) included: what the next request chooses
        from."""
        return self.selector.latencies_ms(self.conditions(), self.plan_offsets_ms)

    def _choose(self) -> tuple[str, bool]:
        """(variant id, whether it is a fallback to local)."""
        now = self._clock()
        self._conditions = None
        if self.pinned == self.local_id:
            return self.local_id, False
        if not self.edge_up:
            if now - self._last_probe < self.probe_interval_s:
                return self.local_id, True
            self._last_probe = now
            if not self._probe():
                return self.local_id, True
            self.edge_up = True
        if self.pinned is not None:  # even while given-up bytes wait: pinned means pinned
            return self.pinned, False
        if self._probe_bytes and not self._take_probe():  # an upload would queue behind it
            return self.local_id, False
        if self._stalled:
            if self.link is not None and self.link.pending():
                return self.local_id, False
            # The given-up bytes are out: what the runtime knew of the link predates that, so
            # a runtime that now prefers local explores at once (one with probes keeps their
            # gap, at most PROBE_FAR_GAP_S).
            self._stalled, self._last_sample = False, -math.inf
        conditions = self._conditions = self.conditions()
        offsets = self.plan_offsets_ms
        plan = self.selector.select_with_hysteresis(self.current_variant, conditions,
                                                    self.hysteresis, offsets)
        self.current_variant = plan.id
        if self.uplink_probes and plan.profile.kind == "local":  # what a probe would time
            remote = self.selector.last_best_remote()
            self._probe_size = 0 if remote is None else max(1, int(remote[0].payload_bytes))
            if remote is not None:
                near = remote[1] < PROBE_NEAR * plan.latency_ms
                self._probe_gap_s = UPLINK_PROBE_GAP_S if near else PROBE_FAR_GAP_S
        if plan.profile.kind != "local":
            self.explore_interval_s = self.probe_interval_s
        elif self._just_explored:  # the last exploration left local preferred: back off
            self.explore_interval_s = min(2.0 * self.explore_interval_s,
                                          MAX_EXPLORE_BACKOFF * self.probe_interval_s)
        self._just_explored = False
        if (plan.profile.kind == "local" and not self.uplink_probes
                and now - self._last_sample >= self.explore_interval_s):
            remote = [p for p in self.selector.feasible if p.kind != "local"]
            if remote:  # explore: refresh the uplink estimate with one remote request
                self._last_sample, self._just_explored = now, True
                self.stats["explorations"] += 1
                # Its local answer is computed beside the upload, so when local wins the
                # exploration costs its head: the cheapest head explores (ties: the best plan).
                return min(remote, key=lambda p: (
                    p.head_ms + p.encode_ms,
                    plan_latency_ms(p, conditions) + offsets.get(p.id, 0.0))).id, False
        return plan.id, False

    # -- uplink probes -------------------------------------------------------------------------

    def _probe_wanted(self) -> bool:
        """Whether the local answer being made now should send an uplink probe beside it."""
        return (self.uplink_probes and self._probe_size and not self._probe_bytes and self.edge_up
                and self.pinned is None and self.current_variant == self.local_id
                and self._clock() - self._probe_sent >= self._probe_gap_s
                and (self.link is None or not self.link.pending()))

    def _send_probe(self) -> None:
        """Send an uplink probe of the best remote variant's payload size, and return at once:
        over an emulated link its bytes are handed to the link (the device does not wait for
        them); without one a worker thread POSTs them to ``/v1/probe``."""
        nbytes = self._probe_size
        self._probe_sent, self._probe_bytes = self._clock(), nbytes
        self.stats["uplink_probes"] += 1
        self.stats["uplink_probe_bytes"] += nbytes
        if self.link is not None:
            self.link.send_within(nbytes, 0.0)
            # when they will have gone out: read only once they have (_take_probe), as a
            # sender learns it from its socket
            self._probe_link_s = max(0.0, self.link.backlog_s())
            return
        if self._probe_pool is None:
            self._probe_pool = ThreadPoolExecutor(1, thread_name_prefix="splitpack-probe")
        self._probe_future = self._probe_pool.submit(self._http_probe, nbytes)

    def _http_probe(self, nbytes: int) -> float | None:
        """POST ``nbytes`` to ``/v1/probe`` (in the worker thread): the uplink's seconds (the
        exchange less ``rtt_ms``); NaN when nothing was learnt (a connection error: the next
        remote request finds out whether the edge is down; a refusal such as 503 or one of a
        proxy; the probe client's first exchange, which opens its connection); None when the
        edge has no such route (404 or 405: an edge of an older protocol, so the runtime
        explores instead)."""
        first, self._probe_connected = not self._probe_connected, True
        started = time.perf_counter()
        try:
            response = self._probe_client.post("/v1/probe", content=bytes(nbytes),
                                               headers={"content-type": _OCTET_STREAM})
        except httpx.HTTPError:
            self._probe_connected = False
            return math.nan
        seconds = time.perf_counter() - started
        if response.status_code in (404, 405):
            return None
        if response.status_code != 204 or first:
            return math.nan
        return max(0.0, seconds - self.rtt_ms / 1e3)

    def _take_probe(self) -> bool:
        """Take in the probe in flight if it is back; returns False while it is not (over an
        emulated link its bytes still wait there, without one its POST is on the uplink: an
        upload now would share the link with it, and both times would be off)."""
        if self.link is not None:
            if self.link.pending():
                return False
            seconds: float | None = self._probe_link_s
        else:
            future = self._probe_future
            if future is not None and not future.done():
                return False
            self._probe_future = None
            try:
                seconds = math.nan if future is None else future.result()
            except Exception:  # the worker failed: nothing learnt, and nothing left stuck
                seconds = math.nan
        nbytes, self._probe_bytes = self._probe_bytes, 0
        if seconds is None:
            self.uplink_probes = False
        elif math.isfinite(seconds):
            self.estimator.observe(nbytes, seconds)
            self._last_sample = self._clock()
        return True

    def _switch_to(self, variant_id: str, decided: float) -> None:
        """Make ``variant_id`` the variant in use; record how long that took."""
        self.active_head = self.heads.get(variant_id)  # the whole switch: a loaded session
        if variant_id != self._in_use:
            self._cold = variant_id  # its first run after a switch: caches cold, not its usual time
        if self._in_use is not None and variant_id != self._in_use:
            self.stats["switches"] += 1
            self.stats["switch_ms"].append((time.perf_counter() - decided) * 1e3)
        self._in_use = variant_id

    # -- running -------------------------------------------------------------------------------

    def _as_batch(self, x: np.ndarray) -> tuple[np.ndarray, bool]:
        if (type(x) is np.ndarray and x.shape == self._sample_shape  # one sample: the usual
                and x.dtype in _INPUT_DTYPES and x.flags.c_contiguous):
            return x[np.newaxis], True
        x = np.asarray(x)
        sample_shape = self._sample_shape
        single = x.ndim == len(sample_shape)
        batch = x[np.newaxis] if single else x
        dims_ok = batch.ndim == len(sample_shape) + 1 and batch.shape[0] >= 1 and all(
            not isinstance(d, int) or d == n for d, n in zip(sample_shape, batch.shape[1:]))
        if x.dtype not in _INPUT_DTYPES or not dims_ok:  # (dtype.name is slow to read)
            raise InvalidInputError(
                f"input: found {x.dtype.name} {x.shape}, expected uint8 pixels or float32 "
                f"normalized input of shape {sample_shape} or (batch, {', '.join(map(str, sample_shape))})")
        return np.ascontiguousarray(batch), single

    def _model_input(self, batch: np.ndarray) -> np.ndarray:
        if batch.dtype == np.uint8 and self.manifest.input.dtype != "uint8":
            return normalize_uint8(batch, self.manifest.preprocessing)
        return batch

    def _device_compute(self, variant_id: str, compute: Callable[[], object],
                        batch_size: int) -> tuple[object, float]:
        """Run device compute stretched by the emulated load; observe the load it met."""
        output, seconds = self.emulated_load.stretch(compute, key=(variant_id, batch_size))
        self._observe_device_ms(variant_id, seconds * 1e3 / batch_size)
        return output, seconds * 1e3

    def _observe_device_ms(self, variant_id: str, sample_ms: float) -> None:
        """Device load = a variant's device compute over its unloaded reference, itself its
        first REFERENCE_REQUESTS observations, each divided by the load known then (1 at
        start: the device is assumed to run at its usual load when the runtime starts).

        Observed against the profiles instead, on a 2-core host, the load of a split variant
        whose head computes in 13 us came out about 5 and that of ``local`` about 2.5 on the same
        device at once (per-call overhead and cold caches between sporadic requests, which a
        compile-time profile of a session run in a loop does not see): each switch between
        them looked like a change of load, and a load that tripled did not move the runtime.
        Timed at start-up in a loop, the split heads' reference was 9 times too small.

        A reference only goes down after it is set: when the median of the variant's last
        REFERENCE_REQUESTS observations is below it (by more than REFERENCE_SLACK), that
        median is the new one (a load makes a head slower, never faster). A head's first runs
        are slower than its usual (caches, allocations), and the emulated device's time
        follows the host's typical time of the last runs, which falls over the first tens:
        in a run of ``bench runtime`` on the demo's bundle (ATT-LTE-driving, device 30x) the
        reference of ``local`` stayed 18 % above what it took from then on, the load read
        1.0 (each ratio is clamped to >= 1), and ``local`` was planned at 25.1 ms (median)
        where the fixed ``local`` method took 21.3."""
        reference = self.unloaded_ms.get(variant_id)
        if reference is not None:
            self.device_loads.observe(sample_ms, reference)
            recent = self._recent_ms.get(variant_id)
            if recent is None:
                recent = self._recent_ms[variant_id] = deque(maxlen=REFERENCE_REQUESTS)
            recent.append(sample_ms)
            # the median of an odd count, without statistics.median's checks (every request)
            lower = (sorted(recent)[REFERENCE_REQUESTS // 2]
                     if len(recent) == REFERENCE_REQUESTS else reference)
            if lower < (1 - REFERENCE_SLACK) * reference:
                self.unloaded_ms[variant_id] = lower  # it was set high: see the docstring
                if self.plan_measured_heads:
                    self._plan_with_measured_heads()
            return
        if self.plan_measured_heads and self._cold == variant_id:
            self._cold = None  # a reference that plans the head leaves out its cold first run
            return
        seen = self._reference_ms.setdefault(variant_id, [])
        seen.append(sample_ms / self.device_loads.latest())
        if len(seen) >= REFERENCE_REQUESTS:
            self.unloaded_ms[variant_id] = float(np.median(seen))
            del self._reference_ms[variant_id]
            if self.plan_measured_heads:
                self._plan_with_measured_heads()

    def _plan_with_measured_heads(self) -> None:
        """Plan each head with what it takes here once its reference is known, not with the
        compile's profile. A head run now and then takes longer than one timed in a loop, and
        not by the same factor for every variant: in the demo (``splitpack demo``, device 30x)
        a stem head profiled at 0.063 ms took 6.0 ms stretched (3.2x the plan), the whole
        model 17.3 ms (1.7x), so the profiles misrank variants whose heads are close.
        A head not measured yet is planned optimistically, at the smaller of its profile and
        its profile x the measured heads' median ratio to theirs: so it is tried (and
        measured) when its profile says it may be the better one, and a device faster than its
        profiles does not make every head it has not run look slow. The cost is the tries:
        over Verizon-LTE-short at 10x the demo's three splits, planned at 7.2-8.6 ms against
        ``local``'s measured 9.7, were each run for four requests (a reference takes three
        after the first, cold run) and took 11.3-21.0 ms where ``local`` took 9.4-12.6.
        Scaling the profiles up as well, by the smallest measured ratio, was tried and is
        worse: a small head runs many times its profile (per-call overhead), so once a split
        had been measured first, ``local`` was planned at 37.9-49.3 ms where the fixed
        ``local`` method took 8.8-16.1, and the runtime answered 136 of 150 requests with
        that split, at 12.3 ms (median) against ``local``'s 9.3 in the same rounds (the same
        bundle and trace, a second sweep).

        What is measured is the whole device computation of a request: the head and the
        encoding of what it sends (a split's entropy coding, the ``edge`` variant's image
        encoding), so a measured variant is planned with ``encode_ms`` 0 (folded in, as
        :class:`VariantProfile` allows). Before, the profile's ``encode_ms`` was planned on
        top of a measurement that held it already: the ``edge`` variant of a CIFAR-10
        ResNet-20 bundle (a WebP upload) was planned 4.5-5.3 ms (median) above what the fixed
        ``edge`` method took at 30x, and the runtime answered 133 of 150 requests over
        Verizon-LTE-short locally where ``edge`` was 15 % faster."""
        ratios = [self.unloaded_ms[vid] / (self.device_slowdown * sum(self._profiled_device_ms[vid]))
                  for vid in self.unloaded_ms if sum(self._profiled_device_ms.get(vid, (0.0,))) > 0]
        scale = min(1.0, float(np.median(ratios))) if ratios else 1.0
        for vid, (head, encode) in self._profiled_device_ms.items():
            if vid in self.unloaded_ms:  # measured: the head and its encoding together
                head_ms, encode_ms = self.unloaded_ms[vid] / self.device_slowdown, 0.0
            else:
                head_ms, encode_ms = head * scale, encode * scale
            self.profiles[vid] = replace(self.profiles[vid], head_ms=head_ms, encode_ms=encode_ms)
        self.selector = Selector(list(self.profiles.values()), self.constraints)

    def _run_head(self, variant_id: str, model_input: np.ndarray) -> tuple[np.ndarray, float]:
        return self._device_compute(variant_id, lambda: self.heads[variant_id].run(model_input),
                                    len(model_input))

    def _upload(self, variant, batch: np.ndarray) -> bytes:
        raw = batch if batch.dtype == np.uint8 else denormalize_to_uint8(
            batch, self.manifest.preprocessing)
        # Raw pixels stay uint8, lossless or in the compiled lossy format: never float32.
        return encode_request(variant, raw, wire_bundle_id=self.wire_bundle_id)

    def _payload(self, variant_id: str, batch: np.ndarray) -> tuple[bytes, float]:
        variant = self.variants[variant_id]
        if variant.kind == "edge":
            return self._device_compute(variant_id, lambda: self._upload(variant, batch),
                                        len(batch))
        # The head and the coding of its codes are one device computation (entropy coding
        # runs on the device's CPU too): stretched and observed together.
        head, model_input = self.heads[variant_id], self._model_input(batch)
        tables, wire_id = self.tables.get(variant_id), self.wire_bundle_id
        return self._device_compute(variant_id, lambda: encode_request(
            variant, head.run(model_input), wire_bundle_id=wire_id, tables=tables), len(batch))

    def _hedge_s(self, nbytes: int) -> float | None:
        """How long an upload waits before the local answer is started beside it:
        ``hedge_factor`` x its planned transfer time; 0 for an exploration (the runtime
        expects local to win); None without an emulated link or with ``hedge_factor`` None."""
        if self.link is None or self.hedge_factor is None or self.pinned is not None:
            return None
        if self._just_explored:
            return 0.0
        return self.hedge_factor * self.estimator.fit().transfer_ms(nbytes) / 1e3

    def _send(self, payload: bytes, hedge_s: float | None, batch_size: int,
              model_input: Callable[[], np.ndarray]) -> float:
        """Push the payload through the emulated link (if any); its seconds there. Past
        ``hedge_s`` the local answer is computed beside the wait (see :meth:`_local_beside`);
        if it is ready first, _DeadlineMissed carries it (the wait is then a sample: the
        transfer took at least as long)."""
        if self.link is None:
            return 0.0
        if hedge_s is None:
            return self.link.send(len(payload))
        key = (self.local_id, batch_size)
        slowdown = self.emulated_load.slowdown_now()
        host_s = self.emulated_load.typical_seconds(key, 1.0)  # None before its first run
        # While the device computes the local answer, the radio waits: only the last of that
        # (the host's share) needs the host, so one wait covers the rest.
        lead_s = 0.0 if host_s is None else host_s * (max(1.0, slowdown) - 1.0)
        waited, delivered = self.link.send_within(len(payload), hedge_s + lead_s)
        if not delivered or waited > hedge_s:  # not out by hedge_s: hedged
            self.stats["hedges"] += 1
        if delivered:
            return waited
        more, output, local_s = self._local_beside(model_input(), key, slowdown, lead_s)
        waited += more
        if output is None:
            return waited  # the upload went out first
        self.estimator.observe(len(payload), waited)
        self._last_sample = self._clock()
        raise _DeadlineMissed(waited, output, local_s * 1e3)

    def _local_beside(self, model_input: np.ndarray, key: tuple, slowdown: float,
                      lead_s: float) -> tuple[float, np.ndarray | None, float]:
        """The local answer of a hedged upload whose wait has run ``lead_s`` into it:
        (seconds waited on the link here, the local output or None if the upload went out
        before it was ready, its emulated device seconds).

        The device computes the local answer while its radio waits, so the answer is ready
        its emulated device time after the hedge began, unless the upload goes out first.
        Emulated on one host, the host does that compute only when it is needed: the link is
        waited on for the local run's typical device time less its typical host time
        (``lead_s``, by the caller), then the local head runs here at the host's speed, then
        the link is waited on for what the run's device time has left. A thread computing the
        local answer beside every hedged upload (the way before) competed for this 2-core
        host's CPU with the HTTP exchange and the edge's tail whenever the upload went out
        first, which on a steady link is most hedges: the upload's time is close to its plan,
        so about half pass it. An upload that goes out while the head computes here answers
        if it went out before the local run's device time was over
        (:meth:`ShapedLink.backlog_s`)."""
        load = self.emulated_load
        output, measured_s = load.measure(lambda: self.heads[self.local_id].run(model_input))
        local_s = load.device_seconds(measured_s, slowdown, key=key)
        self._observe_device_ms(self.local_id, local_s * 1e3 / len(model_input))
        local_in = local_s - lead_s - measured_s  # when the device has the answer, from now
        out_in = self.link.backlog_s()  # when the upload goes (or went) out, from now
        if out_in <= 0.0 and out_in < local_in:  # it went out first, while the head ran here
            # not before the head started here: the link's and the timer's clocks may differ
            # by the few microseconds between the two readings (a wait is never negative)
            return max(0.0, measured_s + out_in), None, 0.0
        waited = measured_s
        if local_in > 0.0:  # its device time is not over: the upload may still win
            more, delivered = self.link.wait_sent(local_in)
            waited += more
            if delivered:
                return waited, None, 0.0
        return waited, output, local_s

    def _exchange(self, variant_id: str, payload: bytes, batch_size: int,
                  model_input: Callable[[], np.ndarray]) -> tuple:
        """Send one payload; returns (output, transfer_ms, edge_ms) or raises _EdgeFailure
        or _DeadlineMissed."""
        link_s = self._send(payload, self._hedge_s(len(payload)), batch_size, model_input)
        started = time.perf_counter()
        try:
            response = self._client.post("/v1/infer", content=payload,
                                         headers={"content-type": _OCTET_STREAM})
        except httpx.TimeoutException as exc:
            raise _EdgeFailure(f"timed out after {self.timeout_s:g} s ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise _EdgeFailure(f"{type(exc).__name__}: {exc}") from None
        http_s = time.perf_counter() - started
        if response.status_code != 200:
            try:
                reason = response.json().get("error", response.text[:200])
            except (ValueError, AttributeError):
                reason = response.text[:200]
            raise _EdgeFailure(f"edge answered {response.status_code}: {reason}")
        try:
            header, output = decode_payload(response.content)
        except WireFormatError as exc:
            raise _EdgeFailure(f"malformed response: {exc}") from None
        if (header.bundle_id, header.variant_id, header.dtype) != (
                self.wire_bundle_id, variant_id, "float32") or output.shape[0] != batch_size:
            raise _EdgeFailure(f"response for {header.bundle_id}/{header.variant_id} "
                               f"{header.dtype} {header.shape} does not answer this request")
        try:
            edge_ms = float(response.headers.get("x-splitpack-tail-ms", "nan"))
        except ValueError:
            edge_ms = math.nan
        edge_ms = edge_ms if math.isfinite(edge_ms) and edge_ms >= 0 else 0.0
        # With an emulated link the link is the uplink; otherwise the uplink is what the HTTP
        # exchange took beyond the edge's compute and the assumed round trip.
        uplink_s = link_s if self.link is not None else max(
            0.0, http_s - edge_ms / 1e3 - self.rtt_ms / 1e3)
        self.estimator.observe(len(payload), uplink_s)
        self._link_ms = uplink_s * 1e3
        self._last_sample = self._clock()
        if batch_size == 1 and self._note_payload(variant_id, len(payload)):
            self.selector = Selector(list(self.profiles.values()), self.constraints)
        profile = self.profiles[variant_id]
        self.edge_loads.observe(edge_ms / batch_size, profile.decode_ms + profile.tail_ms)
        return output, max(0.0, (link_s + http_s) * 1e3 - edge_ms), edge_ms

    def _seed_edge_payload(self) -> None:
        """Plan ``edge`` uploads at the mean size of the bundle's own sample images as they
        would be sent (in the variant's upload format): a manifest compiled before uploads had
        a measured size states the uncompressed one, and a runtime that never sends raw input
        because of that size would never learn the real one. Runs before the selector is
        built."""
        edge_id = next((v.id for v in self.manifest.variants if v.kind == "edge"), None)
        if edge_id is None or self.manifest.samples is None:
            return
        inputs, _ = read_samples(self.bundle)
        if inputs.dtype != np.uint8:
            return  # not pixels: the uncompressed size stands
        edge = self.variants[edge_id]  # sizes only: neither stretched nor observed as load
        sizes = [len(self._upload(edge, inputs[i:i + 1])) for i in range(len(inputs))]
        if sizes:
            self._note_payload(edge_id, round(sum(sizes) / len(sizes)))

    def _note_payload(self, variant_id: str, nbytes: int) -> bool:
        """Track what a one-sample request of ``variant_id`` really sends; when that drifts
        from the profile's ``payload_bytes``, plan with it. Returns whether the profile
        changed (the caller then builds a new selector: microseconds)."""
        previous = self.sent_bytes.get(variant_id)
        mean = nbytes if previous is None else (
            (1.0 - PAYLOAD_SMOOTHING) * previous + PAYLOAD_SMOOTHING * nbytes)
        self.sent_bytes[variant_id] = mean
        profile = self.profiles[variant_id]
        if abs(mean - profile.payload_bytes) <= PAYLOAD_TOLERANCE * profile.payload_bytes:
            return False
        self.profiles[variant_id] = replace(profile, payload_bytes=max(1, round(mean)))
        return True

    def _note_residual(self, variant_id: str, profile: VariantProfile, latency_ms: float,
                       head_ms: float) -> None:
        """Learn what a one-sample request of ``variant_id`` takes beyond its plan, the
        device compute's and the link's shares left out: ``latency_ms`` less its head's device
        time and its link time, against the plan made for it (under the conditions it was
        chosen under, with the profile it had then) less the planned device compute and
        transfer. Those two have their own estimators (the load against each head's measured
        reference, the transfer fit), and the link's waits are noise here; what is left is
        what no model holds: the runtime's own time per request (input checks, encoding the
        codes, decoding the answer, its bookkeeping), the HTTP exchange beyond ``rtt_ms``, a
        tail slower or faster than its profile. The median of the last RESIDUAL_REQUESTS of
        a variant (once it has RESIDUAL_MIN) is added to its plan (``plan_offsets_ms``); a
        variant with fewer borrows the median of the others of its kind (a split from the
        splits: the same path but for the head), else 0.

        Why: a plan that leaves out a cost every request of one kind pays, and not another's,
        misranks variants whose plans are close. In a CIFAR-10 ResNet-20 bundle over
        Verizon-LTE-short at 10x (``cifar_runtime_verizon_x10`` as of commit b205cd7, from
        the code before this), ``local`` was planned at
        10.24 ms (median) where it took 10.64, and ``edge``, which took 10.03 as a fixed
        method, was planned above it: the runtime answered 123 of 150 requests locally.
        Residuals of the whole latency (head included) were tried first: a head's plan
        changes when its reference is measured and lowered (``_observe_device_ms``), and the
        first requests' residuals (7-8 ms at 30x on the demo's bundle) then held the plans of
        variants not run since 8 ms too high."""
        residual = latency_ms - head_ms  # local: its plan is its head's device time
        if profile.kind != "local":  # the rest of plan_latency_ms, as it planned it
            residual -= (self._link_ms + self.rtt_ms
                         + after_upload_ms(profile, self._conditions or self.conditions()))
        kept = self._residuals.get(variant_id)
        if kept is None:
            kept = self._residuals[variant_id] = deque(maxlen=RESIDUAL_REQUESTS)
        kept.append(residual)
        # The median is refreshed every RESIDUAL_REFRESH requests of the variant: this runs on
        # every request's path, after a head that on an emulated device slept (cold caches,
        # where the whole-latency version above, a plan and two medians, took 64-72 us).
        self._residual_count[variant_id] += 1
        count = self._residual_count[variant_id]
        if count < RESIDUAL_MIN or (count > RESIDUAL_MIN and count % RESIDUAL_REFRESH):
            return
        own = self._own_offsets
        own[variant_id] = statistics.median(kept)
        if profile.kind != "split":  # local and edge: one each, nothing to lend
            self.plan_offsets_ms = {**self.plan_offsets_ms, variant_id: own[variant_id]}
            return
        offsets = dict(self.plan_offsets_ms)
        lent = statistics.median([own[vid] for vid in self._split_ids if vid in own])
        for vid in self._split_ids:
            offsets[vid] = own.get(vid, lent)
        self.plan_offsets_ms = offsets  # replaced, not changed: a reader sees one or the other

    def _mark_down(self, reason: str) -> None:
        self.edge_up = False
        self._last_probe = self._clock()
        # A failed request measured nothing: once the edge is back, explore at the first pace.
        self.explore_interval_s, self._just_explored = self.probe_interval_s, False
        self.stats["fallbacks"] += 1
        self.stats["errors"].append(reason)
        del self.stats["errors"][:-MAX_ERRORS_KEPT]

    def infer(self, x: np.ndarray) -> InferenceResult:
        """Answer one sample or a batch with the best variant under the current conditions.

        Args:
            x: uint8 pixels or float32 normalized input, of the model's input shape with or
                without the batch dim.

        Returns:
            The output and how it was obtained.

        Raises:
            InvalidInputError: ``x`` has another dtype or shape.
        """
        with self._lock:
            started = time.perf_counter()
            batch, single = self._as_batch(x)
            variant_id, fallback = self._choose()
            self._switch_to(variant_id, decided=time.perf_counter())
            chosen, profile, answered = variant_id, self.profiles[variant_id], False
            transfer_ms = edge_ms = 0.0
            if variant_id != self.local_id:
                try:
                    payload, head_ms = self._payload(variant_id, batch)
                    output, transfer_ms, edge_ms = self._exchange(
                        variant_id, payload, len(batch), lambda: self._model_input(batch))
                    answered = True
                except _EdgeFailure as failure:
                    self._mark_down(f"variant {variant_id}: {failure}")
                    variant_id, fallback, transfer_ms, edge_ms = self.local_id, True, 0.0, 0.0
                    self._switch_to(variant_id, decided=time.perf_counter())
                    output, head_ms = self._run_head(variant_id, self._model_input(batch))
                except _DeadlineMissed as missed:
                    self.stats["deadline_misses"] += 1
                    self._stalled = True
                    variant_id, output = self.local_id, missed.output
                    head_ms, transfer_ms = head_ms + missed.local_ms, missed.seconds * 1e3
                    self._switch_to(variant_id, decided=time.perf_counter())
            else:
                if not fallback and self._probe_wanted():
                    self._send_probe()
                output, head_ms = self._run_head(variant_id, self._model_input(batch))
                answered = not fallback
            mode = self.variants[variant_id].kind
            self.stats["requests"] += 1
            self.stats["variants"][variant_id] += 1
            self.stats["modes"][mode] += 1
            latency_ms = (time.perf_counter() - started) * 1e3
            if answered and len(batch) == 1 and self.plan_measured_heads:
                self._note_residual(chosen, profile, latency_ms, head_ms)
            return InferenceResult(
                output=output[0] if single else output, variant_id=variant_id, mode=mode,
                latency_ms=latency_ms, head_ms=head_ms,
                transfer_ms=transfer_ms, edge_ms=edge_ms, fallback=fallback)

    def close(self) -> None:
        """Close the HTTP connections (the loaded heads go with the object)."""
        if self._probe_pool is not None:
            self._probe_pool.shutdown(wait=True)
        self._client.close()
        self._probe_client.close()

    def __enter__(self) -> "DeviceRuntime":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
