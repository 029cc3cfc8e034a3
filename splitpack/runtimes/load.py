"""Compute load that changes over time: a schedule of slowdowns, compute stretched to follow it,
and the runtime's estimate of the load it meets.

Runs on devices and on the edge, so it imports the standard library only.

A :class:`LoadSchedule` is a piecewise-constant compute slowdown over trace time: row ``i``'s
slowdown holds from ``times_s[i]`` until ``times_s[i+1]``; the last row's holds for ever and the
first row's also before its time. Unlike a bandwidth trace, a schedule does not repeat: it
describes an episode (another app takes the CPU for 20 s), not a recording to loop.

Load trace files (:func:`read_load_trace`): one row ``seconds,slowdown`` per line (comma or
whitespace between the two numbers; an optional header line such as ``seconds,slowdown``; blank
lines and ``#`` comments are skipped). Times are seconds on the bandwidth trace's clock (the
``trace_s`` of ``bench runtime``'s log), finite, >= 0 and strictly increasing; slowdowns are
finite and > 0, as multiples of the host's compute time. A slowdown below 1 cannot be emulated
(the host cannot compute faster than it does) and stretches nothing. For example::

    seconds,slowdown
    0,10
    20,30
    40,10

is a device 10x slower than the host whose slowdown triples for 20 s from 20 s on.

:class:`EmulatedLoad` puts a schedule on a clock and stretches a computation to the slowdown
scheduled when it starts (the device runtime's heads and uploads, the edge's tails), by sleeping
after it. A computation named by a ``key`` (a variant's head at one batch size) takes the
slowdown x its typical time here (the median of its last runs), plus, unstretched, whatever this
run took beyond that; one without a key takes ``measured x slowdown``. (Stretching every run's
own time multiplied the host's jitter too: at 30x, a 50 us cache miss or scheduling delay of a
2-core host became 1.5 ms of emulated device time. Two sessions of the same head then differed
by 5 % (the adaptive runtime's ``local`` answers against the fixed ``local`` method's, 6.5 and
6.19 ms median at 10x), and the per-round best of three near-identical split variants was partly
the best of three noise draws. A device F times slower than this host computes in F times its
typical time; this host's hiccups are not the device's.) :class:`LoadEstimator` is what the
device runtime knows of its load and the edge's: the median of the last few observed /
profiled compute ratios.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TypeVar

from splitpack.errors import InvalidConfigError

__all__ = ["LoadSchedule", "constant_load", "read_load_trace", "EmulatedLoad", "LoadEstimator",
           "follow_clock_lines", "LOAD_WINDOW", "LOAD_MAX_AGE_S", "LOAD_CLOCKS"]

# Observations the load estimate is the median of: a step in the load is followed after
# ceil(LOAD_WINDOW / 2) observations (3: 0.3 s at one request every 100 ms) whatever its size,
# and up to 2 outliers in a row (a preempted head on a busy host) move nothing. The EWMA it
# replaced (weight 0.2) needed about 8 observations to come back below a switching threshold
# after the device load tripled and fell back (0.8 ** 8 of the excess left).
LOAD_WINDOW = 5
# Observations older than this are forgotten. A runtime on a variant that measures nothing of a
# load (``local`` measures nothing of the edge's; an ``edge`` upload with no profiled device
# compute, nothing of the device's) would otherwise plan with the load it last saw for ever:
# instead it plans with the unloaded profile again after this long, and its next request
# measures the load anew. So such a runtime comes back within about this long after a load
# ends, and while the load lasts one request in every this-long meets it again (one in 6 at
# one request every 100 ms: the price, as for the uplink's explorations).
LOAD_MAX_AGE_S = 0.5
LOAD_CLOCKS = ("start", "stdin")  # when an edge's load clock starts: see splitpack.serving.edge
_ROW_EXAMPLE = "'20,3' (the slowdown is 3 from 20 s on)"
T = TypeVar("T")


@dataclass(frozen=True)
class LoadSchedule:
    """A piecewise-constant compute slowdown over trace time (see the module docstring).

    Args:
        times_s: When each row starts, finite, >= 0, strictly increasing, at least one.
        slowdowns: The slowdown of each row, finite and > 0.
        source: Where it came from, for messages and the benchmark's JSON.
    """

    times_s: tuple[float, ...]
    slowdowns: tuple[float, ...]
    source: str = "<memory>"

    def __post_init__(self) -> None:
        times, slowdowns = tuple(map(float, self.times_s)), tuple(map(float, self.slowdowns))
        where = f"load schedule {self.source}"
        if not times or len(times) != len(slowdowns):
            raise InvalidConfigError(f"{where}: found {len(times)} times and {len(slowdowns)} "
                                     "slowdowns; expected one slowdown per time, at least one")
        if not all(math.isfinite(t) and t >= 0 for t in times) or any(
                b <= a for a, b in zip(times, times[1:])):
            raise InvalidConfigError(f"{where}: found times {times}; expected finite seconds "
                                     ">= 0, strictly increasing")
        if not all(math.isfinite(s) and s > 0 for s in slowdowns):
            raise InvalidConfigError(f"{where}: found slowdowns {slowdowns}; expected finite "
                                     "numbers > 0 (1 is the host's own speed)")
        object.__setattr__(self, "times_s", times)
        object.__setattr__(self, "slowdowns", slowdowns)

    def slowdown_at(self, t: float) -> float:
        """The slowdown scheduled at trace time ``t`` (seconds)."""
        index = 0
        while index + 1 < len(self.times_s) and self.times_s[index + 1] <= t:
            index += 1  # linear: schedules are a few rows
        return self.slowdowns[index]

    def changes(self, start_s: float, end_s: float) -> list[tuple[float, float, float]]:
        """Every change of slowdown in ``(start_s, end_s]``: ``(time, before, after)``."""
        return [(t, before, after) for t, before, after in zip(
            self.times_s[1:], self.slowdowns, self.slowdowns[1:])
            if start_s < t <= end_s and after != before]

    def rows(self) -> list[list[float]]:
        """``[[seconds, slowdown], ...]``, as in a trace file (for JSON)."""
        return [[t, s] for t, s in zip(self.times_s, self.slowdowns)]


def constant_load(slowdown: float) -> LoadSchedule:
    """The schedule of one slowdown (> 0) for ever."""
    return LoadSchedule((0.0,), (slowdown,), source=f"constant {slowdown:g}x")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_load_trace(path: str | os.PathLike[str]) -> LoadSchedule:
    """Read a ``seconds,slowdown`` load trace file (see the module docstring).

    Args:
        path: The file.

    Returns:
        The schedule, with ``source`` set to ``path``.

    Raises:
        InvalidConfigError: an unreadable file, no rows, or a bad row (named by its line
            number): not two numbers, a time that is negative or not after the previous row's,
            a slowdown that is not a finite number > 0.
    """
    name = os.fspath(path)
    remedy = f"fix or remove the line; rows are 'seconds,slowdown', e.g. {_ROW_EXAMPLE}"
    try:
        with open(name, encoding="utf-8") as handle:
            lines = [(n, text.split("#", 1)[0].strip()) for n, text in enumerate(handle, start=1)]
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidConfigError(
            f"load trace {name}: cannot read it as text ({error}); expected a file of "
            f"'seconds,slowdown' rows such as {_ROW_EXAMPLE}") from error
    times: list[float] = []
    slowdowns: list[float] = []
    for index, (lineno, text) in enumerate((n, t) for n, t in lines if t):
        fields = [field for field in re.split(r"[,\s]+", text) if field]
        values = [_number(field) for field in fields]
        if index == 0 and len(fields) == 2 and values[0] is None:
            continue  # the optional header, e.g. "seconds,slowdown"
        if len(values) != 2 or None in values:
            raise InvalidConfigError(f"load trace {name}:{lineno}: found {text!r}; expected two "
                                     f"numbers, seconds and slowdown; {remedy}")
        when, slowdown = values
        if not (math.isfinite(when) and when >= 0):
            raise InvalidConfigError(f"load trace {name}:{lineno}: time {fields[0]!r} "
                                     f"is not a finite number of seconds >= 0; {remedy}")
        if times and when <= times[-1]:
            raise InvalidConfigError(f"load trace {name}:{lineno}: time {when:g} is not after "
                                     f"the previous row's {times[-1]:g}; times must strictly "
                                     f"increase; {remedy}")
        if not (math.isfinite(slowdown) and slowdown > 0):
            raise InvalidConfigError(f"load trace {name}:{lineno}: slowdown {slowdown:g} is not "
                                     f"a finite number > 0 (1 is the host's speed, 3 three times "
                                     f"slower); {remedy}")
        times.append(when)
        slowdowns.append(slowdown)
    if not times:
        raise InvalidConfigError(f"load trace {name}: no rows; expected lines 'seconds,slowdown' "
                                 f"such as '0,1' and {_ROW_EXAMPLE}")
    return LoadSchedule(tuple(times), tuple(slowdowns), source=name)


TYPICAL_RUNS = 25  # a keyed computation's typical time: the median of its last runs


class EmulatedLoad:
    """A :class:`LoadSchedule` on a clock, stretching computations to its slowdown.

    Trace time is ``start_offset_s`` plus the seconds on ``clock`` since :meth:`start` (or
    since construction, with ``started``); before the clock starts, the slowdown is the one
    scheduled at ``start_offset_s``. Shared by threads: it only reads its state once started.

    Args:
        schedule: The slowdowns to follow.
        clock: Monotonic seconds, for trace time; injectable for tests.
        sleep: Blocks for the given seconds (the stretch); injectable for tests.
        timer: Seconds, for measuring a computation; injectable for tests.
        start_offset_s: The trace time at which the clock starts.
        started: Start the clock now (False: wait for :meth:`start`).
    """

    def __init__(self, schedule: LoadSchedule, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 timer: Callable[[], float] = time.perf_counter, start_offset_s: float = 0.0,
                 started: bool = True) -> None:
        if not (isinstance(start_offset_s, (int, float)) and math.isfinite(start_offset_s)
                and start_offset_s >= 0):
            raise InvalidConfigError(f"start_offset_s: found {start_offset_s!r}; expected "
                                     "finite seconds >= 0")
        self.schedule, self.start_offset_s = schedule, float(start_offset_s)
        self._clock, self._sleep, self._timer = clock, sleep, timer
        self._epoch: float | None = clock() if started else None
        self._runs: dict[object, deque[float]] = {}  # per key: its last measured times
        self._lock = threading.Lock()

    def start(self, epoch: float | None = None) -> None:
        """Start (or restart) the clock: trace time is ``start_offset_s`` at ``epoch`` (a
        reading of ``clock``; default now)."""
        self._epoch = self._clock() if epoch is None else float(epoch)

    def trace_time(self) -> float | None:
        """Trace time now; None before the clock starts."""
        epoch = self._epoch
        return None if epoch is None else self.start_offset_s + self._clock() - epoch

    def slowdown_now(self) -> float:
        """The slowdown scheduled now."""
        now = self.trace_time()
        return self.schedule.slowdown_at(self.start_offset_s if now is None else now)

    def measure(self, compute: Callable[[], T]) -> tuple[T, float]:
        """Run ``compute`` unstretched; returns what it returned and its seconds on ``timer``."""
        started = self._timer()
        result = compute()
        return result, self._timer() - started

    def device_seconds(self, measured: float, slowdown: float, key: object = None) -> float:
        """The emulated device's seconds for a computation that took ``measured`` here under
        ``slowdown``: with a ``key``, ``slowdown`` x the key's typical time (the median of its
        last TYPICAL_RUNS, this one included) plus what this run took beyond that; else
        ``measured x slowdown``. ``measured`` itself when ``slowdown`` <= 1."""
        if slowdown <= 1.0:
            return measured
        if key is None:
            return measured * slowdown
        with self._lock:
            runs = self._runs.setdefault(key, deque(maxlen=TYPICAL_RUNS))
            runs.append(measured)
            typical = statistics.median(runs)
        return slowdown * typical + max(0.0, measured - typical)

    def typical_seconds(self, key: object, slowdown: float) -> float | None:
        """What :meth:`device_seconds` gives a run of ``key`` that takes its typical time
        under ``slowdown`` (None before its first run): what a caller waits for a computation
        started beside something else."""
        with self._lock:
            runs = self._runs.get(key)
            typical = statistics.median(runs) if runs else None
        return None if typical is None else typical * max(1.0, slowdown)

    def stretch(self, compute: Callable[[], T], key: object = None) -> tuple[T, float]:
        """Run ``compute``, then sleep until it has taken the emulated device's time
        (:meth:`device_seconds` under the slowdown scheduled when it starts).

        Returns:
            What ``compute`` returned, and the seconds the emulated device took. The sleep's
            own overshoot (tens of microseconds) is an artifact of the emulation, not compute,
            and is left out.
        """
        slowdown = self.slowdown_now()  # the load when the work starts holds for all of it
        result, measured = self.measure(compute)
        seconds = self.device_seconds(measured, slowdown, key)
        if seconds > measured:
            self._sleep(seconds - measured)
        return result, seconds


def follow_clock_lines(stream: IO[str], load: EmulatedLoad, *,
                       on_error: Callable[[str], None],
                       wall_clock: Callable[[], float] = time.time) -> threading.Thread:
    """Start ``load``'s clock from a line ``start UNIX_SECONDS`` read on ``stream`` (a daemon
    thread): trace time is ``load.start_offset_s`` at that wall-clock time, so a process that
    wrote the line meets the same trace time even if the line came late. How ``bench runtime``
    puts its edge process on the device's clock; the thread ends at the end of the stream.

    Args:
        stream: Text lines, e.g. ``sys.stdin``.
        load: The clock to start (built with ``started=False``).
        on_error: Called with a message on a line that is not ``start UNIX_SECONDS``; the
            thread then stops reading.
        wall_clock: Seconds since the epoch, shared by the writing process.
    """
    def follow() -> None:
        for line in stream:
            words = line.split()
            seconds = _number(words[1]) if len(words) == 2 and words[0] == "start" else None
            if seconds is None or not math.isfinite(seconds):
                on_error(f"load clock: found {line.strip()[:80]!r} on the control stream; "
                         "expected 'start UNIX_SECONDS' (the writer's time.time() at which trace "
                         "time is --load-start-offset)")
                return
            load.start(load._clock() - (wall_clock() - seconds))

    thread = threading.Thread(target=follow, name="splitpack-load-clock", daemon=True)
    thread.start()
    return thread


class LoadEstimator:
    """A compute load factor (>= 1) from observed / profiled compute times: the median of the
    last ``window`` ratios no older than ``max_age_s``, each clamped to >= 1 (1 when there is
    none). See :data:`LOAD_WINDOW` and :data:`LOAD_MAX_AGE_S` for the choice.

    Args:
        window: How many recent observations count (>= 1).
        max_age_s: Observations older than this (seconds on ``clock``, > 0) no longer count.
        clock: Monotonic seconds; injectable for tests.
    """

    def __init__(self, window: int = LOAD_WINDOW, *, max_age_s: float = LOAD_MAX_AGE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise InvalidConfigError(f"window: found {window!r}; expected an int >= 1")
        if not (isinstance(max_age_s, (int, float)) and math.isfinite(max_age_s) and max_age_s > 0):
            raise InvalidConfigError(f"max_age_s: found {max_age_s!r}; expected seconds > 0")
        self.max_age_s, self._clock = float(max_age_s), clock
        self._ratios: deque[tuple[float, float]] = deque(maxlen=window)  # (when, ratio)
        self._last: float | None = 1.0  # the median as of the last observation (None: not
        self._lock = threading.Lock()      # computed yet), never expired

    def observe(self, observed_ms: float, expected_ms: float) -> None:
        """Record one computation that took ``observed_ms`` where ``expected_ms`` was expected
        unloaded; ignored when either is not a finite number or the expectation is not > 0."""
        if not (math.isfinite(observed_ms) and math.isfinite(expected_ms) and expected_ms > 0):
            return
        with self._lock:  # the median waits until it is read: this is on every request's path
            self._ratios.append((self._clock(), max(1.0, observed_ms / expected_ms)))
            self._last = None

    def latest(self) -> float:
        """The estimate as of the last observation, however old that is (1 before any)."""
        with self._lock:
            if self._last is None:
                self._last = float(statistics.median([ratio for _, ratio in self._ratios]))
            return self._last

    def estimate(self) -> float:
        """The current load factor."""
        now = self._clock()
        with self._lock:
            if self._last is None and self._ratios and now - self._ratios[0][0] > self.max_age_s:
                self._last = float(statistics.median([ratio for _, ratio in self._ratios]))
            while self._ratios and now - self._ratios[0][0] > self.max_age_s:
                self._ratios.popleft()
            ratios = [ratio for _, ratio in self._ratios]
        return float(statistics.median(ratios)) if ratios else 1.0
