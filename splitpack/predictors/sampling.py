"""Which (cut, codec) cells to train under a budget, and the loop that trains them.

1. **Free signals, when asked for** (``free_bits``): calibrated quantization (``q2``, ``q1``:
   no training, one evaluation of the test set each) at every cut, which places each cut's
   sensitivity before anything is trained; their evaluations count in ``bench predictor``'s
   cost. Off by default: on the replays (20 trained cells, counted without seconds, at the
   time: ``benchmarks/README.md``) they raised the mean error on the ResNet-20 ground truth
   (6.72 points against 4.79) and on the MobileNetV2 grid (1.76 against 0.38): how much a
   learned unit recovers of what calibrated quantization loses differs from cut to cut and
   model to model, so ``q1`` says less about a learned cell than its evaluations cost.
2. **Then the most compressed cell** of a third of the budget's worth of cuts, spread over the
   depth (each next one farthest from those probed): where each cut's accuracy ends up fits
   the steepness of the cliffs and its trend over depth. These cells are far below any floor
   and are trained on purpose; on the same replays (cells only), probing each cut at its
   predicted mid-cliff instead gave 6.13 and 3.10 points, no probes at all 10.3 and 3.10.
3. **Then the rest of the budget, one cell at a time, where it decides the plan.** After each
   measurement the predictor is refitted; the next cell is the one whose side of the accuracy
   floor is least certain, weighted toward compression and spread over the cuts:
   score = p·(1 − p)·g / (1 + n), with p the predicted probability that the cell meets the
   floor, g = log2 of how much smaller its message is than 8-bit quantization's (header
   included: past a few dozen bytes of codes more compression buys no latency) and n the
   cells already trained at its cut. Cells the predictor already places far below the floor
   (p < 10 %), or far above it (p > 90 %), are not trained while any other is open: training
   them would settle nothing.
4. **Seconds, not only cells** (``cost``, ``seconds``). Cells differ in what they cost by far
   more than their count says: on the CIFAR MobileNetV2-style model a unit at the stem trains
   in 120-260 s here, one at ``pool`` in 2-3 s, because training runs the whole tail behind the
   unit (``cifar_mobilenetv2_ground_truth.json``, ``train_seconds``); a compile that counted
   cells spent 41 minutes sampling 20 of them. With a ``TrainingCost`` the sampler charges
   each trained cell the seconds it took (the compile: all of its time, the head's features
   and the evaluation included; a replay: the grid's ``train_seconds``), stops the probes of
   rule 2 once a third of ``seconds`` is spent, never starts a cell in rule 3 whose estimated
   seconds do not fit in what is left, and weighs rule 3's score by that estimate (below). A
   probe is never skipped on its estimate: a probe dearer than every cut trained so far can only
   be extrapolated, from the cheap last cuts, whose fixed costs dominate (the stems were
   estimated at 16-250 times what they took; a sampler that skipped on it probed only ``pool``
   and ``flatten``, and a ResNet-20 compile of this session sampled its 20 cells there alone),
   and a probe at most as dear as those trained always fits (they took under a third). So the
   probes can overrun the limit by at most one probe (the MobileNetV2's stem: 153 s of 480).
   The estimate is the median of the cells trained at its cut, else its cut's work (the tail's
   FLOPs plus the cut tensor's elements) placed among the cuts trained so far (``_Costs``).
   Without a cost every cell costs one and only ``budget`` limits.

   Rule 3's score is divided by the square root of the cell's estimated seconds: between what
   a cell settles and what it settles per second. On the replays at 480 s (``bench
   predictor``, ``benchmarks/README.md``), mean error / knee error (ladder steps, worst cut)
   on the ResNet-20 and MobileNetV2 ground truths: without the division 4.79 / 2 and 3.49 / 4
   (the MobileNet's 480 s bought 9 cells, most at the stem and the early blocks); by the
   seconds themselves 5.97 / 2 and 3.79 / 1 (the early cuts, where the mean error is made, went
   unsampled); by their square root 4.48 / 1 and 3.33 / 1 (with the predictor of the time,
   ``splitpack-accuracy-predictor/2``; with today's, ``/4``: 3.36 / 1 and 2.99 / 1).

The loop is independent of where accuracies come from: ``bench predictor`` replays a measured
grid, ``compile`` trains real cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.special import ndtr

from splitpack.errors import InvalidConfigError
from splitpack.predictors import DEFAULT_SAMPLE_SECONDS
from splitpack.predictors.accuracy import AccuracyPredictor, CellFeatures, fit_predictor

__all__ = ["DEFAULT_SAMPLE_SECONDS", "SamplingResult", "TrainingCost", "sample_and_fit", "training_work"]

_FAR = 0.1
MESSAGE_HEADER_BYTES = 80  # the wire message's header and framing (formats.wire), about
_FLOOR_SHARE = 1 / 3
_PROBE_SECONDS_SHARE = 1 / 3
_LEAST_SECONDS = 1e-3  # what a cell is estimated at, at least (a grid may record 0 s)


@dataclass(frozen=True)
class TrainingCost:
    """What cells cost to train.

    Attributes:
        work: a relative estimate known before training (any unit, e.g. the tail's FLOPs plus
            the cut tensor's elements); only its ratios between cells are used.
        seconds: what a trained cell took (read after ``train`` returned for it).
    """

    work: Callable[[CellFeatures], float]
    seconds: Callable[[CellFeatures], float]


# Work of one element of the cut tensor (the unit's encoder and decoder run on each) against one
# FLOP of the tail: least squares on the ground truths' train_seconds gave 900 (ResNet-20) and
# 3,600 (MobileNetV2); the rate itself (seconds per unit) is measured during sampling.
_ELEMENT_WORK = 2000.0


def training_work(tail_flops: float, cut_elements: float) -> float:
    """The relative work of training a unit at a cut: training runs the tail behind the unit."""
    return float(tail_flops) + _ELEMENT_WORK * float(cut_elements)


class _Costs:
    """Estimated and charged seconds of the cells, from a ``TrainingCost`` (none without one).

    A cell at a cut with trained cells is estimated at their median; at another cut, from the
    cuts trained so far by their work: interpolated between them (log-log), the cheapest's
    seconds below them, in proportion to the dearest's above them. (Seconds per unit of work
    alone extrapolate badly from a cheap cut: at the CIFAR models' last cuts a unit's fixed costs
    dominate; from the ResNet-20's ``flatten`` (2.1 s) its stem was estimated at 1,830 s, and
    took 38.)"""

    def __init__(self, cost: TrainingCost | None):
        self.cost = cost
        self.spent = 0.0
        self._at_cut: dict[str, list[float]] = {}
        self._work: dict[str, float] = {}

    def estimates(self, cells: list[CellFeatures]) -> np.ndarray:
        """Each cell's estimated seconds (1 each without a cost); once a cell was charged."""
        if self.cost is None:
            return np.ones(len(cells))
        median = {c: max(float(np.median(s)), _LEAST_SECONDS) for c, s in self._at_cut.items()}
        known = sorted((self._work[c], t) for c, t in median.items())
        works, seconds = np.log([w for w, _ in known]), np.log([t for _, t in known])
        dearest_work, dearest_seconds = known[-1]

        def estimate(cell: CellFeatures) -> float:
            if cell.cut in median:
                return median[cell.cut]
            work = max(float(self.cost.work(cell)), 1e-12)
            if work >= dearest_work:
                return dearest_seconds * work / dearest_work
            return float(np.exp(np.interp(np.log(work), works, seconds)))

        return np.array([estimate(c) for c in cells])

    def charge(self, cell: CellFeatures) -> None:
        if self.cost is None:
            return
        took = max(float(self.cost.seconds(cell)), 0.0)
        self.spent += took
        self._at_cut.setdefault(cell.cut, []).append(took)
        self._work[cell.cut] = max(float(self.cost.work(cell)), 1e-12)


@dataclass
class SamplingResult:
    predictor: AccuracyPredictor
    trained: dict[tuple[str, str, float, int], float]  # (cut, codec, code_bytes, bits) -> accuracy
    order: list[CellFeatures]  # the trained (learned) cells, in order
    free: list[CellFeatures]  # the calibrated cells evaluated as free signals
    seconds: float = 0.0  # what the trained cells took, by the TrainingCost (0 without one)
    stopped: str = "budget"  # why sampling ended: "budget" (cells) or "seconds"


def _key(cell: CellFeatures) -> tuple[str, str, float, int]:
    return (cell.cut, cell.codec, round(cell.code_bytes, 6), cell.bits)


def _message_gain(cell: CellFeatures) -> float:
    """log2 of how much smaller the cell's message is than 8-bit quantization's, header
    included: below a few dozen bytes of codes the header dominates and more compression
    buys no latency."""
    full = cell.code_bytes * cell.compression_ratio / 4
    return max(math.log2((full + MESSAGE_HEADER_BYTES) / (cell.code_bytes + MESSAGE_HEADER_BYTES)), 0.05)


def sample_and_fit(
    candidates: list[CellFeatures],
    budget: int,
    train: Callable[[CellFeatures], float],
    baseline_accuracy: float,
    *,
    tolerance: float = 1.0,
    free_bits: tuple[int, ...] = (),
    cost: TrainingCost | None = None,
    seconds: float | None = None,
) -> SamplingResult:
    """Measure the free signals, train up to ``budget`` learned cells (in up to ``seconds``)
    chosen as described above, and fit the predictor on all of them.

    Args:
        candidates: every cell that could be measured; calibrated ones (``calibrated=True``)
            are the free signals, the others cost a training each.
        budget: learned cells to train (at least 1).
        train: trains (or evaluates) one cell and returns its measured accuracy (percent).
        baseline_accuracy: accuracy of the uncompressed model (percent).
        tolerance: the accuracy floor, in points below the baseline.
        free_bits: calibrated cells (``q{b}``) measured at every cut before any training;
            none by default (see the module docstring).
        cost: what cells cost (rule 4); None: one each.
        seconds: training seconds the sampling may spend (needs ``cost``); None: no limit
            but ``budget``. At least one cell is always trained.

    Raises:
        InvalidConfigError: a budget below 1 or larger than the learned candidates; seconds
            not above 0, or given without a cost.
    """
    learned = [c for c in candidates if not c.calibrated]
    if budget < 1:
        raise InvalidConfigError(f"sampling budget {budget} is too small; at least 1 cell must be trained")
    if budget > len(learned):
        raise InvalidConfigError(
            f"sampling budget {budget} exceeds the {len(learned)} candidate cells that train; lower --budget")
    if seconds is not None and not seconds > 0:
        raise InvalidConfigError(f"sampling seconds {seconds!r} is not above 0; allowed: a number of seconds "
                                 "above 0, or None to count cells only")
    if seconds is not None and cost is None:
        raise InvalidConfigError(f"sampling seconds {seconds!r} given without a training cost (what cells take); "
                                 "give a TrainingCost too, or no seconds to count cells only")
    free = [c for c in candidates if c.calibrated and c.bits in free_bits]
    predictor = fit_predictor(baseline_accuracy, [(c, train(c)) for c in free])
    trained: dict[tuple[str, str, float, int], float] = {}
    order: list[CellFeatures] = []
    floor = baseline_accuracy - tolerance
    counts: dict[str, int] = {}
    by_cut: dict[str, list[CellFeatures]] = {}
    for cell in learned:
        by_cut.setdefault(cell.cut, []).append(cell)
    sampled_positions: list[float] = []
    costs = _Costs(cost)
    stopped = "budget"

    def left(share: float = 1.0) -> float | None:
        return None if seconds is None else seconds * share - costs.spent

    def measure(pick: CellFeatures) -> None:
        accuracy = train(pick)
        trained[_key(pick)] = accuracy
        order.append(pick)
        counts[pick.cut] = counts.get(pick.cut, 0) + 1
        costs.charge(pick)
        predictor.observe(pick, accuracy, refit=False)

    probes = min(len(by_cut), int(math.ceil(budget * _FLOOR_SHARE)))
    unprobed = list(by_cut)
    while len(order) < probes and unprobed:
        probe_left = left(_PROBE_SECONDS_SHARE)
        if order and probe_left is not None and probe_left <= 0:
            break  # the probes' share of the time is spent
        # where each cut's accuracy ends up: its most compressed cell, at the cut farthest (in
        # depth) from the ones already probed; these fit the steepness and its depth trend
        cut = max(unprobed, key=lambda c: min(
            (abs(by_cut[c][0].cut_position - p) for p in sampled_positions),
            default=abs(by_cut[c][0].cut_position - 0.5) + 1))
        unprobed.remove(cut)
        pick = min(by_cut[cut], key=lambda c: (c.code_bytes, c.bits))
        sampled_positions.append(pick.cut_position)
        measure(pick)
    predictor.refit(calibrate=False)
    while len(order) < budget:
        open_cells = [c for c in learned if _key(c) not in trained]
        dear = costs.estimates(open_cells)
        if seconds is not None:  # only the cells that fit in what is left
            fits = dear <= left()
            open_cells, dear = [c for c, f in zip(open_cells, fits) if f], dear[fits]
        if not open_cells:  # (the budget is at most the learned cells: the time is spent)
            stopped = "seconds"
            break
        predictions = predictor.predict(open_cells)
        mean = np.array([p.accuracy for p in predictions])
        std = np.array([p.std for p in predictions])
        p = ndtr((mean - floor) / std)
        spread = np.array([1 + counts.get(c.cut, 0) for c in open_cells], dtype=float)
        score = p * (1 - p) * np.array([_message_gain(c) for c in open_cells]) / spread / np.sqrt(dear)
        undecided = (p >= _FAR) & (p <= 1 - _FAR)
        if undecided.any():
            score = np.where(undecided, score, -np.inf)
        measure(open_cells[int(np.argmax(score))])
        predictor.refit(calibrate=False)
    predictor.refit()  # and the σ scale, by leave-one-out
    return SamplingResult(predictor=predictor, trained=trained, order=order, free=free,
                          seconds=costs.spent, stopped=stopped)
