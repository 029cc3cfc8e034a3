"""Link emulation: replay a bandwidth trace on the device-to-edge uplink, and estimate it.

Runs on devices, so it imports numpy and the standard library only. Compute load that changes
over time (device or edge slowdown schedules, ``seconds,slowdown`` files) is in
:mod:`splitpack.runtimes.load`.

A :class:`BandwidthTrace` is a piecewise-constant capacity: segment ``i`` spans
``[edges_s[i], edges_s[i+1])`` and carries ``segment_bytes[i]`` bytes spread evenly over it.
The trace repeats when it reaches its end, as mahimahi does. A cumulative sum of the segment
bytes makes ``bytes_between`` and ``time_to_send`` binary searches, O(log n).

Trace files (:func:`load_trace`):

* **mahimahi** (a name not ending in ``.csv`` and a first line without a comma): one integer
  millisecond timestamp per line, non-decreasing; each line is one opportunity to send one
  1500-byte packet, so a timestamp repeated k times is k packets in that millisecond. As in
  mahimahi's ``LinkQueue``, the period is the last timestamp: the trace starts again at that
  time, so packets stamped with the last timestamp fall in millisecond 0 of the next period
  (the one-line trace ``1`` is 12 Mbit/s). Capacity keeps its 1 ms resolution.
* **CSV** ``seconds,mbps`` (an optional header line): each row's rate holds from its time until
  the next row's; the last row lasts as long as the gap before it (1 s if it is the only row).
  Times strictly increase; the trace starts at the first row's time.
"""

from __future__ import annotations

import bisect
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from splitpack.errors import InvalidConfigError

__all__ = [
    "MAHIMAHI_PACKET_BYTES", "BandwidthTrace", "load_trace", "constant_trace", "from_mbps",
    "ShapedLink", "BandwidthEstimator",
]

MAHIMAHI_PACKET_BYTES = 1500
_BYTES_PER_MBIT = 1e6 / 8


def _number(value: float, name: str, *, positive: bool = False) -> float:
    """``value`` as a float if it is finite and > 0 (``positive``) or >= 0; else an error."""
    ok = isinstance(value, (int, float, np.number)) and math.isfinite(value)
    if not (ok and (value > 0 if positive else value >= 0)):
        bound = "> 0" if positive else ">= 0"
        raise InvalidConfigError(f"{name}: found {value!r}; expected a finite number {bound}")
    return float(value)


@dataclass(frozen=True, eq=False)
class BandwidthTrace:
    """A repeating piecewise-constant uplink capacity.

    Args:
        edges_s: segment boundaries in seconds, shape (n+1,), from 0, strictly increasing; the
            last is the period ``duration_s``.
        segment_bytes: bytes each segment can carry, shape (n,), finite, >= 0, sum > 0.
        source: where the trace came from, for messages and ``repr``.
    """

    edges_s: np.ndarray = field(repr=False)
    segment_bytes: np.ndarray = field(repr=False)
    source: str = "<memory>"
    _cumulative: np.ndarray = field(init=False, repr=False)
    _rates: np.ndarray = field(init=False, repr=False)
    # The same as lists, for time_to_send: one send is a few scalar steps, and numpy's per-call
    # overhead made each tens of microseconds, charged to the emulated device's requests.
    _lists: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        edges = np.array(self.edges_s, dtype=np.float64)
        seg = np.array(self.segment_bytes, dtype=np.float64)
        where = f"trace {self.source}"
        if edges.ndim != 1 or seg.ndim != 1 or len(seg) == 0 or len(edges) != len(seg) + 1:
            raise InvalidConfigError(f"{where}: found {edges.shape} edges and {seg.shape} "
                                     "segments; expected n+1 edges for n >= 1 segments")
        if not (np.all(np.isfinite(edges)) and edges[0] == 0 and np.all(np.diff(edges) > 0)
                and np.all(np.isfinite(seg)) and np.all(seg >= 0)):
            raise InvalidConfigError(f"{where}: expected finite edges increasing from 0 and "
                                     "finite segment capacities >= 0")
        if seg.sum() <= 0:
            raise InvalidConfigError(f"{where}: total capacity is zero; a trace must carry "
                                     "some bytes, or no send could ever finish")
        derived = {"edges_s": edges, "segment_bytes": seg, "_rates": seg / np.diff(edges),
                   "_cumulative": np.concatenate([[0.0], np.cumsum(seg)])}
        for name, value in derived.items():
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_lists", (edges.tolist(), self._rates.tolist(),
                                            self._cumulative.tolist()))

    def __repr__(self) -> str:
        return (f"BandwidthTrace(source={self.source!r}, duration_s={self.duration_s:g}, "
                f"mean_mbps={self.mean_mbps:.3f}, segments={len(self.segment_bytes)})")

    @property
    def duration_s(self) -> float:
        """Seconds after which the trace repeats."""
        return float(self.edges_s[-1])

    @property
    def total_bytes(self) -> float:
        """Bytes the link can carry in one period."""
        return float(self._cumulative[-1])

    @property
    def mean_mbps(self) -> float:
        """Mean capacity over one period, in Mbit/s."""
        return self.total_bytes / self.duration_s / _BYTES_PER_MBIT

    def percentiles_mbps(self, q: Sequence[float] = (10, 50, 90),
                         window_s: float = 1.0) -> tuple[float, ...]:
        """Percentiles of the mean capacity over consecutive windows of one period.

        Args:
            q: percentiles in [0, 100].
            window_s: window length; only whole windows count (the whole period if shorter).

        Returns:
            One Mbit/s value per entry of ``q``.
        """
        window = _number(window_s, "window_s", positive=True)
        count = int(self.duration_s // window)
        if count == 0:
            return tuple(self.mean_mbps for _ in q)
        starts = np.arange(count) * window
        rates = self._bytes_from(starts, starts + window) / window
        return tuple(float(v) for v in np.percentile(rates / _BYTES_PER_MBIT, list(q)))

    def mbps_at(self, t: float, window_s: float = 0.0) -> float:
        """Capacity at trace time ``t`` (seconds; wraps around), in Mbit/s.

        Args:
            t: trace time.
            window_s: 0 for the rate of the segment holding ``t``, else the mean over
                ``[t, t + window_s)`` (use ~1 s on mahimahi traces: their 1 ms rates are spiky).
        """
        if _number(window_s, "window_s") > 0:
            return self.bytes_between(t, t + window_s) / window_s / _BYTES_PER_MBIT
        offset = float(t) - math.floor(float(t) / self.duration_s) * self.duration_s
        index = int(np.searchsorted(self.edges_s, offset, side="right")) - 1
        return float(self._rates[min(max(index, 0), len(self._rates) - 1)]) / _BYTES_PER_MBIT

    def _position(self, t: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Whole periods before trace time ``t``, and the bytes carried since the last began.

        Kept apart rather than summed, so that differences stay precise late in a trace.
        """
        t = np.asarray(t, dtype=np.float64)
        periods = np.floor(t / self.duration_s)
        offset = np.clip(t - periods * self.duration_s, 0.0, self.duration_s)
        index = np.searchsorted(self.edges_s, offset, side="right") - 1
        index = np.clip(index, 0, len(self._rates) - 1)
        within = self._rates[index] * (offset - self.edges_s[index])
        return periods, self._cumulative[index] + within

    def _bytes_from(self, t0: np.ndarray | float, t1: np.ndarray | float) -> np.ndarray:
        periods0, bytes0 = self._position(t0)
        periods1, bytes1 = self._position(t1)
        return (periods1 - periods0) * self.total_bytes + (bytes1 - bytes0)

    def bytes_between(self, t0: float, t1: float) -> float:
        """Bytes the link can carry from trace time ``t0`` to ``t1`` (``t1 >= t0``)."""
        if not (math.isfinite(t0) and math.isfinite(t1) and t1 >= t0):
            raise InvalidConfigError(f"bytes_between: found t0={t0}, t1={t1}; expected finite "
                                     "times with t1 >= t0")
        return float(self._bytes_from(t0, t1))

    def time_to_send(self, t0: float, nbytes: float) -> float:
        """Earliest trace time by which ``nbytes`` sent from ``t0`` on have gone out.

        Zero-capacity segments (outages) are waited out, and the trace wraps around.

        Args:
            t0: trace time at which sending starts.
            nbytes: bytes to send, >= 0.

        Returns:
            The finish time (``t0`` for 0 bytes); ``bytes_between(t0, finish) >= nbytes`` up
            to float rounding (a few ulps of the bytes per period and of peak rate x time).
        """
        if not math.isfinite(t0):
            raise InvalidConfigError(f"time_to_send: found t0={t0}; expected a finite time")
        if _number(nbytes, "nbytes") == 0:
            return float(t0)
        edges, rates, cumulative = self._lists  # _position's steps, on scalars
        duration, t0 = edges[-1], float(t0)
        total = cumulative[-1]
        start_periods = math.floor(t0 / duration)
        at = min(max(t0 - start_periods * duration, 0.0), duration)
        index = min(max(bisect.bisect_right(edges, at) - 1, 0), len(rates) - 1)
        target = cumulative[index] + rates[index] * (at - edges[index]) + nbytes
        periods = math.floor(target / total)  # whole periods, then a remainder in (0, total]
        remainder = min(target - periods * total, total)
        if remainder <= 0:
            periods, remainder = periods - 1, remainder + total
        periods += start_periods
        # cumulative[j] >= remainder > cumulative[j-1], so segment j-1 has a positive rate.
        j = bisect.bisect_left(cumulative, remainder)
        segment = min(max(j, 1), len(rates)) - 1
        offset = edges[segment] + (remainder - cumulative[segment]) / rates[segment]
        offset = min(offset, edges[segment + 1])  # keeps finish monotone across segments
        return max(periods * duration + offset, t0)


def constant_trace(mbps: float, duration_s: float = 1.0) -> BandwidthTrace:
    """A trace of constant capacity ``mbps`` (> 0) Mbit/s, repeating every ``duration_s`` s."""
    mbps = _number(mbps, "mbps", positive=True)
    duration_s = _number(duration_s, "duration_s", positive=True)
    return BandwidthTrace(np.array([0.0, duration_s]),
                          np.array([mbps * _BYTES_PER_MBIT * duration_s]),
                          source=f"constant {mbps:g} Mbit/s")


def from_mbps(values: Sequence[float] | np.ndarray, bin_seconds: float) -> BandwidthTrace:
    """A trace of equal bins of ``bin_seconds`` s, bin ``i`` at ``values[i]`` Mbit/s (>= 0)."""
    bin_seconds = _number(bin_seconds, "bin_seconds", positive=True)
    rates = np.asarray(values, dtype=np.float64)
    if rates.ndim != 1 or rates.size == 0 or not np.all(np.isfinite(rates)) or np.any(rates < 0):
        raise InvalidConfigError(f"from_mbps: found values {rates!r}; expected a non-empty 1-D "
                                 "sequence of finite Mbit/s >= 0")
    return BandwidthTrace(np.arange(rates.size + 1) * bin_seconds,
                          rates * _BYTES_PER_MBIT * bin_seconds, source="from_mbps")


def load_trace(path: str | os.PathLike[str]) -> BandwidthTrace:
    """Read a mahimahi or ``seconds,mbps`` CSV trace file (see the module docstring).

    Args:
        path: the file; ``.csv`` files are CSV, others are CSV if their first line has a comma.

    Returns:
        The trace, with ``source`` set to ``path``.

    Raises:
        InvalidConfigError: an unreadable or empty file, a malformed line (named by number),
            decreasing times, a negative rate, or no capacity at all.
    """
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as handle:
            lines = [(n, text.strip()) for n, text in enumerate(handle, start=1) if text.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidConfigError(f"trace {name}: cannot read it as text ({error}); expected a "
                                 "mahimahi or seconds,mbps CSV trace file") from error
    if not lines:
        raise InvalidConfigError(f"trace {name}: the file is empty; expected mahimahi timestamps "
                                 "(one integer ms per line) or seconds,mbps CSV rows")
    if name.lower().endswith(".csv") or "," in lines[0][1]:
        return _parse_csv(name, lines)
    return _parse_mahimahi(name, lines)


def _parse_mahimahi(name: str, lines: list[tuple[int, str]]) -> BandwidthTrace:
    stamps, previous = [], 0
    for lineno, text in lines:
        if not (text.isascii() and text.isdigit()):
            raise InvalidConfigError(f"{name}:{lineno}: found {text!r}; expected an integer "
                                     "millisecond timestamp >= 0 (mahimahi trace)")
        stamp = int(text)
        if stamp < previous:
            raise InvalidConfigError(f"{name}:{lineno}: timestamp {stamp} is before the previous "
                                     f"line's {previous}; mahimahi timestamps must not decrease")
        stamps.append(previous := stamp)
    if previous == 0:
        raise InvalidConfigError(f"{name}: every timestamp is 0; the last timestamp is the "
                                 "trace's period in ms and must be > 0 (as in mahimahi)")
    # Segments only around the milliseconds that hold packets: memory follows the packet count,
    # not the period, and each idle stretch between them is one zero-capacity segment.
    millis, counts = np.unique(np.asarray(stamps) % previous, return_counts=True)
    bounds = np.unique(np.concatenate([[0, previous], millis, millis + 1]))
    segment_bytes = np.zeros(len(bounds) - 1)
    segment_bytes[np.searchsorted(bounds, millis)] = counts * MAHIMAHI_PACKET_BYTES
    return BandwidthTrace(bounds / 1000.0, segment_bytes, source=name)


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _parse_csv(name: str, lines: list[tuple[int, str]]) -> BandwidthTrace:
    times: list[float] = []
    rates: list[float] = []
    for index, (lineno, text) in enumerate(lines):
        fields = [_float_or_none(part) for part in text.split(",")]
        when, mbps = fields if len(fields) == 2 else (None, None)
        if when is None or mbps is None:
            if index == 0 and len(fields) == 2 and when is None:
                continue  # the optional header, e.g. "seconds,mbps"
            raise InvalidConfigError(f"{name}:{lineno}: found {text!r}; expected a row "
                                     "'seconds,mbps' of two numbers")
        if not (math.isfinite(when) and math.isfinite(mbps)) or mbps < 0:
            raise InvalidConfigError(f"{name}:{lineno}: found time {when}, rate {mbps}; expected "
                                     "finite numbers and a rate >= 0 Mbit/s")
        if times and when <= times[-1]:
            raise InvalidConfigError(f"{name}:{lineno}: time {when} is not after the previous "
                                     f"row's {times[-1]}; times must strictly increase")
        times.append(when)
        rates.append(mbps)
    if not times:
        raise InvalidConfigError(f"trace {name}: a header but no rows; expected seconds,mbps rows")
    starts = np.asarray(times) - times[0]
    last_gap = starts[-1] - starts[-2] if len(starts) > 1 else 1.0
    edges = np.append(starts, starts[-1] + last_gap)
    return BandwidthTrace(edges, np.asarray(rates) * _BYTES_PER_MBIT * np.diff(edges), source=name)


class ShapedLink:
    """A FIFO uplink whose capacity follows a trace; ``send`` blocks as the trace would.

    Link time is seconds since construction on ``clock``; trace time is link time plus
    ``start_offset_s``. Thread-safe: concurrent sends queue in the order they take the lock.

    Args:
        trace: the capacity to replay.
        clock: returns monotonic seconds; injectable for tests.
        sleep: blocks for the given seconds; injectable for tests and simulations.
        start_offset_s: the trace time at construction.
    """

    def __init__(self, trace: BandwidthTrace, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, start_offset_s: float = 0.0) -> None:
        self.trace = trace
        self._clock, self._sleep = clock, sleep
        self._offset = _number(start_offset_s, "start_offset_s")
        self._lock = threading.Lock()
        self._epoch = clock()
        self._busy_until = 0.0  # link time at which the last queued send has gone out

    def _now(self) -> float:
        return self._clock() - self._epoch

    def _finish(self, nbytes: float, at: float) -> float:
        start = max(at, self._busy_until) + self._offset
        return self.trace.time_to_send(start, nbytes) - self._offset

    def transfer_time(self, nbytes: float, at: float | None = None) -> float:
        """Seconds a send of ``nbytes`` starting at link time ``at`` (default: now) would take,
        queueing behind earlier sends included. Nothing is sent and nothing sleeps."""
        nbytes = _number(nbytes, "nbytes")
        with self._lock:
            start = self._now() if at is None else _number(at, "at")
            return self._finish(nbytes, start) - start

    def send(self, nbytes: float) -> float:
        """Put ``nbytes`` on the link and block until the trace has carried them.

        Returns:
            The seconds imposed: queueing behind earlier sends plus transmission.
        """
        nbytes = _number(nbytes, "nbytes")
        with self._lock:
            now = self._now()
            self._busy_until = self._finish(nbytes, now)
            delay = self._busy_until - now
        if delay > 0:
            self._sleep(delay)  # outside the lock, so that later sends can queue meanwhile
        return delay

    def send_within(self, nbytes: float, timeout_s: float) -> tuple[float, bool]:
        """As :meth:`send`, but stop waiting after ``timeout_s`` (>= 0) seconds.

        The bytes stay queued either way (a sender cannot take back what it handed to the
        link): a later send waits behind them.

        Returns:
            The seconds waited and whether the bytes had gone out by then.
        """
        nbytes, timeout_s = _number(nbytes, "nbytes"), _number(timeout_s, "timeout_s")
        with self._lock:
            now = self._now()
            self._busy_until = self._finish(nbytes, now)
            delay = self._busy_until - now
        waited = min(delay, timeout_s)
        if waited > 0:
            self._sleep(waited)
        return waited, delay <= timeout_s

    def wait_sent(self, timeout_s: float) -> tuple[float, bool]:
        """Block until the bytes queued so far have gone out, or for ``timeout_s`` (>= 0)
        seconds if that comes first (a sender waiting on its socket while it does something
        else).

        Returns:
            The seconds waited and whether the queue had drained by then.
        """
        timeout_s = _number(timeout_s, "timeout_s")
        left = self.backlog_s()
        waited = min(max(left, 0.0), timeout_s)
        if waited > 0:
            self._sleep(waited)
        return waited, left <= timeout_s

    def backlog_s(self) -> float:
        """Seconds until the bytes handed to the link so far have gone out; <= 0 once they
        have (minus how long ago). For an emulation that compares the moment they went out
        with another that it computed (the device runtime's hedged uploads)."""
        with self._lock:
            return self._busy_until - self._now()

    def pending(self) -> bool:
        """Whether bytes handed to the link have not all gone out yet: what a sender learns
        from its own socket (unsent bytes in its send queue), not the trace's future."""
        return self.backlog_s() > 0.0

    def current_mbps(self, window_s: float = 1.0) -> float:
        """Trace capacity over the next ``window_s`` s from now (0: the instant rate), Mbit/s."""
        return self.trace.mbps_at(self._now() + self._offset, window_s)


ESTIMATOR_STATISTICS = ("harmonic", "median")


class BandwidthEstimator:
    """Estimates the uplink's Mbit/s from the device's own transfers.

    The estimate summarizes the last ``window`` throughput samples, rather than an EWMA:

    * ``"harmonic"`` (the default): their harmonic mean, as in video rate adaptation
      (FESTIVE, MPC). It leans to the slow samples, so a selector errs towards smaller
      payloads rather than missed deadlines, and one absurdly fast sample (a small write done
      within a coarse clock tick) raises it by at most ``window / (window - 1)``. One stall,
      though, holds it down until ``window`` newer samples have come.
    * ``"median"``: their median (the mean of the middle two for an even count), which one
      sample can move neither way once there are three.

    One throughput for every size misreads a cellular link, where a small message mostly
    waits for a transmission opportunity: the device runtime plans with
    :class:`~splitpack.planning.transfer.TransferEstimator` (a per-message delay and a rate)
    instead.

    Args:
        initial_mbps: the estimate before any sample (> 0).
        window: how many recent samples count (>= 1).
        min_seconds: shorter durations (0 from a coarse clock) count as this long.
        statistic: ``"harmonic"`` or ``"median"``.
    """

    def __init__(self, initial_mbps: float = 1.0, *, window: int = 5,
                 min_seconds: float = 1e-3, statistic: str = "harmonic") -> None:
        self.initial_mbps = _number(initial_mbps, "initial_mbps", positive=True)
        if not (isinstance(window, int) and window >= 1):
            raise InvalidConfigError(f"window: found {window!r}; expected an integer >= 1")
        if statistic not in ESTIMATOR_STATISTICS:
            raise InvalidConfigError(f"statistic: found {statistic!r}; expected one of "
                                     f"{', '.join(ESTIMATOR_STATISTICS)}")
        self.statistic = statistic
        self.min_seconds = _number(min_seconds, "min_seconds", positive=True)
        self._samples: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def observe(self, nbytes: float, seconds: float) -> float:
        """Record a transfer of ``nbytes`` (> 0) that took ``seconds`` (>= 0).

        Returns:
            This sample's throughput in Mbit/s.
        """
        nbytes = _number(nbytes, "nbytes", positive=True)
        seconds = _number(seconds, "seconds")
        sample = nbytes / max(seconds, self.min_seconds) / _BYTES_PER_MBIT
        with self._lock:
            self._samples.append(sample)
        return sample

    def estimate_mbps(self) -> float:
        """The current estimate in Mbit/s (``initial_mbps`` before any sample)."""
        with self._lock:
            if not self._samples:
                return self.initial_mbps
            if self.statistic == "median":
                return float(np.median(self._samples))
            return len(self._samples) / sum(1.0 / sample for sample in self._samples)
