"""The runtime benchmark against a real edge process on loopback (``bench runtime``).

``run_runtime_benchmark`` replays an uplink trace under the adaptive :class:`DeviceRuntime`
and, in the same run, under every fixed choice: each split variant alone, ``local`` and
``edge``. Each method is one device issuing one request at a time over its own
:class:`ShapedLink`, all built on the same trace at the same ``start_offset_s`` and at the same
moment, every request of a round starting at the same trace moment (see ``_replay``), with the
same inputs (the bundle's uint8 samples,
cycled). The methods are interleaved request by request: round ``i`` starts ``i * interval_s``
after the benchmark starts (or when round ``i - 1`` ends, if later), and in it every method
answers request ``i``, one after another, in an order drawn at random each round (seeded; see
``_replay`` for why not rotated). So every method meets the same moments of the trace and the
same state of the host. Two other schedules were tried and
dropped: all methods at once, one thread each, made them slow each other down on a 2-core host
(the split variants' median went from about 8 to about 40 ms); one whole run per method, one
after another, let the host's drift between runs (0.5 ms on 3.5 ms medians) outweigh the
differences being measured.

:class:`DeviceRuntime` was not pinnable when this was written (it is now: ``pin``), so the
fixed runs drive the same path with the same pieces (:func:`load_backend` heads stretched to the scheduled device slowdown x their
measured time, :func:`encode_request`, the shaped link, ``POST /v1/infer`` with httpx); they
have no selector and no fallback, so an edge failure there is an error and a lost request.

The oracle: since every round shows each fixed method on the same moment, the best fixed
method of each round is known afterwards; ``median_latency_ms.oracle`` (and the p90, p99 and
mean figures) are those of the per-round minimum, and ``adaptive_to_oracle`` divides the
adaptive runtime's median, mean and p90 by the oracle's (see
:func:`~splitpack.bench.report.oracle_summary` for the rounds that count).

Load that changes (``--load-trace FILE``, ``--edge-load-trace FILE``: ``seconds,slowdown``
rows, :mod:`splitpack.runtimes.load`): the device slowdown follows the schedule on the same
clock as the bandwidth trace (trace time ``start_offset_s`` + seconds since the rounds
started), for the adaptive runtime and every fixed method alike; without one it is the constant
``device_slowdown``. The adaptive runtime is told only ``device_slowdown`` (by default the
schedule's slowdown at ``start_offset_s``) and follows the rest from what it measures. The edge
process stretches its tails to the edge schedule, started on the same clock through its standard
input. ``load_changes`` gives, for each change in the replayed segment, its time and when the
adaptive runtime first switched variant after it (and when it last did before the next
change). An ``edge`` upload's preparation (zlib, PNG, JPEG) is device compute too, and is
stretched like a head (format /2; /1 stretched heads only). For example, a device 16x slower
than this host whose slowdown triples for 20 s, over a steady 10 Mbit/s uplink: with
``flat.csv`` of the rows ``seconds,mbps``, ``0,10``, ``1,10`` and ``load.csv`` of the rows
``seconds,slowdown``, ``0,16``, ``5,48``, ``25,16``::

    splitpack bench runtime demo-out/bundle --trace flat.csv --load-trace load.csv
        --requests 300 --out runtime_load.json --plot runtime_load.png

Imports what the runtimes import (numpy, httpx, onnxruntime); matplotlib only to plot.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import httpx
import numpy as np

from splitpack.bench.defaults import DEFAULT_INTERVAL_S, DEFAULT_REQUESTS, DEFAULT_THREADS
from splitpack.bench.report import (
    RUNTIME_FORMAT, load_info, runtime_result, summarize_run, switches_after_changes, trace_info,
)  # fmt: skip
from splitpack.bench.support import OCTET_STREAM_HEADERS, host_info, model_input
from splitpack.errors import InvalidConfigError, SplitpackError, WireFormatError
from splitpack.formats.bundle import Bundle, read_bundle, read_samples
from splitpack.formats.wire import decode_payload
from splitpack.runtimes.backends import (
    encode_request, load_backend, load_entropy_tables, wire_bundle_id,
)  # fmt: skip
from splitpack.runtimes.device import DeviceRuntime, InferenceResult
from splitpack.runtimes.load import EmulatedLoad, LoadSchedule, constant_load, read_load_trace
from splitpack.runtimes.netem import BandwidthTrace, ShapedLink
from splitpack.runtimes.netem import load_trace as load_bandwidth_trace
from splitpack.serving.loopback import edge_server

__all__ = ["RUNTIME_FORMAT", "run_runtime_benchmark"]

BANDWIDTH_WINDOW_S = 1.0  # mahimahi rates are spiky at 1 ms; the log shows 1 s means
# A safety stop, not a pace: a round takes every method's latency, which on a slow link and a
# slow device is several times interval_s (about 6 times on TMobile with a 50x device).
MAX_RUN_FACTOR = 20
WARMUP_REQUESTS = 10  # per variant; the first two (cold) do not count towards the rtt



class _RequestFailed(Exception):
    """A fixed-variant request got no usable answer; the message says why."""


# -- one fixed variant, on the device runtime's path -----------------------------------------------

class _FixedVariant:
    """Answers every request with one variant: head (stretched), wire payload, link, POST."""

    def __init__(self, bundle: Bundle, variant_id: str, heads: dict, client: httpx.Client,
                 link: ShapedLink | None, emulated_load: EmulatedLoad) -> None:
        self.manifest = bundle.manifest
        self.variant = next(v for v in self.manifest.variants if v.id == variant_id)
        self.head = heads.get(variant_id)
        self.wire_id = wire_bundle_id(self.manifest)
        self.tables = load_entropy_tables(bundle, self.variant)
        self.client, self.link, self.emulated_load = client, link, emulated_load

    def _run_head(self, batch: np.ndarray) -> tuple[np.ndarray, float]:
        # Normalized outside the stretch, as DeviceRuntime does: only the head is stretched.
        inputs = model_input(self.manifest, batch)
        output, seconds = self.emulated_load.stretch(lambda: self.head.run(inputs),
                                                     key=(self.variant.id, len(inputs)))
        return output, seconds * 1e3

    def infer(self, sample: np.ndarray) -> InferenceResult:
        started = time.perf_counter()
        batch, kind, vid = sample[np.newaxis], self.variant.kind, self.variant.id
        if kind == "local":
            output, head_ms = self._run_head(batch)
            return InferenceResult(output[0], vid, kind, (time.perf_counter() - started) * 1e3,
                                   head_ms, 0.0, 0.0, False)
        if kind == "edge":  # the upload the manifest names, stretched as DeviceRuntime's
            payload, seconds = self.emulated_load.stretch(
                lambda: encode_request(self.variant, batch, wire_bundle_id=self.wire_id),
                key=(vid, len(batch)))
            head_ms = seconds * 1e3
        else:  # the head and the coding of its codes: one stretch, as DeviceRuntime's
            inputs = model_input(self.manifest, batch)
            payload, seconds = self.emulated_load.stretch(
                lambda: encode_request(self.variant, self.head.run(inputs),
                                       wire_bundle_id=self.wire_id, tables=self.tables),
                key=(vid, len(batch)))
            head_ms = seconds * 1e3
        link_s = self.link.send(len(payload)) if self.link is not None else 0.0
        sent = time.perf_counter()
        output, edge_ms = _post(self.client, payload, vid)
        http_ms = (time.perf_counter() - sent) * 1e3
        return InferenceResult(output[0], vid, kind, (time.perf_counter() - started) * 1e3,
                               head_ms, max(0.0, link_s * 1e3 + http_ms - edge_ms), edge_ms, False)


def _post(client: httpx.Client, payload: bytes, variant_id: str) -> tuple[np.ndarray, float]:
    """POST one payload; (output, tail ms the edge reported) or _RequestFailed."""
    try:
        response = client.post("/v1/infer", content=payload, headers=OCTET_STREAM_HEADERS)
    except httpx.HTTPError as exc:
        raise _RequestFailed(f"{type(exc).__name__}: {exc}") from None
    if response.status_code != 200:
        raise _RequestFailed(f"edge answered {response.status_code}: {response.text[:200]}")
    try:
        header, output = decode_payload(response.content)
    except WireFormatError as exc:
        raise _RequestFailed(f"malformed response: {exc}") from None
    if header.variant_id != variant_id:
        raise _RequestFailed(f"response for variant {header.variant_id!r}, sent {variant_id!r}")
    try:
        edge_ms = float(response.headers.get("x-splitpack-tail-ms", "0"))
    except ValueError:
        edge_ms = 0.0
    return output, edge_ms if math.isfinite(edge_ms) else 0.0


# -- replaying a trace ----------------------------------------------------------------------------

class _TurnClock:
    """A device's link clock on which each of its turns starts at its round's start.

    The devices of a round take turns one after another, so on the wall clock the last one's
    request meets the trace up to a round's time (tens of milliseconds) after the first one's;
    on a cellular trace, whose transmission opportunities come and go within milliseconds, the
    per-round best method was then partly the one that met the luckiest moment. On this clock
    every device's request ``i`` starts at the same trace moment, and time runs at the wall
    clock's pace within a turn (a send sleeps as long as the trace says). Monotonic: a round
    starts after every turn of the round before it has ended.
    """

    def __init__(self, wall: Callable[[], float] = time.monotonic) -> None:
        self._wall, self._shift = wall, 0.0

    def __call__(self) -> float:
        return self._wall() + self._shift

    def begin_turn(self, round_started: float) -> None:
        """The turn starting now is the device's turn of the round that started at
        ``round_started`` (a reading of the wall clock)."""
        self._shift = round_started - self._wall()


def _replay(devices: dict[str, DeviceRuntime | _FixedVariant], trace: BandwidthTrace,
            inputs: np.ndarray, expected: dict, *, requests: int, interval_s: float,
            start_offset_s: float, max_run_s: float, device_load: LoadSchedule,
            edge_load: LoadSchedule, start_edge_clock: Callable[[float], None] | None,
            observe: dict[str, Callable[[], dict]],
            report: dict[str, Callable[[], dict]]) -> dict[str, list[dict]]:
    """Issue ``requests`` paced rounds; in each round every device answers request ``i``.

    Every device gets its own :class:`ShapedLink` on ``trace``, all built at one moment, each
    on a :class:`_TurnClock`, so every device's request ``i`` meets the trace at the same
    moment (the round's start; before, at its turn's start, up to a round's time later), on the
    same machine state. One :class:`EmulatedLoad` of ``device_load``, started at that moment
    too, stretches every device's compute, keyed by variant (:meth:`EmulatedLoad.stretch`:
    every method that runs a head gets the same device time for it, up to host jitter);
    ``start_edge_clock`` (given the wall-clock time of that moment) starts the edge's. The devices take turns one after another (never two requests at once) in an
    order drawn at random each round (seeded), so that none is always first after the pause
    and none always follows the same method. (The order was rotated by one each round, which
    keeps every method behind the same one: in the demo's bundle, the adaptive runtime always
    ran right after the ``edge`` method's WebP encoding, and its requests on ``cut03`` took
    10.69 ms (median) against 8.99 for the fixed ``cut03``, which always followed ``cut02``,
    over a constant 20 Mbit/s uplink at device 30x; device compute is stretched 30x, so a few
    tens of microseconds of cold caches read as a millisecond.)

    Returns:
        Per device, one record per answered or failed request, with its round, the slowdowns
        scheduled when it started, what ``observe[name]`` returns just before it (the adaptive
        runtime's view of the conditions) and ``report[name]`` just after it.
    """
    names = list(devices)
    emulated = EmulatedLoad(device_load, start_offset_s=start_offset_s, started=False)
    clocks = {name: _TurnClock() for name in names}
    links = {name: ShapedLink(trace, start_offset_s=start_offset_s, clock=clocks[name])
             for name in names}
    for name, device in devices.items():
        device.link, device.emulated_load = links[name], emulated
    records: dict[str, list[dict]] = {name: [] for name in names}
    turns = np.random.default_rng(0)  # draws each round's order of turns (seeded: runs compare)
    started = time.monotonic()  # the links were built just now: trace time = offset + elapsed
    emulated.start(started)
    if start_edge_clock is not None:
        start_edge_clock(time.time())
    for number in range(requests):
        wait = started + number * interval_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if time.monotonic() - started > max_run_s:
            break  # the rest are never issued: reported as skipped, not as lost
        index, round_started = number % len(inputs), time.monotonic()
        for name in (names[i] for i in turns.permutation(len(names))):
            clocks[name].begin_turn(round_started)
            elapsed = time.monotonic() - started
            record = {"round": number, "t_s": round(elapsed, 4),
                      "trace_s": round(start_offset_s + elapsed, 4),
                      "link_trace_s": round(start_offset_s + round_started - started, 4),
                      "mbps": round(links[name].current_mbps(BANDWIDTH_WINDOW_S), 4),
                      "device_slowdown": device_load.slowdown_at(start_offset_s + elapsed),
                      "edge_slowdown": edge_load.slowdown_at(start_offset_s + elapsed),
                      "sample": index, **(observe[name]() if name in observe else {})}
            try:
                result = devices[name].infer(inputs[index])
            except (_RequestFailed, SplitpackError, httpx.HTTPError) as failure:
                records[name].append({**record, "error": f"{type(failure).__name__}: {failure}"[:300]})
                continue
            reference = expected[result.variant_id][index]
            records[name].append({
                **record, "variant": result.variant_id, "mode": result.mode,
                "latency_ms": round(result.latency_ms, 4), "head_ms": round(result.head_ms, 4),
                "transfer_ms": round(result.transfer_ms, 4), "edge_ms": round(result.edge_ms, 4),
                "fallback": result.fallback,
                "argmax_agrees": bool(np.argmax(result.output) == np.argmax(reference)),
                **(report[name]() if name in report else {})})
    return records


def _conditions_seen(runtime: DeviceRuntime) -> dict:
    """What the adaptive runtime's selector will see for the next request, and the latency
    it plans for each feasible variant under it, its learned correction included, and that
    correction (ms; read outside the timed request)."""
    plans = runtime.plans_ms()
    fit = runtime.estimator.fit()
    return {"estimated_mbps": round(fit.mbps, 4), "estimated_delay_ms": round(fit.delay_ms, 3),
            "device_load": round(runtime.device_load, 3), "edge_load": round(runtime.edge_load, 3),
            "plans_ms": {vid: round(ms, 3) for vid, ms in plans.items()},
            "plan_offsets_ms": {vid: round(ms, 3) for vid, ms in runtime.plan_offsets_ms.items()}}


def _warm_up(fixed: dict[str, _FixedVariant], inputs: np.ndarray) -> float:
    """A few unshaped requests per variant (first runs are slow); returns the loopback HTTP
    overhead in ms (request time less the edge's compute, median) for the selector's rtt."""
    overhead = []
    for runner in fixed.values():
        for number in range(WARMUP_REQUESTS):
            result = runner.infer(inputs[number % len(inputs)])
            if result.mode != "local" and number >= 2:
                overhead.append(result.transfer_ms)
    return float(np.median(overhead)) if overhead else 1.0


def _schedule(load: str | os.PathLike[str] | LoadSchedule | None) -> LoadSchedule | None:
    return load if load is None or isinstance(load, LoadSchedule) else read_load_trace(load)


def _edge_load_file(stack: ExitStack,
                    given: str | os.PathLike[str] | LoadSchedule | None) -> str | None:
    """The file the edge process reads its schedule from (a temporary one for a schedule
    given in memory)."""
    if not isinstance(given, LoadSchedule):
        return None if given is None else os.fspath(given)
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="splitpack-load-")))
    (folder / "edge_load.csv").write_text("".join(f"{t!r},{s!r}\n" for t, s in given.rows()))
    return os.fspath(folder / "edge_load.csv")


def run_runtime_benchmark(bundle: str | os.PathLike[str], trace: str | os.PathLike[str] | BandwidthTrace,
                          *, requests: int = DEFAULT_REQUESTS, interval_s: float = DEFAULT_INTERVAL_S,
                          start_offset_s: float = 0.0, device_slowdown: float | None = None,
                          load_trace: str | os.PathLike[str] | LoadSchedule | None = None,
                          edge_load_trace: str | os.PathLike[str] | LoadSchedule | None = None,
                          threads: int | None = DEFAULT_THREADS, hysteresis: float = 0.1,
                          uplink_probes: bool = True,
                          port: int = 0, out_json: str | os.PathLike[str] | None = None,
                          out_png: str | os.PathLike[str] | None = None) -> dict:
    """Replay ``trace`` against a real edge process: adaptive runtime and every fixed choice.

    Args:
        bundle: A bundle folder or archive with samples.
        trace: A trace file (mahimahi or seconds,mbps CSV) or a :class:`BandwidthTrace`.
        requests: Requests per run (>= 1); each run spans ``requests * interval_s`` s of trace.
        interval_s: Pacing: request ``i`` is due ``i * interval_s`` after its run starts.
        start_offset_s: The trace time at which every run starts.
        device_slowdown: The device is this many times slower than this host: what the adaptive
            runtime is told, and, without ``load_trace``, how much every method's device
            compute is stretched. None: with ``load_trace``, its slowdown at
            ``start_offset_s``; else the bundle's ``profiles.device_slowdown`` (1 if none).
        load_trace: Device load that changes: a ``seconds,slowdown`` file or a
            :class:`LoadSchedule`, on the bandwidth trace's clock; every method's device
            compute is stretched to the slowdown scheduled when it starts.
        edge_load_trace: The same for the edge's tails, applied by the edge process.
        threads: Threads of every head and tail session (None: ONNX Runtime's choice). One by
            default: device and edge share this host, and a multi-threaded session's workers
            keep spinning after each run, so one side's idle threads were timed as the other
            side's compute, and the device's share then stretched ``device_slowdown`` times:
            on a 2-core host, in one interleaved run with ONNX Runtime's default threads, the
            adaptive runtime's ``local`` requests took 3.4 ms (median) and the local-only
            method's 4.1 ms, the same head; with one thread each, 3.0 and 2.9 ms.
        hysteresis: The adaptive runtime's (``DeviceRuntime(hysteresis=...)``): the fraction
            by which a variant's plan must beat the current one's to switch.
        uplink_probes: The adaptive runtime's (``DeviceRuntime(uplink_probes=...)``): probe
            the uplink while it answers locally (True), or explore with remote requests.
        port: The edge server's loopback port; 0 (the default) for a free one.
        out_json, out_png: Where to write the result and its plot (optional).

    Returns:
        The result (also written to ``out_json``): ``median_latency_ms``, ``p90_latency_ms``,
        ``p99_latency_ms`` and ``mean_latency_ms`` (each ``{adaptive, best_static, local,
        edge, oracle}``), ``adaptive_to_oracle`` (median, mean and p90 ratios) and ``oracle``
        (its rule, the rounds counted, how often each method was the best),
        ``best_static_variant`` and ``static_median_latency_ms`` (every split variant),
        ``switches``, ``switch_ms_p99``, ``errors`` and ``lost`` (summed over every run),
        ``requests``, ``trace``, ``device_slowdown``, ``load`` (the device and edge schedules;
        None without one) and ``load_changes`` (per change in the segment: when, and the
        adaptive runtime's first switch after it), ``rtt_ms`` (the loopback overhead given to
        the selector), ``targets``, ``runs`` (per run: medians, counts, variants used),
        ``log`` (per adaptive request: round, time, bandwidth, scheduled slowdowns, the
        runtime's estimate and loads, the variant that answered and the ``selected`` one,
        latency and its parts), ``fixed_log`` (time and latency per request of each fixed
        run) and ``oracle_log`` (per round: time, latency, method).
    """
    if isinstance(requests, bool) or not isinstance(requests, int) or requests < 1:
        raise InvalidConfigError(f"requests: found {requests!r}; expected an int >= 1")
    if not (isinstance(interval_s, (int, float)) and 0 <= interval_s <= 60):
        raise InvalidConfigError(f"interval_s: found {interval_s!r}; expected seconds in [0, 60]")
    device_schedule, edge_schedule = _schedule(load_trace), _schedule(edge_load_trace)
    opened, host = read_bundle(bundle), host_info()
    manifest = opened.manifest
    if device_slowdown is None:
        device_slowdown = (device_schedule.slowdown_at(start_offset_s) if device_schedule
                           else float(manifest.profiles.get("device_slowdown", 1.0)))
    if not (isinstance(device_slowdown, (int, float)) and device_slowdown > 0):
        raise InvalidConfigError(f"device_slowdown: found {device_slowdown!r}; expected > 0")
    replayed = trace if isinstance(trace, BandwidthTrace) else load_bandwidth_trace(trace)
    source = replayed.source if isinstance(trace, BandwidthTrace) else os.fspath(trace)
    inputs, expected = read_samples(opened)
    if inputs.dtype != np.uint8:
        raise InvalidConfigError(f"bundle {opened.root}: samples are {inputs.dtype}; the "
                                 "benchmark replays uint8 pixels (recompile with image samples)")
    heads = {v.id: load_backend(opened, v, threads=threads)
             for v in manifest.variants if v.kind in ("split", "local")}
    split_ids = [v.id for v in manifest.variants if v.kind == "split"]
    local_id = next(v.id for v in manifest.variants if v.kind == "local")
    edge_id = next(v.id for v in manifest.variants if v.kind == "edge")
    fixed_ids = [*split_ids, local_id, edge_id]
    steady = EmulatedLoad(constant_load(device_slowdown))  # warm-up, before the rounds start
    with ExitStack() as stack:
        edge = stack.enter_context(edge_server(
            opened.root, threads=threads, load_start_offset_s=start_offset_s, port=port,
            load_trace=_edge_load_file(stack, edge_load_trace)))
        fixed = {vid: _FixedVariant(opened, vid, heads, stack.enter_context(
            httpx.Client(base_url=edge.url, timeout=10.0)), None, steady) for vid in fixed_ids}
        rtt_ms = _warm_up(fixed, inputs)
        runtime = stack.enter_context(DeviceRuntime(
            opened, edge.url, device_slowdown=device_slowdown, rtt_ms=rtt_ms, threads=threads,
            hysteresis=hysteresis, uplink_probes=uplink_probes))
        for head in runtime.heads.values():  # a head's first run is slow; not the device's state
            head.run(model_input(manifest, inputs[:1]))
        logs = _replay({"adaptive": runtime, **fixed}, replayed, inputs, expected,
                       requests=requests, interval_s=interval_s, start_offset_s=start_offset_s,
                       device_load=device_schedule or constant_load(device_slowdown),
                       edge_load=edge_schedule or constant_load(1.0),
                       start_edge_clock=edge.start_load_clock if edge_schedule else None,
                       observe={"adaptive": lambda: _conditions_seen(runtime)},
                       report={"adaptive": lambda: {"selected": runtime.current_variant}},
                       max_run_s=MAX_RUN_FACTOR * requests * interval_s + 300.0)
        stats = runtime.stats
    lost_exceptions = sum("error" in r for r in logs["adaptive"])
    runs = {"adaptive": {
        **summarize_run(logs["adaptive"], requests, stats["fallbacks"] + lost_exceptions),
        "fallbacks": stats["fallbacks"], "explorations": stats["explorations"],
        "probes": stats["probes"], "switches": stats["switches"],
        "hedges": stats["hedges"], "deadline_misses": stats["deadline_misses"],
        "uplink_probes": stats["uplink_probes"],
        "uplink_probe_bytes": stats["uplink_probe_bytes"], "edge_errors": stats["errors"][:5]}}
    for vid in fixed_ids:
        runs[vid] = summarize_run(logs[vid], requests, sum("error" in r for r in logs[vid]))
    result = runtime_result(runs, logs, stats, split_ids, local_id, edge_id)
    host["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    result["host"] = host
    # Rounds slip when a round takes longer than interval_s: the segment is what the run spans.
    span_s = max([requests * interval_s, 1e-3] + [r["t_s"] for log in logs.values() for r in log])
    schedules = {"device": device_schedule, "edge": edge_schedule}
    result.update(trace=trace_info(replayed, source, start_offset_s, span_s, BANDWIDTH_WINDOW_S),
                  device_slowdown=device_slowdown, load={
                      name: schedule and load_info(schedule, start_offset_s, span_s)
                      for name, schedule in schedules.items()},
                  load_changes={
                      name: [] if schedule is None else switches_after_changes(
                          logs["adaptive"], schedule.changes(start_offset_s,
                                                             start_offset_s + span_s))
                      for name, schedule in schedules.items()},
                  rtt_ms=rtt_ms, threads=threads, hysteresis=hysteresis,
                  uplink_probes=uplink_probes, bundle={
                      "path": os.fspath(opened.root), "model_id": manifest.model_id,
                      "bundle_id": manifest.bundle_id,
                      "profiles_device_slowdown": manifest.profiles.get("device_slowdown"),
                      "variants": {v.id: {"kind": v.kind, "payload_bytes": v.payload_bytes,
                                          "accuracy": v.accuracy} for v in manifest.variants}},
                  pacing={"interval_s": interval_s, "requests": requests,
                          "rule": "round i starts i * interval_s after the benchmark starts, "
                                  "or when round i-1 ends if later; in a round every method "
                                  "answers request i, one request at a time",
                          "runs": "interleaved: adaptive, each split variant, local and edge "
                                  "take turns in an order drawn at random each round (seeded), "
                                  "each over its own ShapedLink on the trace from start_offset_s"})
    if out_json is not None:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(result, indent=1) + "\n")
    if out_png is not None:
        from splitpack.bench.plots import plot_runtime

        plot_runtime(result, out_png, window_s=BANDWIDTH_WINDOW_S)
    return result


# -- command line --------------------------------------------------------------------------------

