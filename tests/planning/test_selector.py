"""Plan selection, constraints and hysteresis."""

from __future__ import annotations

import re

import pytest

from splitpack.errors import InvalidConfigError
from splitpack.formats.variants import VariantProfile
from splitpack.planning.latency import Conditions, PowerModel, plan_energy_mj, plan_latency_ms
from splitpack.planning.selector import Constraints, InfeasiblePlanError, Selector, select


def make_profile(id: str, kind: str = "split", *, head_ms: float = 0.0, tail_ms: float = 0.0,
                 payload_bytes: int = 0, accuracy: float = 98.2,
                 device_memory_bytes: int = 100_000) -> VariantProfile:
    return VariantProfile(id, kind, head_ms, 0.0, 0.0, tail_ms, payload_bytes, 0, accuracy,
                          device_memory_bytes, cut=None if kind != "split" else f"{id}_cut")


LOCAL = make_profile("local", "local", head_ms=40.0, device_memory_bytes=4_000_000)
EDGE = make_profile("edge", "edge", tail_ms=5.0, payload_bytes=3072, device_memory_bytes=50_000)
EARLY = make_profile("s_early", head_ms=4.0, tail_ms=4.0, payload_bytes=1500, accuracy=98.0,
                     device_memory_bytes=500_000)
MID = make_profile("s_mid", head_ms=10.0, tail_ms=2.0, payload_bytes=300, accuracy=97.6,
                   device_memory_bytes=1_500_000)
LOSSY = make_profile("s_lossy", head_ms=5.0, tail_ms=3.0, payload_bytes=100, accuracy=95.0,
                     device_memory_bytes=600_000)
CANDIDATES = [LOCAL, EDGE, EARLY, MID, LOSSY]
DEFAULT = Constraints(baseline_accuracy=98.2, max_accuracy_drop=1.0)
# At 1 Mbit/s, rtt 5 ms: local 40, edge 24.576 + 5 + 5 = 34.576, s_early 4 + 12 + 5 + 4 = 25,
# s_mid 10 + 2.4 + 5 + 2 = 19.4, s_lossy 5 + 0.8 + 5 + 3 = 13.8 (but 95.0 < 97.2).
MIDBAND = Conditions(uplink_mbps=1.0, rtt_ms=5.0)


def test_local_at_very_low_bandwidth():
    # 0.01 Mbit/s: edge needs 3072 B * 800 ms/kB = 2457.6 ms, s_mid 240 ms; local 40 ms
    plan = select(CANDIDATES, Conditions(uplink_mbps=0.01), DEFAULT)
    assert plan.id == "local" and plan.latency_ms == pytest.approx(40.0)
    assert plan.energy_mj is None


def test_split_at_middle_and_edge_at_high_bandwidth():
    plan = select(CANDIDATES, MIDBAND, DEFAULT)
    assert plan.id == "s_mid" and plan.latency_ms == pytest.approx(19.4)
    assert plan.index == CANDIDATES.index(MID)
    # 100 Mbit/s, rtt 20: edge 0.246 + 20 + 5 = 25.2; s_early 28.1; s_mid 32.0; local 40
    plan = select(CANDIDATES, Conditions(uplink_mbps=100.0, rtt_ms=20.0), DEFAULT)
    assert plan.id == "edge" and plan.latency_ms == pytest.approx(25.24576)


def test_plan_latency_matches_scalar_model():
    selector = Selector(CANDIDATES, DEFAULT)
    for up in (0.05, 0.3, 1.0, 7.0, 80.0):
        conditions = Conditions(uplink_mbps=up, device_load=2.0, edge_load=3.0)
        plan = selector.select(conditions)
        expected = {p.id: plan_latency_ms(p, conditions) for p in selector.feasible}
        assert plan.latency_ms == pytest.approx(min(expected.values()))
        assert plan.latency_ms == pytest.approx(expected[plan.id])


def test_accuracy_constraint_excludes_variants():
    assert Selector(CANDIDATES, DEFAULT).feasible == (LOCAL, EDGE, EARLY, MID)
    loose = Constraints(baseline_accuracy=98.2, max_accuracy_drop=5.0)
    assert select(CANDIDATES, MIDBAND, loose).id == "s_lossy"
    # 98.2 - 0.6 = 97.6 must admit s_mid despite float rounding
    assert select(CANDIDATES, MIDBAND, Constraints(98.2, 0.6)).id == "s_mid"
    assert select(CANDIDATES, MIDBAND, Constraints(98.2, 0.5)).id == "s_early"


def test_memory_constraint_excludes_variants():
    limited = Constraints(baseline_accuracy=98.2, device_memory_bytes=1_000_000)
    assert Selector(CANDIDATES, limited).feasible == (EDGE, EARLY)
    assert select(CANDIDATES, MIDBAND, limited).id == "s_early"
    # local is over the memory limit, so even a dead-slow link goes to the edge
    assert select(CANDIDATES, Conditions(uplink_mbps=0.01), limited).id == "s_early"


@pytest.mark.parametrize("constraints, match, closest", [
    (Constraints(99.5, 0.1),
     r"no plan meets accuracy >= 99.4 \(baseline 99.5 - max drop 0.1\); "
     r"closest: variant 'local' with accuracy 98.2 \(0 of 5 candidates", "local"),
    (Constraints(98.2, 1.0, device_memory_bytes=10_000),
     r"no plan meets accuracy >= 97.2 \(baseline 98.2 - max drop 1\) and device memory <= 0.01 MB; "
     r"closest: variant 'edge' with accuracy 98.2 and device memory 0.05 MB", "edge"),
    (Constraints(99.0, 0.5, device_memory_bytes=600_000),
     r"no plan meets accuracy >= 98.5 .* and device memory <= 0.6 MB; closest: variant 'edge' "
     r"with accuracy 98.2 and device memory 0.05 MB \(0 of 5 candidates meet the accuracy "
     r"constraint, 3 the memory constraint\)", "edge"),
])
def test_infeasible_constraints_name_constraint_and_closest(constraints, match, closest):
    with pytest.raises(InfeasiblePlanError, match=match) as info:
        select(CANDIDATES, MIDBAND, constraints)
    assert info.value.closest_id == closest
    assert isinstance(info.value, InvalidConfigError)


def test_latency_budget():
    within = Constraints(98.2, latency_budget_ms=20.0)
    assert select(CANDIDATES, MIDBAND, within).id == "s_mid"
    tight = Constraints(98.2, latency_budget_ms=10.0)
    message = ("no plan meets latency <= 10 ms at uplink 1 Mbit/s, rtt 5 ms, device load 1 "
               "x slowdown 1, edge load 1 x slowdown 1; best achievable: variant 's_mid' with "
               "19.4 ms")
    with pytest.raises(InfeasiblePlanError, match=re.escape(message)) as info:
        select(CANDIDATES, MIDBAND, tight)
    assert info.value.closest_id == "s_mid"


def test_energy_objective_and_budget():
    power = PowerModel(compute_w=3.0, radio_tx_w=1.0)
    # energy at 1 Mbit/s: local 120, edge 24.576, s_early 12 + 12 = 24, s_mid 30 + 2.4 = 32.4
    constraints = Constraints(98.2, objective="energy")
    plan = select(CANDIDATES, MIDBAND, constraints, power=power)
    assert plan.id == "s_early" and plan.energy_mj == pytest.approx(24.0)
    assert plan.energy_mj == pytest.approx(plan_energy_mj(EARLY, MIDBAND, power))
    assert plan.latency_ms == pytest.approx(25.0)
    # a 24 ms budget excludes s_early (25 ms) and edge (34.6 ms): s_mid is the only one left
    budgeted = Constraints(98.2, latency_budget_ms=24.0, objective="energy")
    assert select(CANDIDATES, MIDBAND, budgeted, power=power).id == "s_mid"
    # a latency objective with a power model still reports energy
    assert select(CANDIDATES, MIDBAND, DEFAULT, power=power).energy_mj == pytest.approx(32.4)


@pytest.mark.parametrize("candidates, match", [
    ([EDGE, EARLY], r"candidates lack the local variant"),
    ([LOCAL, EARLY], r"candidates lack the edge variant"),
    ([EARLY, MID], r"candidates lack the local and edge variant"),
    ([LOCAL, EDGE, EARLY, EARLY], r"candidate ids must be unique; repeated: \['s_early'\]"),
    ([LOCAL, EDGE, "s_mid"], r"candidates must be VariantProfile objects; got 's_mid'"),
])
def test_invalid_candidates(candidates, match):
    with pytest.raises(InvalidConfigError, match=match):
        Selector(candidates, DEFAULT)


@pytest.mark.parametrize("kwargs, match", [
    ({"baseline_accuracy": 101.0},
     r"Constraints\.baseline_accuracy must be in \[0, 100\]; got 101"),
    ({"max_accuracy_drop": -1.0}, r"Constraints\.max_accuracy_drop must be in \[0, 100\]"),
    ({"device_memory_bytes": 0}, r"Constraints\.device_memory_bytes must be in \(0, inf\] or None"),
    ({"latency_budget_ms": 0.0}, r"Constraints\.latency_budget_ms must be in \(0, inf\] or None"),
    ({"latency_budget_ms": "soon"}, r"Constraints\.latency_budget_ms .*got 'soon'"),
    ({"objective": "speed"}, r"objective must be one of latency, energy; got 'speed'"),
])
def test_invalid_constraints(kwargs, match):
    with pytest.raises(InvalidConfigError, match=match):
        Constraints(**{"baseline_accuracy": 98.2, **kwargs})


def test_energy_objective_needs_power_model():
    with pytest.raises(InvalidConfigError, match=r"objective 'energy' needs a PowerModel"):
        Selector(CANDIDATES, Constraints(98.2, objective="energy"))


def test_hysteresis_keeps_within_margin_and_switches_beyond():
    selector = Selector(CANDIDATES, DEFAULT)
    # best s_mid 19.4 vs current s_early 25: 22.4 % faster
    assert selector.select_with_hysteresis("s_early", MIDBAND, margin=0.3).id == "s_early"
    assert selector.select_with_hysteresis("s_early", MIDBAND, margin=0.1).id == "s_mid"
    assert selector.select_with_hysteresis("s_mid", MIDBAND, margin=0.1).id == "s_mid"
    # an infeasible current plan (accuracy 95.0) is left at once
    assert selector.select_with_hysteresis("s_lossy", MIDBAND, margin=0.9).id == "s_mid"
    # a current plan over the budget is left at once, whatever the margin
    budgeted = Selector(CANDIDATES, Constraints(98.2, latency_budget_ms=24.0))
    assert budgeted.select_with_hysteresis("s_early", MIDBAND, margin=0.9).id == "s_mid"


def test_offsets_are_added_to_the_plans_they_name():
    selector = Selector(CANDIDATES, DEFAULT)
    plain = selector.latencies_ms(MIDBAND)
    assert plain == {p.id: pytest.approx(plan_latency_ms(p, MIDBAND)) for p in selector.feasible}
    shifted = selector.latencies_ms(MIDBAND, {"s_mid": 10.0, "s_lossy": 5.0})  # s_lossy: infeasible
    assert shifted == {vid: pytest.approx(ms + (10.0 if vid == "s_mid" else 0.0))
                       for vid, ms in plain.items()}
    assert selector.select(MIDBAND).id == "s_mid"
    assert selector.select(MIDBAND, {"s_mid": 10.0}).id == "s_early"  # 29.4 against 25
    assert selector.select(MIDBAND, {"s_mid": 10.0}).latency_ms == pytest.approx(plain["s_early"])
    # hysteresis compares the corrected plans: 19.4 - 4 = 15.4 beats 25 + 0 by more than 30 %
    assert selector.select_with_hysteresis("s_early", MIDBAND, 0.3, {"s_mid": -4.0}).id == "s_mid"
    assert selector.select_with_hysteresis("s_early", MIDBAND, 0.3).id == "s_early"
    with pytest.raises(InvalidConfigError, match=r"offsets_ms\['s_mid'\]: found nan; expected a finite"):
        selector.select(MIDBAND, {"s_mid": float("nan")})


@pytest.mark.parametrize("current, margin, match", [
    ("nope", 0.1, r"current plan 'nope' is not a candidate; known ids: \['edge', 'local'"),
    ("local", 1.0, r"margin must be a fraction in \[0, 1\); got 1.0"),
    ("local", -0.1, r"margin must be a fraction in \[0, 1\); got -0.1"),
])
def test_invalid_hysteresis(current, margin, match):
    with pytest.raises(InvalidConfigError, match=match):
        Selector(CANDIDATES, DEFAULT).select_with_hysteresis(current, MIDBAND, margin=margin)
