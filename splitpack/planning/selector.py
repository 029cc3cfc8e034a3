"""Choose a plan per request, and the variants a bundle should carry.

:class:`Selector` is built once from the bundle's profiles and the constraints (accuracy,
device memory), which fixes the feasible set; :meth:`Selector.select` then ranks the feasible
plans under the current conditions with one (N, 5) x (5,) product (see
:func:`splitpack.planning.latency.latency_weights`). Which K split variants a bundle carries
is chosen at compile time by :mod:`splitpack.planning.variant_set`. Runs on devices: numpy and the standard library only.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from splitpack.errors import InvalidConfigError
from splitpack.formats.variants import VariantProfile
from splitpack.planning.latency import (
    Conditions, PowerModel, ProfileArrays, energy_weights, latency_weights,
)

__all__ = [
    "InfeasiblePlanError",
    "Constraints",
    "Plan",
    "Selector",
    "select",
]

OBJECTIVES = ("latency", "energy")
# Accuracies are percent with a few decimals; 98.2 - 1.0 must admit a variant at 97.2.
_ACCURACY_TOLERANCE = 1e-9


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
        self._offsets_cache: tuple = (None, None, None)  # see _offsets_array
        self._remote = [pos for pos, p in enumerate(self.feasible) if p.kind != "local"]
        self._last_latency: np.ndarray | None = None  # of the last select*

    def _offsets_array(self, offsets_ms: Mapping[str, float] | None) -> np.ndarray | None:
        """``offsets_ms`` (variant id -> ms) as an array in feasible order (0 where absent),
        or None for no offsets; ids that are not feasible are ignored."""
        if not offsets_ms:
            return None
        given, copy, values = self._offsets_cache
        if offsets_ms is given and offsets_ms == copy:  # a runtime passes the same dict until
            return values                                 # its offsets change
        values = np.zeros(len(self.feasible))
        for vid, offset in offsets_ms.items():
            pos = self._position.get(vid)
            if pos is not None:
                if not (isinstance(offset, numbers.Real) and math.isfinite(offset)):
                    raise InvalidConfigError(f"offsets_ms[{vid!r}]: found {offset!r}; expected "
                                             "a finite number of milliseconds")
                values[pos] = float(offset)
        self._offsets_cache = (offsets_ms, dict(offsets_ms), values)
        return values

    def _evaluate(self, conditions: Conditions, offsets_ms: Mapping[str, float] | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Latency, objective and energy (or None) of every feasible plan; ``offsets_ms``
        are added to the latencies (and so to a latency objective)."""
        weights = latency_weights(conditions)
        offsets = self._offsets_array(offsets_ms)
        if self.power is None:
            latency = self._features @ weights
            if offsets is not None:
                latency = latency + offsets
            return latency, latency, None
        both = self._features @ np.stack([weights, energy_weights(conditions, self.power)], axis=1)
        latency, energy = both[:, 0], both[:, 1]
        if offsets is not None:
            latency = latency + offsets
        return latency, (energy if self.constraints.objective == "energy" else latency), energy

    def latencies_ms(self, conditions: Conditions,
                     offsets_ms: Mapping[str, float] | None = None) -> dict[str, float]:
        """Planned latency of every feasible plan (id -> ms), offsets included."""
        latency = self._evaluate(conditions, offsets_ms)[0]
        return {p.id: float(value) for p, value in zip(self.feasible, latency)}

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

    def select(self, conditions: Conditions,
               offsets_ms: Mapping[str, float] | None = None) -> Plan:
        """The feasible plan that minimizes the objective under ``conditions``.

        Args:
            conditions: Current bandwidths, round trip, slowdowns and loads.
            offsets_ms: Milliseconds to add to some plans' latency (variant id -> ms): what a
                runtime learned its requests of that variant take beyond the model.

        Returns:
            The plan (ties go to the earlier candidate).

        Raises:
            InfeasiblePlanError: A latency budget is set and no feasible plan meets it.
        """
        latency, objective, energy = self._evaluate(conditions, offsets_ms)
        self._last_latency = latency
        return self._plan(self._best(latency, objective, conditions), latency, energy)

    def last_best_remote(self) -> tuple[VariantProfile, float] | None:
        """The feasible remote (split or edge) plan of least latency in the last
        :meth:`select` or :meth:`select_with_hysteresis`, and that latency (offsets
        included); None before any, or when no remote plan is feasible. What a runtime that
        chose ``local`` would send instead, read without planning again."""
        latency = self._last_latency
        if latency is None or not self._remote:
            return None
        best = min(self._remote, key=latency.__getitem__)
        return self.feasible[best], float(latency[best])

    def select_with_hysteresis(self, current_id: str, conditions: Conditions,
                               margin: float = 0.1,
                               offsets_ms: Mapping[str, float] | None = None) -> Plan:
        """Like :meth:`select`, but keep ``current_id`` unless the best is clearly better.

        Switch only if ``objective(best) < (1 - margin) * objective(current)`` under the current
        conditions, so that noise in bandwidth estimates does not make the runtime flap between
        variants. The current plan is left at once if it is infeasible or over the budget.

        Args:
            current_id: Id of the plan in use.
            conditions: Current conditions.
            margin: Fraction in [0, 1) by which the best must beat the current plan.
            offsets_ms: As for :meth:`select`.

        Returns:
            The plan to use next.
        """
        if not (0.0 <= margin < 1.0):
            raise InvalidConfigError(f"margin must be a fraction in [0, 1); got {margin!r}")
        if current_id not in self._ids:
            raise InvalidConfigError(
                f"current plan '{current_id}' is not a candidate; known ids: {sorted(self._ids)}")
        latency, objective, energy = self._evaluate(conditions, offsets_ms)
        self._last_latency = latency
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
