"""Load schedules: trace files, the slowdown at a time, compute stretched on a fake clock, the
load estimate, and the clock an edge starts from a control line. No real time is measured."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from splitpack.errors import InvalidConfigError
from splitpack.runtimes.load import (
    LOAD_MAX_AGE_S, LOAD_WINDOW, EmulatedLoad, LoadEstimator, LoadSchedule, constant_load,
    follow_clock_lines, read_load_trace,
)  # fmt: skip


class FakeTime:
    """Time for an :class:`EmulatedLoad`: trace time moves only when a test sets ``now``; each
    ``timer`` reading is 1 ms after the one before (a computation takes 1 ms); sleeps are
    recorded, not slept. So a stretch to slowdown ``s`` sleeps exactly ``0.001 * (s - 1)``."""

    def __init__(self) -> None:
        self.now, self.ticks, self.sleeps = 100.0, 0.0, []

    def clock(self) -> float:
        return self.now

    def timer(self) -> float:
        self.ticks += 0.001
        return self.ticks

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def load(self, schedule: LoadSchedule, **options) -> EmulatedLoad:
        return EmulatedLoad(schedule, clock=self.clock, sleep=self.sleep, timer=self.timer,
                            **options)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- files ---------------------------------------------------------------------------------------

GOOD_FILES = [
    ("header.csv", "seconds,slowdown\n0,10\n20,30\n40,10\n", (0, 20, 40), (10, 30, 10)),
    ("plain.txt", "0 1\n\n5\t3.5  # another app starts\n# a comment line\n9,1\n", (0, 5, 9),
     (1, 3.5, 1)),
    ("late.csv", "2.5,0.5\n", (2.5,), (0.5,)),
]


@pytest.mark.parametrize(("name", "text", "times", "slowdowns"), GOOD_FILES,
                         ids=[g[0] for g in GOOD_FILES])
def test_load_trace_files(tmp_path, name, text, times, slowdowns) -> None:
    schedule = read_load_trace(write(tmp_path, name, text))
    assert (schedule.times_s, schedule.slowdowns) == (times, slowdowns)
    assert schedule.source.endswith(name)


BAD_FILES = [
    ("empty.csv", "", r"load trace .*empty\.csv: no rows; expected lines 'seconds,slowdown'"),
    ("blank.csv", "\n  \n# only a comment\n", r"blank\.csv: no rows"),
    ("header_only.csv", "seconds,slowdown\n", r"header_only\.csv: no rows"),
    ("same_time.csv", "0,1\n5,3\n5,1\n",
     r"same_time\.csv:3: time 5 is not after the previous row's 5; times must strictly "
     r"increase; fix or remove the line"),
    ("back.csv", "0,1\n5,3\n2,1\n", r"back\.csv:3: time 2 is not after the previous row's 5"),
    ("zero.csv", "0,1\n5,0\n", r"zero\.csv:2: slowdown 0 is not a finite number > 0 .*"
     r"fix or remove the line; rows are 'seconds,slowdown', e.g. '20,3'"),
    ("negative.csv", "0,-2\n", r"negative\.csv:1: slowdown -2 is not a finite number > 0"),
    ("nan.csv", "0,1\n4,nan\n", r"nan\.csv:2: slowdown nan is not a finite number > 0"),
    ("inf.csv", "0,inf\n", r"inf\.csv:1: slowdown inf is not a finite number > 0"),
    ("words.csv", "0,1\n5,fast\n", r"words\.csv:2: found '5,fast'; expected two numbers"),
    ("late_header.csv", "0,1\nseconds,slowdown\n", r"late_header\.csv:2: found 'seconds,"),
    ("one_column.csv", "0\n", r"one_column\.csv:1: found '0'; expected two numbers"),
    ("three_columns.csv", "0,1,2\n", r"three_columns\.csv:1: found '0,1,2'"),
    ("negative_time.csv", "-1,2\n", r"negative_time\.csv:1: time '-1' is not a finite number "
     r"of seconds >= 0"),
    ("line_numbers.csv", "# load\n\n0,1\n\n7,-1\n", r"line_numbers\.csv:5: slowdown -1"),
]


@pytest.mark.parametrize(("name", "text", "match"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_load_trace_files(tmp_path, name, text, match) -> None:
    with pytest.raises(InvalidConfigError, match=match):
        read_load_trace(write(tmp_path, name, text))


def test_missing_and_binary_load_files(tmp_path) -> None:
    with pytest.raises(InvalidConfigError, match=r"absent\.csv: cannot read it as text"):
        read_load_trace(tmp_path / "absent.csv")
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(InvalidConfigError, match=r"binary\.csv: cannot read it as text"):
        read_load_trace(tmp_path / "binary.csv")


BAD_SCHEDULES = [
    (lambda: LoadSchedule((), ()), "found 0 times and 0 slowdowns"),
    (lambda: LoadSchedule((0.0, 1.0), (1.0,)), "one slowdown per time"),
    (lambda: LoadSchedule((1.0, 1.0), (1.0, 2.0)), "strictly increasing"),
    (lambda: LoadSchedule((0.0,), (0.0,)), r"expected finite numbers > 0"),
    (lambda: constant_load(-1.0), r"expected finite numbers > 0"),
    (lambda: EmulatedLoad(constant_load(1.0), start_offset_s=-1.0), "start_offset_s: found -1.0"),
    (lambda: LoadEstimator(window=0), "window: found 0"),
]


@pytest.mark.parametrize(("call", "match"), BAD_SCHEDULES, ids=[b[1] for b in BAD_SCHEDULES])
def test_bad_schedules(call, match) -> None:
    with pytest.raises(InvalidConfigError, match=match):
        call()


# -- the schedule and its clock -------------------------------------------------------------------

def test_slowdown_at_and_changes() -> None:
    schedule = LoadSchedule((5.0, 10.0, 30.0, 40.0), (2.0, 6.0, 2.0, 2.0))
    # The first row's slowdown holds before it too, the last row's for ever.
    assert [schedule.slowdown_at(t) for t in (0, 5, 9.99, 10, 29.9, 30, 1e6)] == [
        2, 2, 2, 6, 6, 2, 2]
    assert schedule.changes(0.0, 100.0) == [(10.0, 2.0, 6.0), (30.0, 6.0, 2.0)]  # not 40: no change
    assert schedule.changes(10.0, 29.0) == [] and schedule.changes(9.0, 10.0) == [(10.0, 2.0, 6.0)]
    assert schedule.rows() == [[5.0, 2.0], [10.0, 6.0], [30.0, 2.0], [40.0, 2.0]]


def test_a_keyed_computation_takes_the_slowdown_times_its_typical_time() -> None:
    """Keyed: 30 x the median of the key's runs, plus what a run took beyond it unstretched;
    a run faster than typical is padded to the same device time; unkeyed: 30 x each run."""
    load = EmulatedLoad(LoadSchedule((0.0,), (30.0,)), sleep=lambda seconds: None)
    runs = [0.001, 0.001, 0.0011, 0.0009, 0.001, 0.003]  # a 2 ms hiccup last
    keyed = [load.device_seconds(ms, 30.0, key=("cut01", 1)) for ms in runs]
    assert keyed[:5] == pytest.approx([0.03] * 5, abs=1.6e-3)
    assert keyed[3] == pytest.approx(0.03)  # faster than typical: padded to 30 x 1 ms
    assert keyed[5] == pytest.approx(0.03 + 0.002)  # the hiccup counts once, not 30 times
    assert load.device_seconds(0.003, 30.0) == pytest.approx(0.09)
    assert load.device_seconds(0.001, 30.0, key=("local", 1)) == pytest.approx(0.03)  # own key
    assert load.device_seconds(0.002, 1.0, key=("cut01", 1)) == 0.002  # nothing at <= 1


def test_stretch_follows_the_schedule_on_its_clock() -> None:
    time = FakeTime()
    load = time.load(LoadSchedule((0.0, 10.0, 30.0), (2.0, 6.0, 0.5)), start_offset_s=4.0)
    seen, took = [], []
    for elapsed in (0.0, 5.0, 6.0, 25.9, 26.0, 100.0):  # trace time = 4 + elapsed
        time.now = 100.0 + elapsed
        seen.append(load.slowdown_now())
        output, seconds = load.stretch(lambda: "output")
        took.append(seconds)
        assert output == "output"
    assert seen == [2.0, 2.0, 6.0, 6.0, 0.5, 0.5]
    assert took == pytest.approx([0.002, 0.002, 0.006, 0.006, 0.001, 0.001])
    # 1 ms of compute stretched to 2 and 6 ms; nothing below the host's own speed.
    assert time.sleeps == pytest.approx([0.001, 0.001, 0.005, 0.005])


def test_an_unstarted_clock_holds_the_start_offset_until_started() -> None:
    time = FakeTime()
    load = time.load(LoadSchedule((0.0, 10.0), (1.0, 3.0)), start_offset_s=12.0, started=False)
    time.now += 50.0
    assert (load.trace_time(), load.slowdown_now()) == (None, 3.0)
    load.start(epoch=time.now - 2.0)
    assert (load.trace_time(), load.slowdown_now()) == (14.0, 3.0)


def test_the_control_line_starts_the_clock_at_the_writers_time() -> None:
    time = FakeTime()
    load = time.load(LoadSchedule((0.0, 10.0), (1.0, 3.0)), started=False)
    # The writer's wall clock read 1000 when trace time was 0; the line is read at 1012.5.
    follow_clock_lines(io.StringIO("start 1000.0\n"), load, on_error=pytest.fail,
                       wall_clock=lambda: 1012.5).join(timeout=10)
    assert load.trace_time() == pytest.approx(12.5) and load.slowdown_now() == 3.0


@pytest.mark.parametrize("line", ["begin 1000\n", "start soon\n", "start\n", "start 1 2\n",
                                  "start nan\n"])
def test_a_bad_control_line_is_reported(line) -> None:
    errors = []
    load = FakeTime().load(constant_load(2.0), started=False)
    follow_clock_lines(io.StringIO(line + "start 5\n"), load, on_error=errors.append).join(10)
    assert len(errors) == 1 and "expected 'start UNIX_SECONDS'" in errors[0]
    assert load.trace_time() is None  # it stopped reading at the bad line


# -- the estimate ---------------------------------------------------------------------------------

def test_the_load_estimate_follows_a_step_and_ignores_spikes() -> None:
    estimate = LoadEstimator()
    assert estimate.estimate() == 1.0
    for observed in (10.0, 10.0, 0.5, 10.0, 10.0):  # faster than profiled counts as 1
        estimate.observe(observed, 10.0)
    assert estimate.estimate() == 1.0
    tripled = []
    for _ in range(LOAD_WINDOW):
        estimate.observe(30.0, 10.0)
        tripled.append(estimate.estimate())
    assert tripled == [1.0, 1.0, 3.0, 3.0, 3.0]  # ceil(5 / 2) observations after the step
    estimate.observe(300.0, 10.0)
    estimate.observe(300.0, 10.0)  # two outliers in a row move nothing
    assert estimate.estimate() == 3.0
    for observed in (float("nan"), float("inf")):
        estimate.observe(observed, 10.0)
    estimate.observe(10.0, 0.0)  # nothing profiled: nothing learned
    assert estimate.estimate() == 3.0


def test_old_observations_are_forgotten() -> None:
    """A runtime that measures nothing of a load for LOAD_MAX_AGE_S plans unloaded again."""
    time = FakeTime()
    estimate = LoadEstimator(clock=time.clock)
    for _ in range(3):
        estimate.observe(30.0, 10.0)
        time.now += 0.1
    assert estimate.estimate() == 3.0
    time.now += LOAD_MAX_AGE_S - 0.2  # the first observation is just over the age, two remain
    assert estimate.estimate() == 3.0
    time.now += 0.21
    assert estimate.estimate() == 1.0
    estimate.observe(20.0, 10.0)  # one fresh observation is the estimate
    assert estimate.estimate() == 2.0
    with pytest.raises(InvalidConfigError, match="max_age_s: found 0"):
        LoadEstimator(max_age_s=0)
    estimate.observe(40.0, 10.0)
    time.now += 2 * LOAD_MAX_AGE_S
    assert (estimate.estimate(), estimate.latest()) == (1.0, 3.0)  # latest: median of 2 and 4
