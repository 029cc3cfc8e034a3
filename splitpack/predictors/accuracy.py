"""Accuracy predictor for (cut, codec) cells: one model of every cut of a network, fitted on a
few trained cells (and, if asked, free signals), transferred across cuts through shared
parameters.

What the grids show (``benchmarks/results/cifar_*_ground_truth.json``, ``*_grid.json``):

* At every cut accuracy stays at the baseline while enough is sent, then falls to a floor; the
  floor is the cut's own (on the CIFAR ResNet-20, 18 % at ``layer1.0`` and 77 % at
  ``layer3.2``, for the same 1-bit, 4-channel, stride-4 code).
* *What* is dropped matters, not only how many bytes remain: halving the channels costs about as
  much as doubling the stride, though the stride removes four times the bytes (``c8s2b8`` at
  128× beats ``c4s1b8`` at 64× at every ResNet stage-3 cut), and bits cost least of all.
* What a stride costs depends on depth: at the ResNet-20's stem one channel of 16 at stride 1
  keeps 79.6 % (of 86.5) and stride 4 of it 24.8 %; at ``layer3.2`` (4 channels of 64) 81.8 %
  and 83.4 %.
* A cut's calibrated quantization (``q2``, ``q1``: no training, one evaluation each) already
  tells how sensitive it is: the cuts whose ``q1`` loses 12–14 points are the ones where
  learned 1-bit codes lose 2–3 points and projections collapse first.

Model. For a learned cell at cut j keeping the fraction f of the channels at stride s and b bits,

    accuracy = F + (A − F) · σ(z),   z = a_j + k_j · (α_f·log2 f − α_s·e^(ρ0 + ρ1·(p_j − ½))·log2 s − β(b))

with A the baseline, p_j the cut's depth (0 to 1), F = (φ0 + φ1·(p_j − ½))·A the floor (a
fraction of the baseline with a trend over depth, clipped to 0–95 %) and β(b) the bits' cost,
α_b·2^(1−b) for a projection (fewer channels or a stride) and α_full·2^(1−b) for a code that
keeps every channel (the log2(bits) point of what was tried, below); a calibrated cell
``q{b}`` at the same cut has z = a_j + k_j · (−α_q·2^(1−b) − γ). The slopes α_f, α_s, the bits'
slopes, α_q, γ, the stride's depth trend ρ0, ρ1 and the floor's φ0, φ1 (``floor``,
``floor1``) are shared by every cut: that is the transfer. Each cut has an offset a_j (where
its cliff is) and a steepness k_j (how fast it falls: the late ResNet cuts lose 10 points over
the whole ladder, the early ones 65), both with hierarchical priors, linear trends over cut
depth whose coefficients are fitted too, so that one or two trained cells place a cut and a cut
with none is predicted from its depth. One more prior holds at every cut of every grid
measured: every channel at 8 bits and stride 1 keeps the baseline (± 0.5 points). All of it is one
maximum-a-posteriori least-squares fit (SciPy's ``least_squares`` from a few starting points,
residuals in accuracy points, each prior as residuals of one point per standard deviation).
Cells that were measured are answered with their measurement.

Uncertainty: the spread of z, σ_z² = 1.5² / (2 + n) + (0.5 · d)², with n the cut's trained
cells and d the distance (log2 steps of channels, stride and bits) from the cell to the nearest
of them or to the lossless anchor, turned into points as half the accuracy range over z ± σ_z
(unlike the derivative, this does not vanish on the flat part next to a cliff), plus 0.5 points
of test-set noise, times a scale fitted by leave-one-out over the trained cells so that about
two thirds of the held-out errors fall inside ±1σ (1 until five cells are trained).

What was tried and dropped:

* One curve of the code bytes, fitted at a source cut and shifted along the bytes axis per
  target cut (this module's first version). On the ResNet-20
  ground truth it was off by 7.2 points on average: bytes do not order cells (channels vs
  stride), and one cut's floor is not another's.
* A Gaussian process over (bytes, bits, depth), the ``random`` baseline of ``bench
  predictor``: with 16–30 cells it reverts to the mean between cuts.
* A five-parameter logistic per cut, no sharing: it fits all 12 measured cells of a ResNet cut
  to 1.1 points on average (in sample), which is the floor of this family; with two cells per
  cut it cannot be identified, hence the shared slopes.
* A floor per cut instead of a steepness per cut: with one cell below the cliff the floor and
  the offset trade off, and the fit put the floor at that cell (in an earlier state of this
  model, 20 trained cells and ``q1``/``q2`` at every cut, 12.2 points mean error on the
  ResNet-20 ground truth against 4.7 with the steepness).
* log2(bits) as the bits feature: the grids lose little from 8 to 2 bits and most from 2 to
  1; the quantization noise 2^(1 − b) says so, and one bits slope for projections and another
  for codes that keep every channel (whose 1-bit codes lose 1–3 points where projections'
  bits hardly matter): at the time, on the ResNet-20 ground truth with 20 trained cells, the
  noise feature took the plan's worst accuracy loss from 13 points to 3.1, the second slope
  to 0.
* Tying a cut's offset to its calibrated ``q1``/``q2`` through one shared γ: see
  ``predictors.sampling`` (why the free signals are off by default).
* One stride slope for every depth (this model until ``splitpack-accuracy-predictor/3``),
  against the depth trend ρ0 + ρ1·(p − ½) of its log kept now. Fitted on every learned cell
  of a grid (in sample), mean error ResNet-20 / MobileNetV2 / digits / scenes: 2.43 / 1.40 /
  0.55 / 0.55 points without the trend, 1.50 / 1.12 / 0.51 / 0.46 with it; on the replays
  (``bench predictor``, 20 cells and 480 s, scenes 8 cells) 4.48 / 3.33 / 0.73 / 2.59 without
  and 4.00 / 2.97 / 0.86 / 3.01 with it: the CIFAR models' errors fall, the small grids' rise
  by 0.1 (digits) and 0.4 (scenes: one cell, the stem's ``c2s4b8``, 44 % predicted at 24 %
  against 28 % before).
* One floor for every depth (until ``/4``), against φ1 (prior sd 0.3) now: in sample 1.50 /
  1.12 / 0.51 / 0.46 without and 1.44 / 1.11 / 0.51 / 0.46 with it, replays 4.00 / 2.97 / 0.86
  / 3.01 without and 3.36 / 2.99 / 0.86 / 3.16 with it (sd 0.1: 3.91 / 2.97 / 0.86 / 3.05; 0.5:
  3.26 / 3.03 / 0.86 / 3.20). The trend's two parameters are what a floor per cut (above) could
  not be: placed by the probes at every depth, without trading off against one cut's offset.
* The same with the stride as s − 1 instead of log2 s (convex in s, as the early cuts are):
  in sample 1.35 / 0.89 / 0.51 / 0.46, replays 3.79 / 3.38 / 0.79 / 3.02; and a stride factor
  per cut, e^ρ_j, about that trend (prior sd 0.5): in sample 1.12 / 0.65 / 0.49 / 0.37, but
  replays 3.84 / 3.41 / 0.78 / 3.06, since the samples rarely hold a cut's stride and channel
  costs apart. Fixed designs of two cells a cut (the most compressed and the fewest channels
  at stride 1, 8 bits) with s − 1 and the per-cut factor: 2.08 (ResNet-20) and 1.39
  (MobileNetV2), but that design trains for 332 s and 1,042 s, the MobileNetV2's beyond the
  compile's 480 s; with the sampler's probes made that pair, the replays read 3.49 / 3.62 /
  1.48 / 6.52.

Saved as JSON (observations, fitted parameters and scale), never pickle.
"""

from __future__ import annotations

import json
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

PREDICTOR_FORMAT = "splitpack-accuracy-predictor/4"

_SHARED = ("alpha_f", "alpha_s", "alpha_b", "alpha_full", "gamma", "alpha_q", "offset0", "offset1", "steep0", "steep1",
           "floor", "rho0", "rho1", "floor1")
# (prior mean, prior standard deviation, lower bound, upper bound). The slopes' means are the
# bytes model (each halving of the codes costs the same), which the data then overrides; the
# floor is a fraction of the baseline (at mid-depth; floor1 its trend), rho0/rho1 the stride
# cost's log trend over depth.
_PRIORS = {
    "alpha_f": (1.2, 1.0, 0.05, 10.0),
    "alpha_s": (1.2, 1.0, 0.0, 10.0),
    "alpha_b": (3.0, 2.0, 0.0, 20.0),
    "alpha_full": (3.0, 2.0, 0.0, 20.0),
    "gamma": (2.0, 2.0, -5.0, 20.0),
    "alpha_q": (4.0, 2.0, 0.0, 20.0),
    "offset0": (6.0, 3.0, -10.0, 20.0),
    "offset1": (0.0, 3.0, -20.0, 20.0),
    "steep0": (0.0, 1.0, -4.0, 3.0),
    "steep1": (0.0, 1.0, -5.0, 5.0),
    "floor": (0.15, 0.1, 0.0, 0.9),
    "rho0": (0.0, 1.0, -4.0, 4.0),
    "rho1": (0.0, 2.0, -8.0, 8.0),
    "floor1": (0.0, 0.3, -0.9, 0.9),
}
_OFFSET_SIGMA = 1.5  # a cut's offset about the depth trend
_STEEP_SIGMA = 0.5  # a cut's log steepness about the depth trend
_DISTANCE_SIGMA = 0.5  # spread of z per log2 step (channels, stride, bits) away from what was measured
_STEP_POINTS = 0.4  # spread in points per log2 step away from what was measured
_DATA_SIGMA = 1.0  # points: one data residual
_ANCHOR_SIGMA = 0.5  # points: every channel at 8 bits and stride 1 keeps the baseline
_NOISE = 0.5  # points: the test-set noise of one measurement
_MEASURED_STD = 0.3


@dataclass(frozen=True)
class CellFeatures:
    """What the predictor knows of a cell without training it.

    ``channel_fraction`` and ``stride`` describe a projection; without them (``None``) the
    compression is taken to be all channels: f = 32 / (bits · ratio), capped at 1."""

    cut: str
    cut_position: float
    code_bytes: float
    bits: int
    compression_ratio: float
    codec: str = ""  # identity (two codecs can send the same bytes at the same bits)
    channel_fraction: float | None = None
    stride: int = 1
    calibrated: bool = False

    @property
    def fraction(self) -> float:
        if self.channel_fraction is not None:
            return float(self.channel_fraction)
        return min(1.0, 32.0 / (self.bits * self.compression_ratio))

    @staticmethod
    def of_cell(cell: dict) -> "CellFeatures":
        """From a grid cell record (``compiler.grid.Cell`` as a dict)."""
        calibrated = cell.get("method") == "calibrated"
        return CellFeatures(
            cut=cell["cut"],
            cut_position=float(cell["cut_position"]),
            code_bytes=cell["cut_bytes"] / cell["compression_ratio"],
            bits=int(cell["bits"]),
            compression_ratio=float(cell["compression_ratio"]),
            codec=cell["codec"],
            channel_fraction=1.0 if calibrated else cell.get("channel_fraction"),
            stride=int(cell.get("stride", 1) or 1),
            calibrated=calibrated,
        )


@dataclass(frozen=True)
class Prediction:
    accuracy: float
    std: float


def _observation(cell: CellFeatures, accuracy: float) -> dict:
    return {"cut": cell.cut, "position": float(cell.cut_position), "codec": cell.codec,
            "f": cell.fraction, "s": int(cell.stride), "bits": int(cell.bits), "calibrated": bool(cell.calibrated),
            "accuracy": float(accuracy)}


class _Design:
    """Observations (or cells) as arrays over one list of cuts."""

    def __init__(self, rows: list[dict], cuts: list[str]):
        self.cut = np.array([cuts.index(r["cut"]) for r in rows], dtype=int)
        self.position = np.array([r["position"] for r in rows], dtype=float)
        self.log_f = np.log2(np.array([r["f"] for r in rows], dtype=float))
        self.log_s = np.log2(np.array([r["s"] for r in rows], dtype=float))
        self.log_b = np.log2(np.array([r["bits"] for r in rows], dtype=float))
        self.noise_b = _bits_noise(np.array([r["bits"] for r in rows], dtype=float))
        self.calibrated = np.array([r["calibrated"] for r in rows], dtype=bool)


def _bits_noise(bits):
    """Quantization noise relative to one bit's, 2^(1 − b): 1 at 1 bit, 1/128 at 8 bits. The
    grids lose little from 8 to 2 bits and most from 2 to 1, which log2(b) cannot say."""
    return np.power(2.0, 1.0 - np.asarray(bits, dtype=float))


def _z(shared: dict, offsets: np.ndarray, steeps: np.ndarray, design: _Design) -> np.ndarray:
    k = np.exp(steeps[design.cut])
    projected = (design.log_f < 0) | (design.log_s > 0)
    bits = np.where(projected, shared["alpha_b"], shared["alpha_full"]) * design.noise_b
    # the stride's cost scales with depth (the module docstring): α_s · e^(ρ0 + ρ1 · (p − ½))
    alpha_s = shared["alpha_s"] * np.exp(shared["rho0"] + shared["rho1"] * (design.position - 0.5))
    learned = shared["alpha_f"] * design.log_f - alpha_s * design.log_s - bits
    calibrated = -shared["alpha_q"] * design.noise_b - shared["gamma"]
    return offsets[design.cut] + k * np.where(design.calibrated, calibrated, learned)


def _floor(shared: dict, design: _Design, baseline: float) -> np.ndarray:
    """Each row's floor in points: a fraction of the baseline with a trend over depth."""
    return np.clip(shared["floor"] + shared["floor1"] * (design.position - 0.5), 0.0, 0.95) * baseline


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def _fit(baseline: float, observations: list[dict], positions: dict[str, float], start: dict | None = None) -> dict:
    """The MAP parameters: shared ones and an offset and steepness per cut with observations."""
    from scipy.optimize import least_squares

    cuts = sorted({o["cut"] for o in observations}, key=lambda c: positions[c])
    n, m = len(cuts), len(_SHARED)
    design = _Design(observations, cuts)
    # every channel at 8 bits and stride 1, at each cut: the lossless anchor
    anchors = _Design([{"cut": c, "position": positions[c], "f": 1.0, "s": 1, "bits": 8, "calibrated": False}
                       for c in cuts], cuts)
    accuracy = np.array([o["accuracy"] for o in observations], dtype=float)
    position = np.array([positions[c] for c in cuts], dtype=float)
    means = np.array([_PRIORS[k][0] for k in _SHARED])
    sigmas = np.array([_PRIORS[k][1] for k in _SHARED])
    lower = np.r_[[_PRIORS[k][2] for k in _SHARED], np.full(n, -15.0), np.full(n, -4.0)]
    upper = np.r_[[_PRIORS[k][3] for k in _SHARED], np.full(n, 25.0), np.full(n, 3.0)]

    def unpack(p):
        return dict(zip(_SHARED, p[:m])), p[m: m + n], p[m + n:]

    def residuals(p):
        shared, offsets, steeps = unpack(p)
        floor = _floor(shared, design, baseline)
        predicted = floor + (baseline - floor) * _sigmoid(_z(shared, offsets, steeps, design))
        floor_a = _floor(shared, anchors, baseline)
        lossless = floor_a + (baseline - floor_a) * _sigmoid(_z(shared, offsets, steeps, anchors))
        return np.r_[
            (predicted - accuracy) / _DATA_SIGMA,
            (lossless - baseline) / _ANCHOR_SIGMA,
            (p[:m] - means) / sigmas,
            (offsets - shared["offset0"] - shared["offset1"] * position) / _OFFSET_SIGMA,
            (steeps - shared["steep0"] - shared["steep1"] * position) / _STEEP_SIGMA,
        ]

    starts = [np.r_[means, np.full(n, means[_SHARED.index("offset0")]), np.full(n, means[_SHARED.index("steep0")])]]
    if start and set(start.get("cuts", {})) == set(cuts):
        starts.append(np.r_[[start["shared"][k] for k in _SHARED], [start["cuts"][c][0] for c in cuts],
                            [start["cuts"][c][1] for c in cuts]])
    for steep in (-1.0, 1.0):  # shallow and steep cliffs: the fit has more than one basin
        starts.append(np.r_[means, np.full(n, means[_SHARED.index("offset0")]), np.full(n, steep)])
    result = None
    for x0 in starts:
        fit = least_squares(residuals, np.clip(x0, lower + 1e-9, upper - 1e-9), bounds=(lower, upper),
                            x_scale="jac", max_nfev=2000)
        if result is None or fit.cost < result.cost:
            result = fit
    shared, offsets, steeps = unpack(result.x)
    return {"shared": {k: float(v) for k, v in shared.items()},
            "cuts": {c: (float(o), float(k)) for c, o, k in zip(cuts, offsets, steeps)}}


@dataclass
class AccuracyPredictor:
    """Predicts accuracy for every (cut, codec) cell from a few measured ones.

    Build it with ``fit_predictor``; ``predict`` answers for any cell; ``observe`` adds a
    measurement; ``save``/``load`` use JSON."""

    baseline_accuracy: float
    observations: list[dict] = field(default_factory=list)
    positions: dict[str, float] = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    scale: float = 1.0

    # -- fitting ----------------------------------------------------------------------------
    def refit(self, *, calibrate: bool = True) -> "AccuracyPredictor":
        """Fit the parameters to the observations (and the σ scale, by leave-one-out)."""
        if not self.observations:
            self.params = {"shared": {k: _PRIORS[k][0] for k in _SHARED}, "cuts": {}}
            self.scale = 1.0
            return self
        self.params = _fit(self.baseline_accuracy, self.observations, self.positions, self.params or None)
        if calibrate:
            self.scale = self._loo_scale()
        return self

    def _loo_scale(self) -> float:
        learned = [i for i, o in enumerate(self.observations) if not o["calibrated"]]
        if len(learned) < 5:
            return 1.0
        ratios = []
        for i in learned:
            rest = self.observations[:i] + self.observations[i + 1:]
            held = AccuracyPredictor(self.baseline_accuracy, rest, self.positions,
                                     _fit(self.baseline_accuracy, rest, self.positions, self.params))
            mean, std = held._model([self.observations[i]])
            ratios.append(abs(self.observations[i]["accuracy"] - mean[0]) / std[0])
        return float(np.clip(np.quantile(ratios, 0.683), 0.5, 5.0))

    # -- the model --------------------------------------------------------------------------
    def _cut_params(self, rows: list[dict]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        shared = self.params["shared"]
        cuts = list(dict.fromkeys(r["cut"] for r in rows))
        offsets, steeps = [], []
        for cut in cuts:
            if cut in self.params["cuts"]:
                offset, steep = self.params["cuts"][cut]
            else:  # no observation at this cut: the depth trends
                position = next(r["position"] for r in rows if r["cut"] == cut)
                offset = shared["offset0"] + shared["offset1"] * position
                steep = float(np.clip(shared["steep0"] + shared["steep1"] * position, -4.0, 3.0))
            offsets.append(offset)
            steeps.append(steep)
        return np.array(offsets), np.array(steeps), cuts

    def _model(self, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        offsets, steeps, cuts = self._cut_params(rows)
        design = _Design(rows, cuts)
        z = _z(self.params["shared"], offsets, steeps, design)
        s = _sigmoid(z)
        floor = _floor(self.params["shared"], design, self.baseline_accuracy)
        span = self.baseline_accuracy - floor
        mean = floor + span * s
        # the spread of z: the offset's, shrinking with the cut's trained cells (and the
        # lossless anchor), and the slopes', growing with the distance from the cell to the
        # nearest of them, in channels, stride and bits (log2 steps; independent of the fit)
        features = np.stack([design.log_f, design.log_s, design.log_b], axis=1)
        nearest = np.abs(features - np.array([0.0, 0.0, 3.0])).sum(axis=1)
        n = np.zeros(len(rows))
        learned = [o for o in self.observations if not o["calibrated"] and o["cut"] in cuts]
        if learned:
            seen = _Design(learned, cuts)
            seen_features = np.stack([seen.log_f, seen.log_s, seen.log_b], axis=1)
            for j in range(len(cuts)):
                mine, rows_j = seen_features[seen.cut == j], design.cut == j
                if len(mine):
                    distance = np.abs(features[rows_j, None, :] - mine[None, :, :]).sum(axis=2).min(axis=1)
                    nearest[rows_j] = np.minimum(nearest[rows_j], distance)
                    n[rows_j] = len(mine)
        sigma_z = np.sqrt(_OFFSET_SIGMA**2 / (2 + n) + (_DISTANCE_SIGMA * nearest) ** 2)
        # half the range of accuracy over z ± σ_z: unlike the derivative, this does not vanish
        # on the flat parts of the curve next to a cliff that may be closer than predicted
        swing = span * (_sigmoid(z + sigma_z) - _sigmoid(z - sigma_z)) / 2
        # and, in points, a step's worth per log2 step from what was measured: near the top of
        # the curve z saturates and says nothing of the point or two a cell may lose
        std = np.sqrt(swing**2 + _NOISE**2 + (_STEP_POINTS * nearest) ** 2) * self.scale
        return mean, np.maximum(std, _MEASURED_STD)

    # -- use --------------------------------------------------------------------------------
    def observe(self, cell: CellFeatures, accuracy: float, *, refit: bool = True) -> "AccuracyPredictor":
        """Record that ``cell`` measured ``accuracy`` (a repeated cell: the latest counts) and refit."""
        record = _observation(cell, accuracy)
        self.observations = [o for o in self.observations if (o["cut"], o["codec"], o["calibrated"]) !=
                             (record["cut"], record["codec"], record["calibrated"])] + [record]
        self.positions[cell.cut] = float(cell.cut_position)
        return self.refit() if refit else self

    def predict(self, cells: list[CellFeatures]) -> list[Prediction]:
        """Predicted accuracy (percent) and its standard deviation for each cell; a measured
        cell is answered with its measurement."""
        if not cells:
            return []
        if not self.params:
            self.refit()
        rows = [_observation(c, 0.0) for c in cells]
        mean, std = self._model(rows)
        measured = {(o["cut"], o["codec"], o["calibrated"]): o["accuracy"] for o in self.observations}
        result = []
        for row, m, s in zip(rows, mean, std):
            key = (row["cut"], row["codec"], row["calibrated"])
            if row["codec"] and key in measured:
                result.append(Prediction(measured[key], _MEASURED_STD))
            else:
                result.append(Prediction(float(np.clip(m, 0.0, 100.0)), float(s)))
        return result

    # -- persistence ------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({
            "format": PREDICTOR_FORMAT,
            "baseline_accuracy": self.baseline_accuracy,
            "observations": self.observations,
            "positions": self.positions,
            "params": self.params,
            "scale": self.scale,
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
        expected = {"format", "baseline_accuracy", "observations", "positions", "params", "scale"}
        if set(data) != expected:
            raise InvalidConfigError(
                f"predictor JSON keys {sorted(set(data) ^ expected)} are unexpected or missing; expected {sorted(expected)}"
            )
        params = data["params"]
        shared = params.get("shared") if isinstance(params, dict) else None
        cuts = params.get("cuts") if isinstance(params, dict) else None
        if params and (not isinstance(shared, dict) or set(shared) != set(_SHARED) or not isinstance(cuts, dict)
                       or any(not isinstance(v, list) or len(v) != 2 for v in cuts.values())):
            found = sorted(shared) if isinstance(shared, dict) else shared
            raise InvalidConfigError(
                f"predictor JSON params: shared parameters {found!r} and cuts of (offset, steepness) pairs "
                f"expected, the shared ones exactly {sorted(_SHARED)}; refit the predictor with this version")
        data.pop("format")
        if params:
            params["cuts"] = {k: tuple(v) for k, v in cuts.items()}
        return AccuracyPredictor(**data)


def fit_predictor(baseline_accuracy: float, measured: list[tuple[CellFeatures, float]]) -> AccuracyPredictor:
    """A predictor fitted to ``measured`` ((cell, accuracy) pairs; none gives the priors).

    Raises:
        InvalidConfigError: a baseline outside (0, 100].
    """
    if not 0 < baseline_accuracy <= 100:
        raise InvalidConfigError(f"baseline accuracy {baseline_accuracy} is outside (0, 100] percent")
    predictor = AccuracyPredictor(float(baseline_accuracy))
    for cell, accuracy in measured:
        predictor.observe(cell, accuracy, refit=False)
    return predictor.refit()


def knee_ratio(ratios: list[float], accuracies: list[float], baseline: float, tolerance: float = 1.0) -> float:
    """The largest ratio whose accuracy drop stays within ``tolerance`` (points); the smallest
    ratio when none does."""
    within = [r for r, a in zip(ratios, accuracies) if baseline - a <= tolerance]
    return max(within) if within else min(ratios)
