"""Choosing the K split variants a bundle carries over an operating range."""

from __future__ import annotations

import numpy as np
import pytest

from splitpack.errors import InvalidConfigError
from splitpack.formats.variants import VariantProfile
from splitpack.planning.latency import PowerModel, ProfileArrays, latency_matrix
from splitpack.planning.selector import Constraints
from splitpack.planning.variant_set import OperatingRange, choose_variant_set


def make_profile(id: str, kind: str = "split", *, head_ms: float = 0.0, tail_ms: float = 0.0,
                 payload_bytes: int = 0, accuracy: float = 98.2) -> VariantProfile:
    return VariantProfile(id, kind, head_ms, 0.0, 0.0, tail_ms, payload_bytes, 0, accuracy,
                          100_000, cut=None if kind != "split" else f"{id}_cut")


DEFAULT = Constraints(baseline_accuracy=98.2, max_accuracy_drop=1.0)

SMALL_RANGE = OperatingRange(bandwidths_mbps=tuple(np.logspace(-1, 2, 13)),
                             device_loads=(1.0, 3.0), edge_loads=(1.0, 3.0), rtt_ms=10.0)


def family() -> list[VariantProfile]:
    """Splits trading device compute for payload, each with a slower, dominated twin."""
    profiles = [make_profile("local", "local", head_ms=150.0),
                make_profile("edge", "edge", tail_ms=12.0, payload_bytes=60_000)]
    for i in range(4):
        head, tail, payload = 2.0 + 6.0 * i, 10.0 - 2.0 * i, 20_000 // 4 ** i
        profiles.append(make_profile(f"cut{i}", head_ms=head, tail_ms=tail, payload_bytes=payload))
        profiles.append(make_profile(f"cut{i}_slow", head_ms=head + 5.0, tail_ms=tail + 1.0,
                                     payload_bytes=payload))
    return profiles


def useful_split_ids(profiles: list[VariantProfile], operating_range: OperatingRange) -> set[str]:
    latency = latency_matrix(ProfileArrays.from_profiles(profiles),
                             operating_range.condition_arrays())
    return {profiles[j].id for j in latency.argmin(axis=1) if profiles[j].kind == "split"}


def test_regret_non_increasing_and_zero_with_all_useful():
    profiles = family()
    useful = useful_split_ids(profiles, SMALL_RANGE)
    assert len(useful) >= 2  # the family is built so that several cuts matter
    result = choose_variant_set(profiles, DEFAULT, SMALL_RANGE, k=len(useful), method="greedy")
    assert set(result.variant_ids) == useful
    assert result.coverage_regret_max == pytest.approx(0.0, abs=1e-12)
    assert result.always_available_ids == ("local", "edge")
    curve = (result.base_regret_mean,) + result.regret_curve_mean
    assert all(later <= earlier + 1e-12 for earlier, later in zip(curve, curve[1:]))
    assert curve[0] > 0 and all(r > 0 for r in result.regret_curve_mean[:-1])
    assert len(result.regret_curve_mean) == len(result.regret_curve_max) == len(useful)


def test_extra_k_adds_nothing_once_regret_is_zero():
    profiles = family()
    useful = useful_split_ids(profiles, SMALL_RANGE)
    result = choose_variant_set(profiles, DEFAULT, SMALL_RANGE, k=len(useful) + 2)
    assert set(result.variant_ids) == useful
    assert result.regret_curve_mean[-3:] == (0.0, 0.0, 0.0)
    assert not any(i.endswith("_slow") for i in result.variant_ids)


def test_exact_and_greedy_agree_on_small_case():
    profiles = family()
    greedy = choose_variant_set(profiles, DEFAULT, SMALL_RANGE, k=2, method="greedy")
    exact = choose_variant_set(profiles, DEFAULT, SMALL_RANGE, k=2, method="exact")
    assert (greedy.method, exact.method) == ("greedy", "exact")
    assert set(greedy.variant_ids) == set(exact.variant_ids)
    assert exact.coverage_regret_mean == pytest.approx(greedy.coverage_regret_mean)
    for k in (1, 2):
        assert exact.regret_curve_mean[k - 1] <= greedy.regret_curve_mean[k - 1] + 1e-12
    auto = choose_variant_set(profiles, DEFAULT, SMALL_RANGE, k=2)
    assert auto.method == "exact"
    forced = choose_variant_set(profiles, DEFAULT, SMALL_RANGE, k=2, max_exact_combinations=3)
    assert forced.method == "greedy"


def test_regret_matches_definition():
    profiles = family()
    result = choose_variant_set(profiles, DEFAULT, SMALL_RANGE, k=1)
    latency = latency_matrix(ProfileArrays.from_profiles(profiles),
                             SMALL_RANGE.condition_arrays())
    ids = [p.id for p in profiles]
    bundle = [ids.index(i) for i in ("local", "edge", *result.variant_ids)]
    regret = latency[:, bundle].min(axis=1) / latency.min(axis=1) - 1
    assert result.coverage_regret_mean == pytest.approx(regret.mean())
    assert result.coverage_regret_max == pytest.approx(regret.max())


def test_variant_set_respects_constraints_and_energy():
    profiles = family() + [make_profile("tiny", head_ms=1.0, tail_ms=1.0, payload_bytes=10,
                                        accuracy=90.0)]
    result = choose_variant_set(profiles, DEFAULT, None, k=3)
    assert "tiny" not in result.variant_ids
    assert OperatingRange().condition_arrays().uplink_mbps.shape == (25 * 4 * 4,)
    power = PowerModel(compute_w=2.0, radio_tx_w=1.5, idle_w=0.1)
    energy = choose_variant_set(profiles, Constraints(98.2, objective="energy"), SMALL_RANGE, k=2,
                                power=power)
    assert 1 <= len(energy.variant_ids) <= 2 and energy.coverage_regret_mean >= 0


@pytest.mark.parametrize("kwargs, match", [
    ({"k": 0}, r"k must be an integer >= 1; got 0"),
    ({"k": 2.5}, r"k must be an integer >= 1; got 2.5"),
    ({"k": 2, "method": "magic"}, r"method must be one of auto, greedy, exact; got 'magic'"),
    ({"k": 3, "method": "exact", "max_exact_combinations": 10},
     r"exact search needs 92 combinations, over max_exact_combinations=10"),
])
def test_invalid_variant_set_arguments(kwargs, match):
    with pytest.raises(InvalidConfigError, match=match):
        choose_variant_set(family(), DEFAULT, SMALL_RANGE, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"bandwidths_mbps": ()}, r"OperatingRange\.bandwidths_mbps must not be empty"),
    ({"bandwidths_mbps": (1.0, 0.0)}, r"uplink_mbps must be finite and > 0; got 0\.0"),
    ({"device_loads": (0.5,)}, r"device_load must be finite and >= 1; got 0\.5"),
])
def test_invalid_operating_range(kwargs, match):
    with pytest.raises(InvalidConfigError, match=match):
        OperatingRange(**kwargs)
