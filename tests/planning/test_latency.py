"""Latency and energy model: hand-computed cases, vectorized forms, validation."""

from __future__ import annotations

import numpy as np
import pytest

from splitpack.errors import InvalidConfigError
from splitpack.formats.variants import VariantProfile
from splitpack.planning.latency import (
    ConditionArrays, Conditions, PowerModel, ProfileArrays, energy_matrix, energy_weights, latency_matrix, latency_weights, plan_energy_mj, plan_latency_ms,
)


def make_profile(id: str = "s", kind: str = "split", *, head_ms: float = 0.0,
                 encode_ms: float = 0.0, decode_ms: float = 0.0, tail_ms: float = 0.0,
                 payload_bytes: int = 0, result_bytes: int = 0, accuracy: float = 98.0,
                 device_memory_bytes: int = 1000) -> VariantProfile:
    return VariantProfile(id, kind, head_ms, encode_ms, decode_ms, tail_ms, payload_bytes,
                          result_bytes, accuracy, device_memory_bytes)


SPLIT = make_profile(head_ms=2.0, tail_ms=3.0, payload_bytes=1000)


def test_split_latency_by_hand():
    # head 2 ms + 1000 B * 8 / 1 Mbit/s = 8 ms + rtt 20 ms + tail 3 ms = 33 ms
    assert plan_latency_ms(SPLIT, Conditions(uplink_mbps=1.0, rtt_ms=20.0)) == pytest.approx(33.0)


def test_split_latency_counts_encoder_decoder_and_result():
    profile = make_profile(head_ms=2.0, encode_ms=0.5, decode_ms=0.25, tail_ms=3.0,
                           payload_bytes=1000, result_bytes=2500)
    # (2 + 0.5) + 8 + 20 + (0.25 + 3) + 2500 B * 8 / 20 Mbit/s = 1 ms  ->  34.75 ms
    conditions = Conditions(uplink_mbps=1.0, downlink_mbps=20.0, rtt_ms=20.0)
    assert plan_latency_ms(profile, conditions) == pytest.approx(34.75)


def test_local_latency_is_device_compute_only():
    local = make_profile("local", "local", head_ms=40.0)
    # no transfer, no rtt: 40 ms, whatever the link
    assert plan_latency_ms(local, Conditions(uplink_mbps=0.01, rtt_ms=500.0)) == pytest.approx(40.0)
    # slowdown 1.5 x load 2 -> 40 * 3 = 120 ms; edge load does not matter
    slow = Conditions(uplink_mbps=1.0, device_slowdown=1.5, device_load=2.0, edge_load=4.0)
    assert plan_latency_ms(local, slow) == pytest.approx(120.0)


def test_edge_latency_by_hand():
    edge = make_profile("edge", "edge", tail_ms=5.0, payload_bytes=3072)
    # 3072 B * 8 / 2 Mbit/s = 12.288 ms + rtt 10 + tail 5 * edge load 2 = 10  ->  32.288 ms
    conditions = Conditions(uplink_mbps=2.0, rtt_ms=10.0, edge_load=2.0)
    assert plan_latency_ms(edge, conditions) == pytest.approx(32.288)


def test_loads_and_slowdowns_multiply():
    conditions = Conditions(uplink_mbps=1.0, rtt_ms=20.0, device_slowdown=2.0, device_load=1.5,
                            edge_slowdown=0.5, edge_load=4.0)
    # head 2 * 2 * 1.5 = 6, uplink 8, rtt 20, tail 3 * 0.5 * 4 = 6  ->  40 ms
    assert plan_latency_ms(SPLIT, conditions) == pytest.approx(40.0)


def test_energy_by_hand():
    power = PowerModel(compute_w=2.0, radio_tx_w=1.0, idle_w=0.5)
    conditions = Conditions(uplink_mbps=1.0, rtt_ms=20.0)
    # compute 2 W * 2 ms = 4 mJ + radio 1 W * 8 ms = 8 mJ + idle 0.5 W * (20 + 3) ms = 11.5 mJ
    assert plan_energy_mj(SPLIT, conditions, power) == pytest.approx(23.5)
    local = make_profile("local", "local", head_ms=40.0)
    # local: compute only, 2 W * 40 ms * load 2 = 160 mJ
    loaded = Conditions(uplink_mbps=1.0, device_load=2.0)
    assert plan_energy_mj(local, loaded, power) == pytest.approx(160.0)


def random_profiles(rng: np.random.Generator, count: int) -> list[VariantProfile]:
    profiles = [make_profile("local", "local", head_ms=30.0),
                make_profile("edge", "edge", head_ms=0.1, tail_ms=4.0, payload_bytes=3072,
                             result_bytes=40)]
    for i in range(count):
        profiles.append(make_profile(
            f"v{i}", head_ms=rng.uniform(0, 20), encode_ms=rng.uniform(0, 1),
            decode_ms=rng.uniform(0, 1), tail_ms=rng.uniform(0, 10),
            payload_bytes=int(rng.integers(1, 50_000)), result_bytes=int(rng.integers(0, 400))))
    return profiles


def random_conditions(rng: np.random.Generator, count: int) -> list[Conditions]:
    return [Conditions(uplink_mbps=rng.uniform(0.05, 100), downlink_mbps=rng.uniform(1, 100),
                       rtt_ms=rng.uniform(0, 100), device_slowdown=rng.uniform(0.5, 4),
                       device_load=rng.uniform(1, 4), edge_slowdown=rng.uniform(0.5, 4),
                       edge_load=rng.uniform(1, 4)) for _ in range(count)]


def test_matrices_equal_scalar_functions():
    rng = np.random.default_rng(0)
    profiles, conditions = random_profiles(rng, 20), random_conditions(rng, 15)
    power = PowerModel(compute_w=3.0, radio_tx_w=1.2, idle_w=0.3)
    arrays = ProfileArrays.from_profiles(profiles)
    condition_arrays = ConditionArrays.from_conditions(conditions)
    latency = latency_matrix(arrays, condition_arrays)
    energy = energy_matrix(arrays, condition_arrays, power)
    assert latency.shape == energy.shape == (15, 22)
    expected_latency = [[plan_latency_ms(p, c) for p in profiles] for c in conditions]
    expected_energy = [[plan_energy_mj(p, c, power) for p in profiles] for c in conditions]
    np.testing.assert_allclose(latency, expected_latency, rtol=1e-12)
    np.testing.assert_allclose(energy, expected_energy, rtol=1e-12)
    for row, c in enumerate(conditions):
        np.testing.assert_allclose(arrays.features @ latency_weights(c), latency[row], rtol=1e-12)
        np.testing.assert_allclose(arrays.features @ energy_weights(c, power), energy[row],
                                   rtol=1e-12)


def test_matrix_broadcasts_condition_grids():
    profiles = random_profiles(np.random.default_rng(1), 5)
    arrays = ProfileArrays.from_profiles(profiles)
    uplinks, device_loads = np.array([0.5, 5.0, 50.0]), np.array([1.0, 2.0, 3.0, 4.0])
    grid = ConditionArrays(uplink_mbps=uplinks[:, None], downlink_mbps=20.0, rtt_ms=20.0,
                           device_slowdown=1.0, device_load=device_loads[None, :],
                           edge_slowdown=1.0, edge_load=1.0)
    latency = latency_matrix(arrays, grid)
    assert latency.shape == (3, 4, 7)
    for i, up in enumerate(uplinks):
        for j, load in enumerate(device_loads):
            expected = [plan_latency_ms(p, Conditions(up, device_load=load)) for p in profiles]
            np.testing.assert_allclose(latency[i, j], expected, rtol=1e-12)
    single = ConditionArrays.from_conditions([Conditions(2.0)])
    assert latency_matrix(arrays, single).shape == (1, 7)


def test_grid_flattens_bandwidth_slowest():
    grid = ConditionArrays.grid([1.0, 10.0], device_loads=[1.0, 2.0], edge_loads=[1.0, 3.0])
    np.testing.assert_array_equal(grid.uplink_mbps, [1, 1, 1, 1, 10, 10, 10, 10])
    np.testing.assert_array_equal(grid.device_load, [1, 1, 2, 2, 1, 1, 2, 2])
    np.testing.assert_array_equal(grid.edge_load, [1, 3, 1, 3, 1, 3, 1, 3])


@pytest.mark.parametrize("field, value, match", [
    ("uplink_mbps", 0.0, r"Conditions\.uplink_mbps must be finite and > 0; got 0\.0"),
    ("uplink_mbps", -1.0, r"Conditions\.uplink_mbps .*got -1\.0"),
    ("uplink_mbps", float("nan"), r"Conditions\.uplink_mbps .*got nan"),
    ("uplink_mbps", float("inf"), r"Conditions\.uplink_mbps .*got inf"),
    ("uplink_mbps", "fast", r"Conditions\.uplink_mbps must be a number; got 'fast'"),
    ("downlink_mbps", 0.0, r"Conditions\.downlink_mbps .*> 0; got 0\.0"),
    ("rtt_ms", -5.0, r"Conditions\.rtt_ms must be finite and >= 0; got -5\.0"),
    ("device_load", 0.5, r"Conditions\.device_load must be finite and >= 1; got 0\.5"),
    ("edge_load", 0.0, r"Conditions\.edge_load .*>= 1; got 0\.0"),
    ("device_slowdown", 0.0, r"Conditions\.device_slowdown .*> 0; got 0\.0"),
    ("edge_slowdown", -2.0, r"Conditions\.edge_slowdown .*> 0; got -2\.0"),
])
def test_invalid_conditions(field, value, match):
    values = {"uplink_mbps": 1.0, field: value}
    with pytest.raises(InvalidConfigError, match=match):
        Conditions(**values)


@pytest.mark.parametrize("overrides, match", [
    ({"uplink_mbps": np.array([1.0, 0.0])}, r"ConditionArrays\.uplink_mbps .*> 0; got 0\.0"),
    ({"edge_load": np.array([1.0, 0.9])}, r"ConditionArrays\.edge_load .*>= 1; got 0\.9"),
    ({"uplink_mbps": np.ones(2), "rtt_ms": np.ones(3)}, r"do not broadcast"),
])
def test_invalid_condition_arrays(overrides, match):
    values = {"uplink_mbps": 1.0, "downlink_mbps": 20.0, "rtt_ms": 20.0, "device_slowdown": 1.0,
              "device_load": 1.0, "edge_slowdown": 1.0, "edge_load": 1.0, **overrides}
    with pytest.raises(InvalidConfigError, match=match):
        ConditionArrays(**values)


@pytest.mark.parametrize("kwargs, match", [
    ({"kind": "cloud"}, r"kind must be one of split, local, edge; got 'cloud'"),
    ({"head_ms": -1.0}, r"VariantProfile 's'\.head_ms must be finite and >= 0; got -1\.0"),
    ({"payload_bytes": float("nan")}, r"payload_bytes .*got nan"),
    ({"accuracy": 101.0}, r"accuracy is in percent, <= 100; got 101\.0"),
    ({"id": ""}, r"VariantProfile\.id must be a non-empty string"),
    ({"id": "local", "kind": "local", "payload_bytes": 10},
     r"local variant .*payload_bytes must be 0"),
    ({"id": "local", "kind": "local", "tail_ms": 1.0}, r"local variant .*tail_ms must be 0"),
])
def test_invalid_profiles(kwargs, match):
    with pytest.raises(InvalidConfigError, match=match):
        make_profile(**kwargs)


def test_invalid_compression_ratio_and_power():
    match = r"compression_ratio must be finite and > 0; got 0"
    with pytest.raises(InvalidConfigError, match=match):
        VariantProfile("s", "split", 1, 0, 0, 1, 10, 0, 98.0, 10, "t", 0)
    with pytest.raises(InvalidConfigError, match=r"PowerModel\.radio_tx_w .*>= 0; got -1"):
        PowerModel(compute_w=1.0, radio_tx_w=-1)


def test_profile_from_mapping():
    values = {"id": "s", "kind": "split", "head_ms": 2.0, "encode_ms": 0.0, "decode_ms": 0.0,
              "tail_ms": 3.0, "payload_bytes": 1000, "result_bytes": 0, "accuracy": 98.0,
              "device_memory_bytes": 1000}
    assert VariantProfile.from_mapping(values) == make_profile(
        head_ms=2.0, tail_ms=3.0, payload_bytes=1000)
    with pytest.raises(InvalidConfigError, match=r"unknown VariantProfile key\(s\) \['speed'\]"):
        VariantProfile.from_mapping({**values, "speed": 1})
    with pytest.raises(InvalidConfigError, match=r"incomplete VariantProfile"):
        VariantProfile.from_mapping({"id": "s"})
