"""Tests of link emulation: trace files, capacity arithmetic, the shaped link and the estimator."""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitpack.errors import InvalidConfigError
from splitpack.runtimes.netem import (
    MAHIMAHI_PACKET_BYTES,
    BandwidthEstimator,
    BandwidthTrace,
    ShapedLink,
    constant_trace,
    from_mbps,
    load_trace,
)

TRACES = Path(__file__).resolve().parents[2].parent / "shared" / "traces"
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class FakeClock:
    """A clock whose sleep advances it instantly, recording each sleep."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- trace files -----------------------------------------------------------------------------


def test_mahimahi_one_packet_per_ms(tmp_path):
    # Timestamps 1..10: one 1500-byte packet in each of 10 ms, and the period is 10 ms.
    trace = load_trace(write(tmp_path, "ten.up", "\n".join(str(ms) for ms in range(1, 11))))
    expected_mbps = 10 * 1500 * 8 / 0.010 / 1e6
    assert expected_mbps == pytest.approx(12.0)
    assert trace.duration_s == pytest.approx(0.010)
    assert trace.total_bytes == 10 * MAHIMAHI_PACKET_BYTES
    assert trace.mean_mbps == pytest.approx(expected_mbps)
    # Stamped 0..9 instead, the period is the last stamp, 9 ms, and the packet at ms 9 is
    # ms 0 of the next period: still 10 packets per period, now per 9 ms.
    zero_based = load_trace(write(tmp_path, "zero.up", "\n".join(str(ms) for ms in range(10))))
    assert zero_based.duration_s == pytest.approx(0.009)
    assert zero_based.mean_mbps == pytest.approx(10 * 1500 * 8 / 0.009 / 1e6)


def test_mahimahi_repeated_timestamps_and_gaps(tmp_path):
    # ms 0..9 carry 1 packet each, then nothing until ms 20, which is the period's end: the
    # packet stamped 20 falls in ms 0 of the next period (mahimahi's rule).
    stamps = list(range(10)) + [20]
    trace = load_trace(write(tmp_path, "gap.up", "\n".join(map(str, stamps)) + "\n"))
    assert trace.duration_s == pytest.approx(0.020)
    assert trace.total_bytes == 11 * 1500
    assert trace.mean_mbps == pytest.approx(11 * 1500 * 8 / 0.020 / 1e6)  # 6.6 Mbit/s
    assert trace.mbps_at(0.0005) == pytest.approx(2 * 1500 * 8 / 0.001 / 1e6)  # 2 packets
    assert trace.mbps_at(0.0015) == pytest.approx(12.0)
    assert trace.mbps_at(0.015) == 0.0  # idle gap
    assert trace.bytes_between(0.0, 0.010) == pytest.approx(11 * 1500)
    # Three packets at ms 5 of a 10 ms trace whose only other packet is at ms 10 (= ms 0).
    burst = load_trace(write(tmp_path, "burst.up", "5\n5\n5\n10\n"))
    assert burst.mbps_at(0.0055) == pytest.approx(3 * 12.0)
    assert burst.bytes_between(0.005, 0.006) == pytest.approx(4500)


def test_csv_with_and_without_header(tmp_path):
    rows = "0,8\n1.0,0\n1.5,4\n"
    for name, text in [("a.csv", rows), ("b.csv", "seconds,mbps\n" + rows), ("c.txt", rows)]:
        trace = load_trace(write(tmp_path, name, text))
        # 8 Mbit/s for 1 s, 0 for 0.5 s, 4 Mbit/s for 0.5 s (the previous gap).
        assert trace.duration_s == pytest.approx(2.0)
        assert trace.total_bytes == pytest.approx(1e6 + 0 + 0.25e6)
        assert trace.mean_mbps == pytest.approx((8 * 1 + 4 * 0.5) / 2.0)
        assert trace.mbps_at(1.2) == 0.0
        assert trace.mbps_at(1.7) == pytest.approx(4.0)
        assert trace.mbps_at(2.3) == pytest.approx(8.0)  # wrapped around


def test_csv_starts_at_first_row_and_single_row(tmp_path):
    shifted = load_trace(write(tmp_path, "s.csv", "10,2\n12,6\n"))
    assert shifted.duration_s == pytest.approx(4.0)
    assert shifted.mbps_at(0.5) == pytest.approx(2.0)
    single = load_trace(write(tmp_path, "one.csv", "5,3\n"))
    assert single.duration_s == pytest.approx(1.0)
    assert single.mean_mbps == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("name", "mean_mbps"),
    [("ATT-LTE-driving-2016.up", 1.89), ("TMobile-UMTS-driving.up", 0.94),
     ("Verizon-LTE-short.up", 5.90)],
)  # fmt: skip
def test_real_traces_match_readme(name, mean_mbps):
    path = TRACES / name
    if not path.exists():
        if os.environ.get("SPLITPACK_REQUIRE_SHARED"):  # set by .ci/run: CI has ../shared
            pytest.fail(f"{path} is absent, and SPLITPACK_REQUIRE_SHARED is set: CI runs with "
                        "../shared beside the clone; put it there")
        pytest.skip(f"{path} is absent")
    trace = load_trace(path)
    assert trace.mean_mbps == pytest.approx(mean_mbps, rel=0.02)
    p10, p50, p90 = trace.percentiles_mbps((10, 50, 90))
    assert 0 <= p10 <= p50 <= p90
    # Sending one mean-second's worth of bytes from the start takes a finite, positive time.
    nbytes = trace.mean_mbps * 1e6 / 8
    finish = trace.time_to_send(0.0, nbytes)
    assert 0 < finish and trace.bytes_between(0.0, finish) == pytest.approx(nbytes, rel=1e-12)
    # Whole packets fill whole packet milliseconds: 1500 bytes from the first packet's start.
    first = np.argmax(trace.segment_bytes > 0)
    packet_s = 1e-3 / (trace.segment_bytes[first] / MAHIMAHI_PACKET_BYTES)
    start = trace.edges_s[first]
    assert trace.time_to_send(start, MAHIMAHI_PACKET_BYTES) == pytest.approx(start + packet_s)


BAD_FILES = [
    ("empty.up", "", "empty"),
    ("blank.up", "\n  \n", "empty"),
    ("text.up", "1\n2\nthree\n", r"text\.up:3: found 'three'"),
    ("float.up", "1\n2.5\n", r":2: found '2\.5'.*integer millisecond"),
    ("negative.up", "1\n-4\n", r":2: found '-4'"),
    ("decreasing.up", "1\n5\n3\n", r":3: timestamp 3 is before the previous line's 5"),
    ("zero_period.up", "0\n0\n", "period"),
    ("rate.csv", "0,1\n1,-2\n", r"rate\.csv:2: .*rate >= 0"),
    ("nan.csv", "0,1\n1,nan\n", r":2: .*finite"),
    ("times.csv", "0,1\n2,1\n2,3\n", r":3: time 2\.0 is not after"),
    ("back.csv", "0,1\n2,1\n1,3\n", r":3: time 1\.0 is not after"),
    ("words.csv", "seconds,mbps\n0,1\nsoon,2\n", r"words\.csv:3: found 'soon,2'"),
    ("columns.csv", "0,1,2\n", r":1: found '0,1,2'.*two numbers"),
    ("header_only.csv", "seconds,mbps\n", "no rows"),
    ("all_zero.csv", "0,0\n1,0\n", "total capacity is zero"),
]


@pytest.mark.parametrize(("name", "text", "match"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_trace_files(tmp_path, name, text, match):
    with pytest.raises(InvalidConfigError, match=match):
        load_trace(write(tmp_path, name, text))


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(InvalidConfigError, match="cannot read"):
        load_trace(tmp_path / "absent.up")
    binary = tmp_path / "binary.up"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(InvalidConfigError, match="cannot read"):
        load_trace(binary)


BAD_CALLS = [
    (lambda: constant_trace(0.0), r"mbps: found 0\.0"),
    (lambda: constant_trace(-1.0), "mbps"),
    (lambda: constant_trace(float("nan")), "mbps"),
    (lambda: constant_trace(5.0, duration_s=0), "duration_s"),
    (lambda: from_mbps([0.0, 0.0], 0.1), "total capacity is zero"),
    (lambda: from_mbps([], 0.1), "non-empty"),
    (lambda: from_mbps([1.0, -1.0], 0.1), "finite Mbit/s >= 0"),
    (lambda: from_mbps([1.0], 0.0), "bin_seconds"),
    (lambda: BandwidthTrace(np.array([0.0, 1.0, 1.0]), np.array([1.0, 1.0])), "increasing"),
    (lambda: BandwidthTrace(np.array([0.0, 1.0]), np.array([1.0, 1.0])), "n\\+1 edges"),
    (lambda: constant_trace(1.0).time_to_send(0.0, -1), "nbytes"),
    (lambda: constant_trace(1.0).time_to_send(float("inf"), 1), "t0"),
    (lambda: constant_trace(1.0).bytes_between(2.0, 1.0), "t1 >= t0"),
    (lambda: ShapedLink(constant_trace(1.0), start_offset_s=-1.0), "start_offset_s"),
    (lambda: BandwidthEstimator(0.0), "initial_mbps"),
    (lambda: BandwidthEstimator(statistic="mean"), "statistic: found 'mean'; expected one of harmonic, median"),
    (lambda: BandwidthEstimator(window=0), "window"),
    (lambda: BandwidthEstimator().observe(100, -0.5), "seconds: found -0.5"),
    (lambda: BandwidthEstimator().observe(100, float("nan")), "seconds"),
    (lambda: BandwidthEstimator().observe(0, 1.0), "nbytes: found 0"),
]


@pytest.mark.parametrize(("call", "match"), BAD_CALLS, ids=[b[1] for b in BAD_CALLS])
def test_bad_parameters(call, match):
    with pytest.raises(InvalidConfigError, match=match):
        call()


# --- capacity arithmetic ---------------------------------------------------------------------


@pytest.mark.parametrize("mbps", [0.5, 8.0, 100.0])
@pytest.mark.parametrize("nbytes", [0, 1, 1500, 123_456, 10_000_000])
def test_constant_trace_time_is_bytes_over_rate(mbps, nbytes):
    trace = constant_trace(mbps, duration_s=0.5)
    for t0 in (0.0, 0.3, 7.25):
        elapsed = trace.time_to_send(t0, nbytes) - t0
        assert elapsed == pytest.approx(nbytes * 8 / (mbps * 1e6), rel=1e-9, abs=1e-12)


def test_wrap_around():
    # 1 s at 8 Mbit/s (1e6 bytes), then 1 s at 0; the trace repeats every 2 s.
    trace = from_mbps([8.0, 0.0], bin_seconds=1.0)
    assert trace.mbps_at(2.5) == pytest.approx(8.0) and trace.mbps_at(3.5) == 0.0
    assert trace.bytes_between(0.5, 2.5) == pytest.approx(1e6)
    assert trace.bytes_between(0.0, 10.0) == pytest.approx(5e6)
    # 2.5e6 bytes from t=0: two full periods (4 s) and half of the third's capacity.
    assert trace.time_to_send(0.0, 2.5e6) == pytest.approx(4.5)
    # Starting late in a period's capacity spills into the next period.
    assert trace.time_to_send(0.75, 0.5e6) == pytest.approx(2.25)


def test_outages_delay_sends():
    # 4 Mbit/s for 1 s, a 3 s outage, 4 Mbit/s for 1 s.
    trace = from_mbps([4.0, 0.0, 0.0, 0.0, 4.0], bin_seconds=1.0)
    assert trace.time_to_send(0.5, 0.25e6) == pytest.approx(1.0)  # just fits before the outage
    assert trace.time_to_send(0.5, 0.375e6) == pytest.approx(4.25)  # waits the outage out
    assert trace.time_to_send(1.5, 1) > 4.0  # starting inside the outage
    assert trace.time_to_send(1.5, 0.5e6) == pytest.approx(5.0)
    assert trace.bytes_between(1.0, 4.0) == 0.0


def test_percentiles_of_known_bins():
    trace = from_mbps(np.arange(1, 11, dtype=float), bin_seconds=1.0)
    assert trace.percentiles_mbps((0, 50, 100)) == pytest.approx((1.0, 5.5, 10.0))
    assert trace.percentiles_mbps((50,), window_s=20.0) == pytest.approx((5.5,))


@st.composite
def traces(draw):
    choices = st.sampled_from([0.0, 0.0, 0.1, 1.0, 3.0, 50.0])
    rates = draw(st.lists(choices, min_size=1, max_size=12))
    if not any(rates):
        rates[draw(st.integers(0, len(rates) - 1))] = 2.0
    return from_mbps(rates, bin_seconds=draw(st.sampled_from([0.001, 0.1, 1.0])))


@SETTINGS
@given(
    trace=traces(),
    t0=st.floats(0.0, 50.0),
    sizes=st.tuples(st.floats(0.0, 5e6), st.floats(0.0, 5e6)),
)
def test_time_to_send_is_monotone_and_sufficient(trace, t0, sizes):
    small, large = sorted(sizes)
    finish_small, finish_large = trace.time_to_send(t0, small), trace.time_to_send(t0, large)
    assert t0 <= finish_small
    # Float rounding: times to ~1e-12 of their size; bytes to ~1e-12 of the bytes since time 0
    # and of the peak rate times the time (the error of a time, converted to bytes).
    peak_bytes_per_s = max(trace.mbps_at(t) for t in trace.edges_s[:-1]) * 1e6 / 8
    assert finish_small <= finish_large + 1e-12 * finish_large
    for nbytes, finish in [(small, finish_small), (large, finish_large)]:
        rounding = 1e-12 * (trace.bytes_between(0.0, finish) + peak_bytes_per_s * finish + 1)
        assert trace.bytes_between(t0, finish) >= nbytes - rounding
        # And no earlier time would do (the capacity is used as soon as it is there).
        earlier = finish - 1e-9 * max(1.0, finish)
        if nbytes > 0 and earlier >= t0:
            assert trace.bytes_between(t0, earlier) < nbytes + rounding


# --- shaped link -----------------------------------------------------------------------------


def test_shaped_link_fifo_with_fake_clock():
    clock = FakeClock()
    link = ShapedLink(constant_trace(8.0), clock=clock, sleep=clock.sleep)  # 1e6 bytes/s
    assert link.transfer_time(500_000) == pytest.approx(0.5)
    assert clock.sleeps == []  # transfer_time never sleeps
    assert link.send(500_000) == pytest.approx(0.5)
    assert clock.sleeps == [pytest.approx(0.5)]
    assert clock.now == pytest.approx(1000.5)
    # An idle gap is not credited: after 2 s idle the next send takes the plain time.
    clock.now += 2.0
    assert link.send(250_000) == pytest.approx(0.25)


def test_shaped_link_queues_concurrent_sends():
    clock = FakeClock()
    link = ShapedLink(constant_trace(8.0), clock=clock, sleep=lambda seconds: None)
    # Three sends issued at the same instant (sleep does not advance the clock): each waits for
    # the ones before it on the link.
    assert link.send(100_000) == pytest.approx(0.1)
    assert link.transfer_time(100_000) == pytest.approx(0.2)
    assert link.send(100_000) == pytest.approx(0.2)
    assert link.send(300_000) == pytest.approx(0.5)
    clock.now += 0.4  # one send still has 0.1 s to go
    assert link.transfer_time(0) == pytest.approx(0.1)
    assert link.transfer_time(100_000, at=0.5) == pytest.approx(0.1)  # link drained by then


def test_send_within_gives_up_but_leaves_the_bytes_queued():
    clock = FakeClock()
    link = ShapedLink(from_mbps([0.0, 8.0], bin_seconds=1.0), clock=clock, sleep=clock.sleep)
    assert link.send_within(1000, timeout_s=0.25) == (pytest.approx(0.25), False)  # an outage
    assert clock.sleeps == [pytest.approx(0.25)]
    # The given-up bytes still go out when the outage ends (1 s), 1e6 bytes/s: a later send
    # queues behind them.
    assert link.transfer_time(1000) == pytest.approx(1.0 + 0.002 - 0.25)
    assert link.send_within(1000, timeout_s=5.0) == (pytest.approx(0.752), True)
    waited, sent = link.send_within(0, timeout_s=1.0)
    assert sent and waited == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("nbytes, timeout_s, match", [
    (-1, 1.0, "nbytes: found -1"), (10, -0.1, r"timeout_s: found -0\.1"),
    (10, float("nan"), "timeout_s: found nan"),
])  # fmt: skip
def test_send_within_refuses_bad_arguments(nbytes, timeout_s, match):
    link = ShapedLink(constant_trace(8.0), clock=FakeClock(), sleep=lambda seconds: None)
    with pytest.raises(InvalidConfigError, match=match):
        link.send_within(nbytes, timeout_s)


def test_shaped_link_follows_trace_and_offset():
    trace = from_mbps([8.0, 0.0], bin_seconds=1.0)
    clock = FakeClock()
    link = ShapedLink(trace, clock=clock, sleep=clock.sleep, start_offset_s=0.5)
    assert link.current_mbps(window_s=0) == pytest.approx(8.0)
    assert link.current_mbps(window_s=1.0) == pytest.approx(4.0)
    # 0.5 s of capacity left before the outage, then the outage, then the next period.
    assert link.send(750_000) == pytest.approx(0.5 + 1.0 + 0.25)
    assert link.current_mbps(window_s=0) == pytest.approx(8.0)


def test_shaped_link_threads_share_the_link():
    clock = FakeClock()
    lock = threading.Lock()

    def sleep(seconds):
        with lock:
            clock.sleeps.append(seconds)

    link = ShapedLink(constant_trace(8.0), clock=clock, sleep=sleep)
    workers = [threading.Thread(target=link.send, args=(10_000,)) for _ in range(20)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    # With the clock frozen, the i-th send in lock order waits for i earlier ones.
    assert sorted(clock.sleeps) == pytest.approx([0.01 * (i + 1) for i in range(20)])


# --- estimator -------------------------------------------------------------------------------


def test_estimator_converges_on_constant_rate():
    estimator = BandwidthEstimator(initial_mbps=50.0, window=5)
    assert estimator.estimate_mbps() == 50.0
    for _ in range(5):
        assert estimator.observe(250_000, 0.5) == pytest.approx(4.0)
    assert estimator.estimate_mbps() == pytest.approx(4.0)


def test_estimator_is_harmonic_and_windowed():
    estimator = BandwidthEstimator(window=2)
    estimator.observe(1_000_000, 1.0)  # 8 Mbit/s
    estimator.observe(1_000_000, 4.0)  # 2 Mbit/s
    assert estimator.estimate_mbps() == pytest.approx(2 / (1 / 8 + 1 / 2))  # 3.2, not 5
    estimator.observe(1_000_000, 4.0)  # the 8 Mbit/s sample leaves the window
    assert estimator.estimate_mbps() == pytest.approx(2.0)


def test_median_estimator_is_not_held_down_by_one_stall():
    harmonic, median = BandwidthEstimator(window=5), BandwidthEstimator(window=5, statistic="median")
    for estimator in (harmonic, median):
        estimator.observe(1_600, 0.043)  # a stall: 0.3 Mbit/s
        for _ in range(2):
            estimator.observe(1_600, 0.0064)  # 2 Mbit/s
    assert median.estimate_mbps() == pytest.approx(2.0)
    assert harmonic.estimate_mbps() == pytest.approx(3 / (1 / 0.2977 + 2 / 2.0), rel=1e-3)  # 0.74
    median.observe(1_600, 0.0032)  # 4 Mbit/s: an even count takes the middle two's mean
    assert median.estimate_mbps() == pytest.approx(2.0)
    median.observe(1_600, 0.0032)
    assert median.estimate_mbps() == pytest.approx(2.0)  # 0.3, 2, 2, 4, 4
    median.observe(1_600, 0.0032)  # the stall leaves the window: 2, 2, 4, 4, 4
    assert median.estimate_mbps() == pytest.approx(4.0)


def test_estimator_zero_seconds_is_bounded():
    estimator = BandwidthEstimator(window=4, min_seconds=1e-3)
    for _ in range(3):
        estimator.observe(125_000, 0.1)  # 10 Mbit/s
    sample = estimator.observe(1500, 0.0)  # a coarse clock saw no time pass
    assert math.isfinite(sample) and sample == pytest.approx(1500 * 8 / 1e-3 / 1e6)
    assert 10.0 < estimator.estimate_mbps() <= 10.0 * 4 / 3


def test_estimator_tracks_a_shaped_link():
    clock = FakeClock()
    link = ShapedLink(from_mbps([2.0, 6.0], bin_seconds=10.0), clock=clock, sleep=clock.sleep)
    estimator = BandwidthEstimator(initial_mbps=1.0, window=3)
    for _ in range(20):  # 20 sends of 50 kB at 2 Mbit/s take 4 s: still in the first bin
        estimator.observe(50_000, link.send(50_000))
    assert estimator.estimate_mbps() == pytest.approx(2.0)
    clock.now += 10.0
    for _ in range(5):
        estimator.observe(50_000, link.send(50_000))
    assert estimator.estimate_mbps() == pytest.approx(6.0)


def test_pending_says_whether_queued_bytes_are_still_going_out():
    clock = FakeClock()
    link = ShapedLink(from_mbps([0.0, 8.0], bin_seconds=1.0), clock=clock, sleep=clock.sleep)
    assert not link.pending()
    link.send_within(1000, timeout_s=0.25)  # given up in the outage: still queued
    assert link.pending()
    clock.now += 0.74
    assert link.pending()  # goes out at 1.001 s
    clock.now += 0.02
    assert not link.pending()


def test_backlog_says_when_queued_bytes_go_out_or_went_out():
    clock = FakeClock()
    link = ShapedLink(from_mbps([0.0, 8.0], bin_seconds=1.0), clock=clock, sleep=clock.sleep)
    assert link.backlog_s() <= 0.0
    link.send_within(1000, timeout_s=0.25)  # queued at 0 s, goes out at 1.001 s
    assert link.backlog_s() == pytest.approx(0.751)
    clock.now += 0.8
    assert link.backlog_s() == pytest.approx(-0.049)  # went out 49 ms ago
