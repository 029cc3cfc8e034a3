"""The uplink transfer model on synthetic samples: it fits a per-message delay and a rate, keeps
the rate when the window cannot identify it, and refuses bad parameters. No timing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from splitpack.errors import InvalidConfigError
from splitpack.planning.transfer import TransferEstimator, TransferFit
from splitpack.runtimes.netem import BandwidthEstimator, ShapedLink, from_mbps

BYTES_PER_MBIT = 1e6 / 8


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def seconds_for(nbytes: float, delay_ms: float, mbps: float) -> float:
    return delay_ms / 1e3 + nbytes / (mbps * BYTES_PER_MBIT)


def feed(estimator: TransferEstimator, sizes, delay_ms: float, mbps: float,
         noise_ms=None) -> TransferFit:
    fit = estimator.fit()
    for index, nbytes in enumerate(sizes):
        extra = 0.0 if noise_ms is None else noise_ms[index] / 1e3
        fit = estimator.observe(nbytes, seconds_for(nbytes, delay_ms, mbps) + extra)
    return fit


def test_fits_delay_and_rate_from_two_sizes() -> None:
    estimator = TransferEstimator(initial_mbps=5.0)
    fit = feed(estimator, [389, 3614, 400, 2782, 389, 3579] * 2, delay_ms=8.0, mbps=1.5)
    assert fit.rate_identified and fit.samples == 12
    assert fit.mbps == pytest.approx(1.5, rel=1e-6)
    assert fit.delay_ms == pytest.approx(8.0, abs=1e-6)
    assert fit.transfer_ms(3000) == pytest.approx(8.0 + 3000 * 8e-3 / 1.5)
    assert estimator.transfer_ms(0) == pytest.approx(8.0) and estimator.estimate_mbps() == fit.mbps


def test_a_stall_and_noise_do_not_move_the_fit_far() -> None:
    rng = np.random.default_rng(0)
    sizes = [389, 3614] * 8
    noise = list(rng.uniform(-2.0, 2.0, size=len(sizes)))
    noise[5] = 2000.0  # one message met a 2 s outage
    fit = feed(TransferEstimator(window=16), sizes, delay_ms=8.0, mbps=1.5, noise_ms=noise)
    assert fit.rate_identified
    assert fit.mbps == pytest.approx(1.5, rel=0.25)
    assert fit.delay_ms == pytest.approx(8.0, abs=3.0)


def test_one_size_keeps_the_initial_rate_and_fits_the_delay() -> None:
    """All messages of one size cannot tell delay from rate: the rate stays the assumed one
    (not the low throughput of small messages that mostly waited), the delay takes the rest."""
    fit = feed(TransferEstimator(initial_mbps=5.0), [389] * 10, delay_ms=8.0, mbps=1.5)
    assert not fit.rate_identified
    assert fit.mbps == pytest.approx(5.0)
    expected = seconds_for(389, 8.0, 1.5) * 1e3 - 389 * 8e-3 / 5.0
    assert fit.delay_ms == pytest.approx(expected)
    assert fit.transfer_ms(389) == pytest.approx(seconds_for(389, 8.0, 1.5) * 1e3)


def test_sizes_too_close_do_not_identify_the_rate() -> None:
    fit = feed(TransferEstimator(initial_mbps=5.0, min_size_ratio=2.0), [300, 400, 500, 590] * 3,
               delay_ms=8.0, mbps=1.5, noise_ms=[30.0, 0.0, 0.0, 0.0] * 3)
    assert not fit.rate_identified and fit.mbps == pytest.approx(5.0)


def test_the_last_identified_rate_outlives_a_window_of_one_size() -> None:
    estimator = TransferEstimator(initial_mbps=5.0, window=4, delay_window=2)
    assert feed(estimator, [400, 4000, 400, 4000], delay_ms=5.0, mbps=2.0).rate_identified
    fit = feed(estimator, [400] * 6, delay_ms=20.0, mbps=2.0)  # sizes no longer tell the rate
    assert not fit.rate_identified
    assert fit.mbps == pytest.approx(2.0) and fit.delay_ms == pytest.approx(20.0)


def test_a_pure_rate_link_is_not_read_as_delay() -> None:
    """A throughput floor: messages of one size that took n / rate (no delay) give that rate,
    above the assumed one, and no delay."""
    fit = feed(TransferEstimator(initial_mbps=5.0), [3105] * 5, delay_ms=0.0, mbps=50.0)
    assert fit.mbps == pytest.approx(50.0) and fit.delay_ms == pytest.approx(0.0, abs=1e-9)


def test_messages_that_fit_in_one_packet_say_nothing_of_the_rate() -> None:
    """Two sizes under one packet whose waits differ by chance (a cellular link's next
    transmission opportunity): no rate identified from them, the wait is delay.
    Before, 525 B uploads that waited 30 ms and 88 B ones that waited 5 ms gave about
    0.1 Mbit/s, and every plan of a 525 B message carried 40 ms of bytes."""
    estimator = TransferEstimator(initial_mbps=5.0)
    sent = [(88, 0.005), (525, 0.030), (88, 0.006), (525, 0.028), (88, 0.004)]
    for nbytes, seconds in sent:
        fit = estimator.observe(nbytes, seconds)
    assert not fit.rate_identified and fit.mbps == pytest.approx(5.0)
    residuals_ms = sorted(seconds * 1e3 - nbytes * 8e-3 / 5.0 for nbytes, seconds in sent)
    assert fit.delay_ms == pytest.approx(residuals_ms[2])  # their median: 88 B in 6 ms
    assert fit.transfer_ms(525) - fit.transfer_ms(88) == pytest.approx(437 * 8e-3 / 5.0)
    packets_of_100 = TransferEstimator(initial_mbps=5.0, packet_bytes=100.0)
    for nbytes, seconds in sent:  # with 100 B packets the same samples are a rate
        fit = packets_of_100.observe(nbytes, seconds)
    assert fit.rate_identified and fit.mbps < 1.0
    # the throughput floor still holds for small messages: the delay is >= 0
    assert TransferEstimator(initial_mbps=5.0).observe(525, 1e-4).mbps == pytest.approx(42.0)


def test_a_negative_slope_is_not_a_rate() -> None:
    """Larger messages that happened to go faster than small ones: noise, not a rate."""
    estimator = TransferEstimator(initial_mbps=5.0)
    estimator.observe(400, 0.030)
    fit = estimator.observe(4000, 0.010)
    assert not fit.rate_identified and fit.mbps == pytest.approx(5.0)


def test_the_delay_follows_the_recent_samples_only() -> None:
    clock = Clock()
    estimator = TransferEstimator(initial_mbps=5.0, delay_window=3, delay_span_s=2.0, clock=clock)
    for _ in range(3):  # an outage: three slow messages
        estimator.observe(400, 0.5)
        clock.now += 0.1
    assert estimator.fit().delay_ms > 400
    clock.now += 5.0
    fit = estimator.observe(400, 0.004)  # seconds later, a fast one: the old ones are stale
    assert fit.delay_ms == pytest.approx(4.0 - 400 * 8e-3 / 5.0)
    fit = estimator.observe(400, 0.5)  # a slow one 0 s later: the median of the two
    assert fit.delay_ms == pytest.approx((4.0 + 500.0) / 2 - 400 * 8e-3 / 5.0)


def test_a_link_that_got_faster_is_believed_from_the_recent_samples() -> None:
    """A window of slow small messages (0.02 Mbit/s, no rate identified), then three fast
    ones: the rate is at least what the recent ones achieved, so their size is planned at
    their time, not at the window's median."""
    clock = Clock()
    estimator = TransferEstimator(initial_mbps=0.02, clock=clock)
    for _ in range(12):
        estimator.observe(100, 100 / (0.02 * BYTES_PER_MBIT))
        clock.now += 1.0
    assert estimator.transfer_ms(100) == pytest.approx(40.0)
    for _ in range(3):
        fit = estimator.observe(100, 0.0002)
        clock.now += 0.1
    assert fit.samples == 15 and not fit.rate_identified
    assert fit.transfer_ms(100) == pytest.approx(0.2)
    fit = estimator.observe(100, 0.040)  # one slow again: a median of the recent, in the delay
    assert fit.transfer_ms(100) == pytest.approx(0.2, abs=0.01)


def test_the_window_forgets_old_samples() -> None:
    estimator = TransferEstimator(initial_mbps=5.0, window=4, delay_window=4)
    feed(estimator, [400, 4000] * 2, delay_ms=50.0, mbps=1.0)
    fit = feed(estimator, [400, 4000] * 2, delay_ms=5.0, mbps=4.0)
    assert fit.mbps == pytest.approx(4.0) and fit.delay_ms == pytest.approx(5.0)


def test_initial_guess_and_zero_durations() -> None:
    estimator = TransferEstimator(initial_mbps=2.0, initial_delay_ms=3.0, min_seconds=1e-3)
    fit = estimator.fit()
    assert (fit.delay_ms, fit.mbps, fit.samples, fit.rate_identified) == (3.0, 2.0, 0, False)
    fit = estimator.observe(3000, 0.0)  # a coarse clock read 0: counted as 1 ms, 24 Mbit/s
    assert math.isfinite(fit.mbps) and fit.mbps == pytest.approx(24.0)
    assert fit.delay_ms == pytest.approx(0.0, abs=1e-9)


def test_predicts_a_packetized_link_better_than_one_throughput() -> None:
    """Messages sent through a mahimahi-like link (one 1500 B opportunity every 10 ms): small
    ones wait for the next opportunity, large ones for several. The fit puts the wait in the
    delay and predicts both sizes closer to what they took than bytes / the median
    throughput of the same samples (the model before) does."""
    rates = [12.0 if ms % 10 == 0 else 0.0 for ms in range(1000)]  # 1500 B in 1 ms, each 10 ms
    trace = from_mbps(rates, bin_seconds=1e-3)

    class LinkTime:
        now = 0.0

        def clock(self) -> float:
            return self.now

        def sleep(self, seconds: float) -> None:
            self.now += seconds

    time = LinkTime()
    link = ShapedLink(trace, clock=time.clock, sleep=time.sleep)
    estimator = TransferEstimator(initial_mbps=5.0, clock=time.clock)
    before = BandwidthEstimator(window=16, statistic="median", min_seconds=1e-5)
    took: dict[int, list[float]] = {300: [], 6000: []}
    rng = np.random.default_rng(1)
    for nbytes in [300, 6000] * 8:
        time.now += rng.uniform(0.05, 0.15)
        seconds = link.send(nbytes)
        took[nbytes].append(seconds * 1e3)
        fit = estimator.observe(nbytes, seconds)
        before.observe(nbytes, seconds)
    assert fit.rate_identified
    assert fit.mbps == pytest.approx(1.2, rel=0.3)  # 1500 B per 10 ms
    assert 1.0 < fit.delay_ms < 10.0  # on average half a period
    for nbytes, times in took.items():
        error = abs(fit.transfer_ms(nbytes) - np.median(times))
        error_before = abs(nbytes * 8e-3 / before.estimate_mbps() - np.median(times))
        assert error < 0.5 * error_before, (nbytes, fit, before.estimate_mbps(), times)


@pytest.mark.parametrize("options, match", [
    ({"initial_mbps": 0.0}, r"initial_mbps: found 0\.0; expected a finite number > 0"),
    ({"initial_mbps": float("inf")}, "initial_mbps: found inf"),
    ({"initial_delay_ms": -1.0}, r"initial_delay_ms: found -1\.0; expected a finite number >= 0"),
    ({"window": 1}, r"window: found 1; expected an integer >= 2"),
    ({"window": 4.0}, r"window: found 4\.0"),
    ({"window": True}, "window: found True"),
    ({"window": 4, "delay_window": 5},
     r"delay_window: found 5; expected an integer in \[1, window=4\]"),
    ({"delay_window": 0}, "delay_window: found 0"),
    ({"delay_span_s": -0.5}, r"delay_span_s: found -0\.5"),
    ({"min_size_ratio": 1.0}, r"min_size_ratio: found 1\.0; expected a finite number > 1"),
    ({"min_seconds": 0.0}, "min_seconds: found 0.0"),
    ({"packet_bytes": 0}, "packet_bytes: found 0; expected a finite number > 0"),
    ({"initial_mbps": "5"}, "initial_mbps: found '5'"),
])  # fmt: skip
def test_bad_parameters(options, match) -> None:
    with pytest.raises(InvalidConfigError, match=match):
        TransferEstimator(**options)


@pytest.mark.parametrize("nbytes, seconds, match", [
    (0, 0.01, "nbytes: found 0; expected a finite number > 0"),
    (-5, 0.01, "nbytes: found -5"),
    (100, -0.5, r"seconds: found -0\.5; expected a finite number >= 0"),
    (100, float("nan"), "seconds: found nan"),
    (float("inf"), 0.01, "nbytes: found inf"),
])  # fmt: skip
def test_bad_samples(nbytes, seconds, match) -> None:
    with pytest.raises(InvalidConfigError, match=match):
        TransferEstimator().observe(nbytes, seconds)
    with pytest.raises(InvalidConfigError, match="nbytes: found -1"):
        TransferEstimator().transfer_ms(-1)
