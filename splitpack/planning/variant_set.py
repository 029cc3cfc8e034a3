"""Choose, at compile time, the K split variants a bundle carries.

A bundle cannot carry every (cut, codec) cell, so :func:`choose_variant_set` picks the K split
variants that keep the bundle's best plan close to the best plan of all candidates over an
:class:`OperatingRange` of bandwidths and loads; ``local`` and ``edge`` are always bundled. At
run time :class:`splitpack.planning.selector.Selector` then picks one of the bundled variants
per request. numpy and the standard library only.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from splitpack.errors import InvalidConfigError
from splitpack.formats.variants import VariantProfile
from splitpack.planning.latency import (
    ConditionArrays, PowerModel, ProfileArrays, energy_matrix, latency_matrix,
)
from splitpack.planning.selector import Constraints, Selector

__all__ = ["OperatingRange", "VariantSetResult", "choose_variant_set"]

_REGRET_TOLERANCE = 1e-12


def _default_bandwidths() -> tuple[float, ...]:
    return tuple(float(b) for b in np.logspace(np.log10(0.1), np.log10(100.0), 25))


@dataclass(frozen=True)
class OperatingRange:
    """The conditions a bundle must cover: every bandwidth x device load x edge load.

    Attributes:
        bandwidths_mbps: Uplink bandwidths (default 25 log-spaced from 0.1 to 100 Mbit/s).
        device_loads: Device load factors (default 1, 2, 3, 4).
        edge_loads: Edge load factors (default 1, 2, 3, 4).
        downlink_mbps, rtt_ms, device_slowdown, edge_slowdown: Held fixed.
    """

    bandwidths_mbps: tuple[float, ...] = field(default_factory=_default_bandwidths)
    device_loads: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)
    edge_loads: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)
    downlink_mbps: float = 20.0
    rtt_ms: float = 20.0
    device_slowdown: float = 1.0
    edge_slowdown: float = 1.0

    def __post_init__(self) -> None:
        for name in ("bandwidths_mbps", "device_loads", "edge_loads"):
            values = tuple(float(v) for v in np.atleast_1d(getattr(self, name)))
            if not values:
                raise InvalidConfigError(f"OperatingRange.{name} must not be empty")
            object.__setattr__(self, name, values)
        self.condition_arrays()  # validates every value, naming the field

    def condition_arrays(self) -> ConditionArrays:
        """The grid as flat arrays (bandwidth varying slowest)."""
        return ConditionArrays.grid(
            self.bandwidths_mbps, self.device_loads, self.edge_loads,
            downlink_mbps=self.downlink_mbps, rtt_ms=self.rtt_ms,
            device_slowdown=self.device_slowdown, edge_slowdown=self.edge_slowdown)


@dataclass(frozen=True)
class VariantSetResult:
    """Outcome of :func:`choose_variant_set`.

    Attributes:
        variant_ids: Chosen split variants, in the order they were added (at most K).
        always_available_ids: Feasible ``local`` / ``edge`` variants, bundled in addition.
        coverage_regret_mean: Mean over the operating range of
            ``objective(best in bundle) / objective(best candidate overall) - 1``.
        coverage_regret_max: Its maximum over the operating range.
        regret_curve_mean: Mean regret with at most k split variants, for k = 1..K.
        regret_curve_max: Max regret with at most k split variants, for k = 1..K.
        base_regret_mean: Mean regret with ``local`` and ``edge`` only (k = 0).
        base_regret_max: Max regret with ``local`` and ``edge`` only.
        method: ``"greedy"`` or ``"exact"``.
    """

    variant_ids: tuple[str, ...]
    always_available_ids: tuple[str, ...]
    coverage_regret_mean: float
    coverage_regret_max: float
    regret_curve_mean: tuple[float, ...]
    regret_curve_max: tuple[float, ...]
    base_regret_mean: float
    base_regret_max: float
    method: str


def _regret_stats(covered: np.ndarray, best: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and max over conditions (axis 0) of covered / best - 1; 0/0 counts as no regret."""
    best = best.reshape(best.shape + (1,) * (covered.ndim - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        regret = np.where(covered == best, 0.0, covered / best - 1.0)
    return regret.mean(axis=0), regret.max(axis=0)


def _lexmin(means: np.ndarray, maxes: np.ndarray) -> int:
    """Index of the smallest mean, ties (within tolerance) broken by the smallest max."""
    tied = np.flatnonzero(means <= means.min() + _REGRET_TOLERANCE)
    return int(tied[np.argmin(maxes[tied])])


def _improves(new: tuple[float, float], old: tuple[float, float]) -> bool:
    if new[0] < old[0] - _REGRET_TOLERANCE:
        return True
    return new[0] <= old[0] + _REGRET_TOLERANCE and new[1] < old[1] - _REGRET_TOLERANCE


def _greedy(values: np.ndarray, base: np.ndarray, best: np.ndarray, k: int):
    """Add, k times, the column that most lowers (mean, max) regret; stop when none does."""
    m, x = _regret_stats(base, best)
    chosen: list[int] = []
    covered, stats, curve = base, (float(m), float(x)), []
    for _ in range(k):
        remaining = [j for j in range(values.shape[1]) if j not in chosen]
        if remaining:
            trial = np.minimum(covered[:, None], values[:, remaining])
            means, maxes = _regret_stats(trial, best)
            pick = _lexmin(means, maxes)
            if _improves((float(means[pick]), float(maxes[pick])), stats):
                chosen.append(remaining[pick])
                covered, stats = trial[:, pick], (float(means[pick]), float(maxes[pick]))
        curve.append(stats)
    return chosen, curve


def _exact(values: np.ndarray, base: np.ndarray, best: np.ndarray, k: int):
    """Best set of each size 1..k by enumeration; a larger set is kept only if strictly better."""
    m, x = _regret_stats(base, best)
    chosen: list[int] = []
    stats, curve = (float(m), float(x)), []
    for size in range(1, k + 1):
        best_set, best_stats = None, None
        combos = itertools.combinations(range(values.shape[1]), size)
        while chunk := list(itertools.islice(combos, 2048)):
            sets = np.array(chunk)
            covered = np.minimum(base[:, None], values[:, sets].min(axis=2))
            means, maxes = _regret_stats(covered, best)
            pick = _lexmin(means, maxes)
            candidate = (float(means[pick]), float(maxes[pick]))
            if best_stats is None or _improves(candidate, best_stats):
                best_set, best_stats = list(chunk[pick]), candidate
        if best_stats is not None and _improves(best_stats, stats):
            chosen, stats = best_set, best_stats
        curve.append(stats)
    return chosen, curve


def choose_variant_set(candidates: Sequence[VariantProfile], constraints: Constraints,
                       operating_range: OperatingRange | None, k: int, *,
                       power: PowerModel | None = None, method: str = "auto",
                       max_exact_combinations: int = 20_000) -> VariantSetResult:
    """Choose up to K split variants that keep the bundle near the best candidate everywhere.

    ``local`` and ``edge`` are always bundled (the runtime needs ``local`` as a fallback when
    the edge is unreachable, and ``edge`` costs nothing on the device), so they do not count
    towards K. Regret at a condition is ``objective(best in chosen ∪ {local, edge}) /
    objective(best feasible candidate) - 1``; conditions are weighted uniformly over the grid.
    Only candidates meeting the accuracy and memory constraints take part; the latency budget
    is a per-request matter and is not used here.

    Greedy: adding a variant can only lower the regret at each condition, and what it adds
    shrinks as the set grows (a coverage-like, roughly submodular objective), so greedy is
    close to optimal; with K <= 5 and a few hundred candidates it costs K x N x M operations.
    When the sets of size 1..K number at most ``max_exact_combinations``, ``"auto"`` enumerates
    them instead (exact). Either way a variant (or a larger set) is only added if it strictly
    lowers (mean, max) regret, so fewer than K ids come back once the regret cannot drop.

    Args:
        candidates: Every predicted variant profile, ``local`` and ``edge`` included.
        constraints: Accuracy and memory limits and the objective.
        operating_range: Conditions to cover; None for the default :class:`OperatingRange`.
        k: Most split variants to choose (>= 1; the design targets K <= 5).
        power: Device power model, needed for the energy objective.
        method: ``"auto"``, ``"greedy"`` or ``"exact"``.
        max_exact_combinations: Largest enumeration ``"auto"`` and ``"exact"`` accept.

    Returns:
        The chosen ids, coverage regret and the regret curve over k = 1..K.

    Raises:
        InvalidConfigError: Bad ``k``, ``method``, candidates, or an exact search too large.
        InfeasiblePlanError: No candidate meets the accuracy and memory constraints.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidConfigError(f"k must be an integer >= 1; got {k!r}")
    if method not in ("auto", "greedy", "exact"):
        raise InvalidConfigError(f"method must be one of auto, greedy, exact; got {method!r}")
    selector = Selector(candidates, constraints, power)
    feasible = selector.feasible
    profiles = ProfileArrays.from_profiles(feasible)
    if operating_range is None:
        operating_range = OperatingRange()
    conditions = operating_range.condition_arrays()
    if constraints.objective == "energy":
        values = energy_matrix(profiles, conditions, power)  # type: ignore[arg-type]
    else:
        values = latency_matrix(profiles, conditions)
    best = values.min(axis=1)
    split_cols = [i for i, p in enumerate(feasible) if p.kind == "split"]
    base_cols = [i for i, p in enumerate(feasible) if p.kind != "split"]
    base = values[:, base_cols].min(axis=1) if base_cols else np.full(len(best), np.inf)
    split_values = values[:, split_cols]
    n_combinations = sum(math.comb(len(split_cols), s) for s in range(1, k + 1))
    if method == "exact" and n_combinations > max_exact_combinations:
        raise InvalidConfigError(
            f"exact search needs {n_combinations} combinations, over max_exact_combinations="
            f"{max_exact_combinations}; use method='greedy' or raise the limit")
    use_exact = method == "exact" or (method == "auto" and n_combinations <= max_exact_combinations)
    chosen, curve = (_exact if use_exact else _greedy)(split_values, base, best, k)
    base_mean, base_max = _regret_stats(base, best)
    return VariantSetResult(
        variant_ids=tuple(feasible[split_cols[j]].id for j in chosen),
        always_available_ids=tuple(feasible[i].id for i in base_cols),
        coverage_regret_mean=curve[-1][0], coverage_regret_max=curve[-1][1],
        regret_curve_mean=tuple(s[0] for s in curve), regret_curve_max=tuple(s[1] for s in curve),
        base_regret_mean=float(base_mean), base_regret_max=float(base_max),
        method="exact" if use_exact else "greedy")
