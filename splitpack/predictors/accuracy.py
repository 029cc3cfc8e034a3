"""Accuracy predictor for (cut, codec) cells, fitted on one source cut and transferred.

Model. Accuracy at a cut stays flat while the codes are large enough, then falls off a cliff;
where the cliff falls is best described by how many bytes of codes are sent, not by the
compression ratio itself. So each cell is described by ``u = log2(code bytes per sample)``,
and the accuracy *drop* (baseline − accuracy, points) is modelled as

    drop(cut j, codec) = g(u + β·(log2 bits − 3) + δ_j)

where ``g`` is fitted on the source cut's samples, β trades bits against bytes (fitted on the
source samples when they vary in bits, else 0), and ``δ_j`` shifts the source curve along u to
cut j. ``g`` is a logistic cliff, A / (1 + exp((u − k) / w)) (least squares), when it fits the
samples, else scikit-learn's ``IsotonicRegression`` (decreasing in u, linear between samples):
both are monotone — more bytes never hurt — and flat on both sides instead of reverting to a
mean. The logistic places the knee between samples from the cliff's own slope, which linear
interpolation cannot; the isotonic fit is the fallback for curves of another shape. (A Gaussian
process was tried first: with six samples it sagged between them and predicted accuracy rising
again past the cliff.)

Transfer. ``δ_j`` is fitted to the target's 0–2 samples by a one-dimensional least-squares
search with a Gaussian prior; the prior mean for a cut is interpolated (by cut depth) from the
shifts already fitted at other cuts, 0 where there are none. When the samples rule the prior
out but still allow a range of shifts (they bracket the cliff), the middle of that range is
taken rather than its edge nearest the prior. Why this and not a residual model
or instance weighting: with one or two target samples a single parameter is all that can be
identified, and the observation the method rests on — curves of one model share their shape —
is exactly "the same g, shifted". A residual model would need samples on both sides of the
cliff; instance weighting still needs the target's cliff to be sampled.

Uncertainty: between two source samples, the fraction of their drop difference not yet pinned
down (largest midway, zero at a sample), plus the shift's: σ² = σ_g² + (∂g/∂u · σ_δ)², with
σ_δ = 1.5 (no target sample), 0.6 (one), 0.35 (two or more) bits of u, plus ∂g/∂u · 0.5 per
octave between the cell's bit width and the nearest one trained; never below 0.3 points.

Saved as JSON (samples, β, shifts), never pickle; loading refits the isotonic curve, which is
deterministic.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from splitpack.errors import InvalidConfigError

__all__ = [
    "PREDICTOR_FORMAT",
    "CellFeatures",
    "Prediction",
    "AccuracyPredictor",
    "fit_predictor",
    "knee_ratio",
]

PREDICTOR_FORMAT = "splitpack-accuracy-predictor/1"
_SHIFT_GRID = np.linspace(-8.0, 8.0, 321)
_SHIFT_SIGMA = {0: 1.5, 1: 0.6}
_SHIFT_SIGMA_MANY = 0.35
_PRIOR_STRENGTH = 0.5  # points² of squared error one prior-σ of shift is worth


@dataclass(frozen=True)
class CellFeatures:
    """What the predictor knows of a cell without training it."""

    cut: str
    cut_position: float
    code_bytes: float
    bits: int
    compression_ratio: float
    codec: str = ""  # identity only (two codecs can send the same bytes at the same bits)

    @property
    def u(self) -> float:
        return math.log2(max(self.code_bytes, 1e-9))

    @staticmethod
    def of_cell(cell: dict) -> "CellFeatures":
        """From a grid cell record (``compiler.grid.Cell`` as a dict)."""
        return CellFeatures(
            cut=cell["cut"],
            cut_position=float(cell["cut_position"]),
            code_bytes=cell["cut_bytes"] / cell["compression_ratio"],
            bits=int(cell["bits"]),
            compression_ratio=float(cell["compression_ratio"]),
            codec=cell["codec"],
        )


@dataclass(frozen=True)
class Prediction:
    accuracy: float
    std: float


_BETA_GRID = np.linspace(-1.5, 1.5, 13)
_MIN_STD = 0.3


class _Logistic:
    def __init__(self, params):
        self.params = params

    def predict(self, u):
        amplitude, knee, width = self.params
        return amplitude / (1.0 + np.exp(np.clip((np.asarray(u, float) - knee) / width, -50, 50)))


def _fit_curve(u: np.ndarray, drop: np.ndarray):
    """The logistic cliff when it fits about as well as the monotone step fit, else the latter."""
    from scipy.optimize import least_squares
    from sklearn.isotonic import IsotonicRegression

    isotonic = IsotonicRegression(increasing=False, out_of_bounds="clip").fit(u, drop)
    if len(u) < 4 or np.max(drop) < 1.0:
        return isotonic
    amplitude = max(float(np.max(drop)), 1.0)
    order = np.argsort(u)
    knee = float(np.interp(amplitude / 2, drop[order][::-1], u[order][::-1]))
    try:
        fit = least_squares(
            lambda p: _Logistic(p).predict(u) - drop,
            x0=[amplitude, knee, 0.7],
            bounds=([0.5, float(np.min(u)) - 6, 0.1], [100.0, float(np.max(u)) + 6, 8.0]),
        )
    except ValueError:
        return isotonic
    logistic = _Logistic([float(v) for v in fit.x])
    logistic_rmse = float(np.sqrt(np.mean((logistic.predict(u) - drop) ** 2)))
    isotonic_rmse = float(np.sqrt(np.mean((isotonic.predict(u) - drop) ** 2)))
    return logistic if fit.success and logistic_rmse <= 2 * isotonic_rmse + 1.0 else isotonic


def _fit_beta(points: np.ndarray) -> float:
    """β minimizing the isotonic fit's error; 0 when the samples do not vary in bits."""
    if len(set(points[:, 1])) < 2:
        return 0.0
    errors = []
    for beta in _BETA_GRID:
        u = points[:, 0] + beta * (np.log2(points[:, 1]) - 3)
        errors.append(float(np.sum((_fit_curve(u, points[:, 2]).predict(u) - points[:, 2]) ** 2)) + 0.1 * beta**2)
    return float(_BETA_GRID[int(np.argmin(errors))])


@dataclass
class AccuracyPredictor:
    """Predicts accuracy for every (cut, codec) cell from a few trained ones.

    Build it with ``fit_predictor``; ``predict`` answers for any cell; ``save``/``load`` use JSON.
    """

    baseline_accuracy: float
    source_cut: str
    source_points: list[tuple[float, int, float]]  # (u, bits, drop)
    beta: float
    target_points: dict[str, list[tuple[float, int, float]]] = field(default_factory=dict)
    cut_positions: dict[str, float] = field(default_factory=dict)
    shifts: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        points = np.asarray(self.source_points, dtype=float).reshape(-1, 3)
        self._u = points[:, 0] + self.beta * (np.log2(points[:, 1]) - 3)
        self._drop = points[:, 2]
        self._curve = _fit_curve(self._u, self._drop)
        order = np.argsort(self._u)
        self._u_sorted, self._fit_sorted = self._u[order], self._curve.predict(self._u[order])

    # -- the source curve -------------------------------------------------------------------
    def _effective_u(self, u, bits) -> np.ndarray:
        return np.asarray(u, float) + self.beta * (np.log2(np.asarray(bits, float)) - 3)

    def _g(self, u: np.ndarray, bits: np.ndarray, return_std: bool = False):
        effective = self._effective_u(u, bits)
        drop = self._curve.predict(effective)
        if not return_std:
            return drop
        # between neighbouring samples, the part of their difference not yet pinned down
        right = np.clip(np.searchsorted(self._u_sorted, effective), 1, len(self._u_sorted) - 1)
        left = right - 1
        u0, u1 = self._u_sorted[left], self._u_sorted[right]
        d0, d1 = self._fit_sorted[left], self._fit_sorted[right]
        span = np.maximum(u1 - u0, 1e-9)
        closeness = np.clip(np.minimum(effective - u0, u1 - effective) / span, 0.0, 0.5) * 2
        return drop, np.abs(d1 - d0) * 0.5 * closeness

    # -- shifts -----------------------------------------------------------------------------
    def shift_of(self, cut: str, position: float | None = None) -> tuple[float, float]:
        """(δ, σ_δ) for a cut: fitted where it has samples, interpolated by depth elsewhere."""
        samples = len(self.target_points.get(cut, []))
        if cut == self.source_cut:
            return 0.0, 0.0
        if cut in self.shifts:
            return self.shifts[cut], _SHIFT_SIGMA.get(samples, _SHIFT_SIGMA_MANY)
        return self._prior_shift(position if position is not None else self.cut_positions.get(cut, 0.5)), _SHIFT_SIGMA[0]

    def _prior_shift(self, position: float) -> float:
        known = sorted((self.cut_positions[c], d) for c, d in self.shifts.items() if c in self.cut_positions)
        known.append((self.cut_positions.get(self.source_cut, 0.5), 0.0))
        known.sort()
        xs, ys = [k[0] for k in known], [k[1] for k in known]
        return float(np.interp(position, xs, ys))

    def add_target_samples(self, cut: str, position: float, samples: list[tuple[float, int, float]]) -> None:
        """Record a target cut's trained cells ((u, bits, drop) each) and refit its shift."""
        self.cut_positions[cut] = position
        self.target_points.setdefault(cut, []).extend(samples)
        points = np.asarray(self.target_points[cut], dtype=float)
        prior = self._prior_shift(position)
        errors = np.array(
            [np.sum((self._g(points[:, 0] + d, points[:, 1]) - points[:, 2]) ** 2) for d in _SHIFT_GRID]
        )
        # every shift that fits the samples within about a point each: when the samples only
        # bracket the cliff (one on the floor, one on the flat part), many do
        fits = _SHIFT_GRID[errors <= errors.min() + len(points)]
        if fits.min() <= prior <= fits.max():
            penalty = _PRIOR_STRENGTH * ((_SHIFT_GRID - prior) / _SHIFT_SIGMA[0]) ** 2
            self.shifts[cut] = float(_SHIFT_GRID[int(np.argmin(errors + penalty))])
        else:  # the prior is ruled out: the middle of what the samples allow, not its nearest edge
            self.shifts[cut] = float((fits.min() + fits.max()) / 2)

    def observe(self, cell: CellFeatures, accuracy: float) -> "AccuracyPredictor":
        """A predictor that also knows ``cell`` measured ``accuracy`` (e.g. a final training):
        refit the source curve when the cell is at the source cut, else the cut's shift."""
        point = (cell.u, cell.bits, self.baseline_accuracy - accuracy)
        if cell.cut == self.source_cut:
            updated = fit_predictor(self.baseline_accuracy, self.source_cut, cell.cut_position,
                                    list(self.source_points) + [point])
            updated.target_points, updated.cut_positions, updated.shifts = (
                dict(self.target_points), dict(self.cut_positions), dict(self.shifts))
            return updated
        self.add_target_samples(cell.cut, cell.cut_position, [point])
        return self

    # -- predictions ------------------------------------------------------------------------
    def predict(self, cells: list[CellFeatures]) -> list[Prediction]:
        """Predicted accuracy (percent) and its standard deviation for each cell."""
        if not cells:
            return []
        u = np.array([c.u for c in cells])
        bits = np.array([c.bits for c in cells], dtype=float)
        shift = np.array([self.shift_of(c.cut, c.cut_position) for c in cells])
        shifted = u + shift[:, 0]
        drop, std = self._g(shifted, bits, return_std=True)
        slope = (self._g(shifted + 0.5, bits) - self._g(shifted - 0.5, bits)) / 1.0
        # bit widths no trained cell had: their trade against bytes is a guess (±0.5 u per octave)
        seen = np.log2(sorted({p[1] for p in self.source_points} | {p[1] for v in self.target_points.values() for p in v}))
        octaves = np.min(np.abs(np.log2(bits)[:, None] - seen[None, :]), axis=1)
        total_std = np.maximum(np.sqrt(std**2 + (slope * shift[:, 1]) ** 2 + (slope * 0.5 * octaves) ** 2), _MIN_STD)
        accuracy = np.clip(self.baseline_accuracy - drop, 0.0, 100.0)
        return [Prediction(float(a), float(s)) for a, s in zip(accuracy, total_std)]

    # -- persistence ------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({
            "format": PREDICTOR_FORMAT,
            "baseline_accuracy": self.baseline_accuracy,
            "source_cut": self.source_cut,
            "source_points": self.source_points,
            "beta": self.beta,
            "target_points": self.target_points,
            "cut_positions": self.cut_positions,
            "shifts": self.shifts,
        }, indent=1)

    @staticmethod
    def from_json(text: str) -> "AccuracyPredictor":
        """Load a predictor saved by ``to_json``.

        Raises:
            InvalidConfigError: another format or version, or missing fields.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidConfigError(f"predictor JSON is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != PREDICTOR_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise InvalidConfigError(
                f"predictor JSON has format {found!r}; this splitpack reads {PREDICTOR_FORMAT!r}. "
                "Refit the predictor (splitpack compile or bench predictor) with this version."
            )
        expected = {"format", "baseline_accuracy", "source_cut", "source_points", "beta", "target_points",
                    "cut_positions", "shifts"}
        if set(data) != expected:
            raise InvalidConfigError(
                f"predictor JSON keys {sorted(set(data) ^ expected)} are unexpected or missing; expected {sorted(expected)}"
            )
        data.pop("format")
        data["source_points"] = [tuple(p) for p in data["source_points"]]
        data["target_points"] = {k: [tuple(p) for p in v] for k, v in data["target_points"].items()}
        return AccuracyPredictor(**data)


def fit_predictor(baseline_accuracy: float, source_cut: str, source_position: float,
                  source_samples: list[tuple[float, int, float]]) -> AccuracyPredictor:
    """Fit the source curve on ``source_samples`` ((u, bits, accuracy drop) each).

    Raises:
        InvalidConfigError: fewer than 3 source samples (a knee cannot be placed).
    """
    if len(source_samples) < 3:
        raise InvalidConfigError(
            f"the accuracy predictor needs at least 3 trained cells at the source cut {source_cut!r}; "
            f"got {len(source_samples)}: raise the budget"
        )
    points = np.asarray(source_samples, dtype=float)
    return AccuracyPredictor(
        baseline_accuracy=float(baseline_accuracy),
        source_cut=source_cut,
        source_points=[(float(u), int(b), float(d)) for u, b, d in source_samples],
        beta=_fit_beta(points),
        cut_positions={source_cut: float(source_position)},
    )


def knee_ratio(ratios: list[float], accuracies: list[float], baseline: float, tolerance: float = 1.0) -> float:
    """The largest ratio whose accuracy drop stays within ``tolerance`` (points); the smallest
    ratio when none does."""
    within = [r for r, a in zip(ratios, accuracies) if baseline - a <= tolerance]
    return max(within) if within else min(ratios)
