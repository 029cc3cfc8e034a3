"""Choose a plan per request, and the variants a bundle should carry.

:class:`Selector` is built once from the bundle's profiles and the constraints (accuracy,
device memory), which fixes the feasible set; :meth:`Selector.select` then ranks the feasible
plans under the current conditions with one (N, 5) x (5,) product (see
:func:`splitpack.predictors.latency.latency_weights`). :func:`choose_variant_set` picks, at
compile time, the K split variants that cover an operating range of bandwidths and loads.
Runs on devices: numpy and the standard library only.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from splitpack.errors import InvalidConfigError
from splitpack.predictors.latency import (
    ConditionArrays, Conditions, PowerModel, ProfileArrays, VariantProfile, energy_matrix,
    energy_weights, latency_matrix, latency_weights)

__all__ = [
    "InfeasiblePlanError",
    "Constraints",
    "Plan",
    "Selector",
    "select",
    "OperatingRange",
    "VariantSetResult",
    "choose_variant_set",
]

OBJECTIVES = ("latency", "energy")
# Accuracies are percent with a few decimals; 98.2 - 1.0 must admit a variant at 97.2.
_ACCURACY_TOLERANCE = 1e-9
_REGRET_TOLERANCE = 1e-12


class InfeasiblePlanError(InvalidConfigError):
    """No candidate meets the constraints; the message names them and the closest plan.

    Attributes:
        closest_id: Id of the candidate closest to meeting the constraints (or, for a latency
            budget, the fastest one), None if unknown.
    """

    def __init__(self, message: str, closest_id: str | None = None) -> None:
        super().__init__(message)
        self.closest_id = closest_id


@dataclass(frozen=True)
class Constraints:
    """What a plan must satisfy, and what to minimize among those that do.

    Attributes:
        baseline_accuracy: Accuracy (percent) of the uncut model.
        max_accuracy_drop: Allowed loss in accuracy points; a plan needs
            ``accuracy >= baseline_accuracy - max_accuracy_drop``.
        device_memory_bytes: Device memory limit, None for no limit.
        latency_budget_ms: Per-request latency limit, None for no limit.
        objective: ``"latency"`` or ``"energy"`` (the latter needs a :class:`PowerModel`).
    """

    baseline_accuracy: float
    max_accuracy_drop: float = 1.0
    device_memory_bytes: int | None = None
    latency_budget_ms: float | None = None
    objective: str = "latency"

    def __post_init__(self) -> None:
        # name, lowest allowed, whether the lowest is excluded, highest allowed, None allowed
        for name, low, open_low, high, optional in (
                ("baseline_accuracy", 0.0, False, 100.0, False),
                ("max_accuracy_drop", 0.0, False, 100.0, False),
                ("device_memory_bytes", 0.0, True, math.inf, True),
                ("latency_budget_ms", 0.0, True, math.inf, True)):
            value = getattr(self, name)
            if optional and value is None:
                continue
            if (isinstance(value, bool) or not isinstance(value, numbers.Real)
                    or not low <= value <= high or (open_low and value == low)):
                allowed = f"{'(' if open_low else '['}{low:g}, {high:g}]" + (" or None" * optional)
                raise InvalidConfigError(f"Constraints.{name} must be in {allowed}; got {value!r}")
        if self.objective not in OBJECTIVES:
            raise InvalidConfigError(f"Constraints.objective must be one of "
                                     f"{', '.join(OBJECTIVES)}; got {self.objective!r}")

    @property
    def min_accuracy(self) -> float:
        """Lowest accuracy a plan may have."""
        return self.baseline_accuracy - self.max_accuracy_drop


@dataclass(frozen=True)
class Plan:
    """The chosen variant under one condition.

    Attributes:
        profile: The variant's profile.
        latency_ms: Its predicted latency.
        energy_mj: Its predicted device energy, None without a power model.
        index: Its position in the candidate list the selector was built from.
    """

    profile: VariantProfile
    latency_ms: float
    energy_mj: float | None
    index: int

    @property
    def id(self) -> str:
        """The variant id."""
        return self.profile.id


def _megabytes(num_bytes: float) -> str:
    return f"{num_bytes / 1e6:.3g} MB"


def _describe_conditions(c: Conditions) -> str:
    return (f"uplink {c.uplink_mbps:g} Mbit/s, rtt {c.rtt_ms:g} ms, device load "
            f"{c.device_load:g} x slowdown {c.device_slowdown:g}, edge load {c.edge_load:g} "
            f"x slowdown {c.edge_slowdown:g}")


def _infeasible_error(candidates: Sequence[VariantProfile], constraints: Constraints,
                      accuracy_ok: np.ndarray, memory_ok: np.ndarray) -> InfeasiblePlanError:
    """Name the unmet constraints and the candidate with the smallest relative violation."""
    wanted = [f"accuracy >= {constraints.min_accuracy:g} (baseline "
              f"{constraints.baseline_accuracy:g} - max drop {constraints.max_accuracy_drop:g})"]
    limit = constraints.device_memory_bytes
    if limit is not None:
        wanted.append(f"device memory <= {_megabytes(limit)}")
    accuracy = np.array([c.accuracy for c in candidates])
    memory = np.array([c.device_memory_bytes for c in candidates], dtype=np.float64)
    # Relative violations add up so that one slightly missed constraint beats two missed ones.
    shortfall = np.maximum(constraints.min_accuracy - accuracy, 0.0)
    violation = shortfall / max(constraints.min_accuracy, 1e-9)
    if limit is not None:
        violation = violation + np.maximum(memory - limit, 0.0) / limit
    closest = candidates[int(violation.argmin())]
    detail = f"accuracy {closest.accuracy:g}"
    if limit is not None:
        detail += f" and device memory {_megabytes(closest.device_memory_bytes)}"
    counts = (f"{int(accuracy_ok.sum())} of {len(candidates)} candidates meet the accuracy "
              f"constraint")
    if limit is not None:
        counts += f", {int(memory_ok.sum())} the memory constraint"
    return InfeasiblePlanError(
        f"no plan meets {' and '.join(wanted)}; closest: variant '{closest.id}' with {detail} "
        f"({counts}). Raise max_accuracy_drop or the memory limit, or add candidates.",
        closest_id=closest.id)


class Selector:
    """Picks the best feasible plan for given conditions; built once per bundle and constraints.

    Args:
        candidates: Every variant profile; must include a ``local`` and an ``edge`` one.
        constraints: Accuracy, memory and latency limits and the objective.
        power: Device power model; required when ``constraints.objective == "energy"``, and
            when given every plan also reports its energy.

    Raises:
        InvalidConfigError: No candidates, duplicate ids, ``local`` or ``edge`` missing, or an
            energy objective without a power model.
        InfeasiblePlanError: No candidate meets the accuracy and memory constraints.
    """

    def __init__(self, candidates: Sequence[VariantProfile], constraints: Constraints,
                 power: PowerModel | None = None) -> None:
        candidates = tuple(candidates)
        for item in candidates:
            if not isinstance(item, VariantProfile):
                raise InvalidConfigError(f"candidates must be VariantProfile objects; got {item!r}")
        ids = [c.id for c in candidates]
        duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
        if duplicates:
            raise InvalidConfigError(f"candidate ids must be unique; repeated: {duplicates}")
        kinds = {c.kind for c in candidates}
        missing = [kind for kind in ("local", "edge") if kind not in kinds]
        if missing:
            raise InvalidConfigError(
                f"candidates lack the {' and '.join(missing)} variant(s), which every bundle has "
                f"(got ids {ids}); add VariantProfile(kind='local') / (kind='edge') profiles")
        if constraints.objective == "energy" and power is None:
            raise InvalidConfigError(
                "objective 'energy' needs a PowerModel: pass power=PowerModel(...)")
        self.candidates = candidates
        self.constraints = constraints
        self.power = power
        accuracy_ok = np.array(
            [c.accuracy >= constraints.min_accuracy - _ACCURACY_TOLERANCE for c in candidates])
        limit = constraints.device_memory_bytes
        memory_ok = np.array([limit is None or c.device_memory_bytes <= limit for c in candidates])
        feasible = np.flatnonzero(accuracy_ok & memory_ok)
        if feasible.size == 0:
            raise _infeasible_error(candidates, constraints, accuracy_ok, memory_ok)
        self._indices = [int(i) for i in feasible]
        self.feasible = tuple(candidates[i] for i in self._indices)
        self._features = np.ascontiguousarray(ProfileArrays.from_profiles(self.feasible).features)
        self._position = {p.id: pos for pos, p in enumerate(self.feasible)}
        self._ids = set(ids)

    def _evaluate(self, conditions: Conditions) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Latency, objective and energy (or None) of every feasible plan."""
        weights = latency_weights(conditions)
        if self.power is None:
            latency = self._features @ weights
            return latency, latency, None
        both = self._features @ np.stack([weights, energy_weights(conditions, self.power)], axis=1)
        latency, energy = both[:, 0], both[:, 1]
        return latency, (energy if self.constraints.objective == "energy" else latency), energy

    def _best(self, latency: np.ndarray, objective: np.ndarray, conditions: Conditions) -> int:
        """Position of the best feasible plan within the latency budget."""
        budget = self.constraints.latency_budget_ms
        best = int(objective.argmin())
        if budget is None or latency[best] <= budget:
            return best
        within = latency <= budget
        if not within.any():
            fastest = int(latency.argmin())
            raise InfeasiblePlanError(
                f"no plan meets latency <= {budget:g} ms at {_describe_conditions(conditions)}; "
                f"best achievable: variant '{self.feasible[fastest].id}' with "
                f"{latency[fastest]:.4g} ms. Raise latency_budget_ms or add faster variants.",
                closest_id=self.feasible[fastest].id)
        return int(np.where(within, objective, np.inf).argmin())

    def _plan(self, pos: int, latency: np.ndarray, energy: np.ndarray | None) -> Plan:
        return Plan(self.feasible[pos], float(latency[pos]),
                    None if energy is None else float(energy[pos]), self._indices[pos])

    def select(self, conditions: Conditions) -> Plan:
        """The feasible plan that minimizes the objective under ``conditions``.

        Args:
            conditions: Current bandwidths, round trip, slowdowns and loads.

        Returns:
            The plan (ties go to the earlier candidate).

        Raises:
            InfeasiblePlanError: A latency budget is set and no feasible plan meets it.
        """
        latency, objective, energy = self._evaluate(conditions)
        return self._plan(self._best(latency, objective, conditions), latency, energy)

    def select_with_hysteresis(self, current_id: str, conditions: Conditions,
                               margin: float = 0.1) -> Plan:
        """Like :meth:`select`, but keep ``current_id`` unless the best is clearly better.

        Switch only if ``objective(best) < (1 - margin) * objective(current)`` under the current
        conditions, so that noise in bandwidth estimates does not make the runtime flap between
        variants. The current plan is left at once if it is infeasible or over the budget.

        Args:
            current_id: Id of the plan in use.
            conditions: Current conditions.
            margin: Fraction in [0, 1) by which the best must beat the current plan.

        Returns:
            The plan to use next.
        """
        if not (0.0 <= margin < 1.0):
            raise InvalidConfigError(f"margin must be a fraction in [0, 1); got {margin!r}")
        if current_id not in self._ids:
            raise InvalidConfigError(
                f"current plan '{current_id}' is not a candidate; known ids: {sorted(self._ids)}")
        latency, objective, energy = self._evaluate(conditions)
        best = self._best(latency, objective, conditions)
        current = self._position.get(current_id)
        budget = self.constraints.latency_budget_ms
        if (current is None or current == best
                or (budget is not None and latency[current] > budget)
                or objective[best] < (1.0 - margin) * objective[current]):
            return self._plan(best, latency, energy)
        return self._plan(current, latency, energy)


def select(candidates: Sequence[VariantProfile], conditions: Conditions, constraints: Constraints,
           power: PowerModel | None = None) -> Plan:
    """One-shot form of :meth:`Selector.select` (builds the selector each call).

    Args:
        candidates: Every variant profile, ``local`` and ``edge`` included.
        conditions: Current conditions.
        constraints: Accuracy, memory and latency limits and the objective.
        power: Device power model, needed for the energy objective.

    Returns:
        The best feasible plan.
    """
    return Selector(candidates, constraints, power).select(conditions)


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
