"""Which (cut, codec) cells to train under a budget, and the loop that trains them.

1. **Free signals, when asked for** (``free_bits``): calibrated quantization (``q2``, ``q1``:
   no training, one evaluation of the test set each) at every cut, which places each cut's
   sensitivity before anything is trained; their evaluations count in ``bench predictor``'s
   cost. Off by default: on the replays (20 trained cells, ``benchmarks/README.md``) they
   raised the mean error on the ResNet-20 ground truth (6.72 points against 4.79) and on the
   MobileNetV2 grid (1.76 against 0.38): how much a learned unit recovers of what calibrated
   quantization loses differs from cut to cut and model to model, so ``q1`` says less about a
   learned cell than its evaluations cost.
2. **Then the most compressed cell** of a third of the budget's worth of cuts, spread over the
   depth (each next one farthest from those probed): where each cut's accuracy ends up fits
   the steepness of the cliffs and its trend over depth. These cells are far below any floor
   and are trained on purpose; on the same replays, probing each cut at its predicted
   mid-cliff instead gave 6.13 and 3.10 points, no probes at all 10.3 and 3.10.
3. **Then the rest of the budget, one cell at a time, where it decides the plan.** After each
   measurement the predictor is refitted; the next cell is the one whose side of the accuracy
   floor is least certain, weighted toward compression and spread over the cuts:
   score = p·(1 − p)·g / (1 + n), with p the predicted probability that the cell meets the
   floor, g = log2 of how much smaller its message is than 8-bit quantization's (header
   included: past a few dozen bytes of codes more compression buys no latency) and n the
   cells already trained at its cut. Cells the predictor already
   places far below the floor (p < 10 %), or far above it (p > 90 %), are not trained while any
   other is open: training them would settle nothing.

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
from splitpack.predictors.accuracy import AccuracyPredictor, CellFeatures, fit_predictor

__all__ = ["SamplingResult", "sample_and_fit"]

_FAR = 0.1
MESSAGE_HEADER_BYTES = 80  # the wire message's header and framing (formats.wire), about
_FLOOR_SHARE = 1 / 3


@dataclass
class SamplingResult:
    predictor: AccuracyPredictor
    trained: dict[tuple[str, str, float, int], float]  # (cut, codec, code_bytes, bits) -> accuracy
    order: list[CellFeatures]  # the trained (learned) cells, in order
    free: list[CellFeatures]  # the calibrated cells evaluated as free signals


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
) -> SamplingResult:
    """Measure the free signals, train ``budget`` learned cells chosen as described above, and
    fit the predictor on all of them.

    Args:
        candidates: every cell that could be measured; calibrated ones (``calibrated=True``)
            are the free signals, the others cost a training each.
        budget: learned cells to train (at least 1).
        train: trains (or evaluates) one cell and returns its measured accuracy (percent).
        baseline_accuracy: accuracy of the uncompressed model (percent).
        tolerance: the accuracy floor, in points below the baseline.
        free_bits: calibrated cells (``q{b}``) measured at every cut before any training;
            none by default (see the module docstring).

    Raises:
        InvalidConfigError: a budget below 1 or larger than the learned candidates.
    """
    learned = [c for c in candidates if not c.calibrated]
    if budget < 1:
        raise InvalidConfigError(f"sampling budget {budget} is too small; at least 1 cell must be trained")
    if budget > len(learned):
        raise InvalidConfigError(
            f"sampling budget {budget} exceeds the {len(learned)} candidate cells that train; lower --budget")
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

    def measure(pick: CellFeatures) -> None:
        accuracy = train(pick)
        trained[_key(pick)] = accuracy
        order.append(pick)
        counts[pick.cut] = counts.get(pick.cut, 0) + 1
        predictor.observe(pick, accuracy, refit=False)

    for _ in range(min(len(by_cut), int(math.ceil(budget * _FLOOR_SHARE)))):
        # where each cut's accuracy ends up: its most compressed cell, at the cut farthest (in
        # depth) from the ones already probed; these fit the steepness and its depth trend
        cut = max((c for c in by_cut if c not in counts), key=lambda c: min(
            (abs(by_cut[c][0].cut_position - p) for p in sampled_positions), default=abs(by_cut[c][0].cut_position - 0.5) + 1))
        pick = min(by_cut[cut], key=lambda c: (c.code_bytes, c.bits))
        sampled_positions.append(pick.cut_position)
        measure(pick)
    predictor.refit(calibrate=False)
    while len(order) < budget:
        open_cells = [c for c in learned if _key(c) not in trained]
        predictions = predictor.predict(open_cells)
        mean = np.array([p.accuracy for p in predictions])
        std = np.array([p.std for p in predictions])
        p = ndtr((mean - floor) / std)
        spread = np.array([1 + counts.get(c.cut, 0) for c in open_cells], dtype=float)
        score = p * (1 - p) * np.array([_message_gain(c) for c in open_cells]) / spread
        undecided = (p >= _FAR) & (p <= 1 - _FAR)
        if undecided.any():
            score = np.where(undecided, score, -np.inf)
        measure(open_cells[int(np.argmax(score))])
        predictor.refit(calibrate=False)
    predictor.refit()  # and the σ scale, by leave-one-out
    return SamplingResult(predictor=predictor, trained=trained, order=order, free=free)
