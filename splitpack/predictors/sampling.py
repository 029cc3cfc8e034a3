"""Which (cut, codec) cells to train under a budget, and the loop that trains them.

Order of choices:
1. the source cut: the largest cut tensor (the earliest such cut), whose cliff lies furthest
   inside the range of code sizes, so that the fitted curve covers the cliffs of the others
   after a shift: four cells spread evenly over its code sizes, then up to ``source_extra``
   more, alternately where the predicted drop is nearest the tolerance (the knee) and where the
   curve is steepest and least known;
2. target cuts, one sample each, in the order that spreads them over the depth of the network
   (each next target is the cut farthest from every cut already sampled); the sample is the
   cut's most compressed codec: on measured grids, how far a cut has fallen there is what tells
   its shift best (a sample on the flat part says nothing about where the cliff is; placing it
   mid-cliff by the interpolated shift was tried and did worse on the digits grid);
3. with budget left, a second sample at the targets whose knee is most uncertain, where the
   curve as now predicted is mid-cliff (half the source's largest drop): between a first sample
   on the floor and the flat part, this is the bisection that locates the cliff.

The loop is independent of where accuracies come from: ``bench predictor`` replays a measured
grid, ``compile`` trains real cells.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from splitpack.errors import InvalidConfigError
from splitpack.predictors.accuracy import AccuracyPredictor, CellFeatures, fit_predictor

__all__ = ["SamplingResult", "choose_source_cut", "sample_and_fit"]

_SOURCE_FIRST = 4


@dataclass
class SamplingResult:
    predictor: AccuracyPredictor
    trained: dict[tuple[str, str, float, int], float]  # (cut, codec, code_bytes, bits) -> accuracy
    order: list[CellFeatures]


def _key(cell: CellFeatures) -> tuple[str, str, float, int]:
    return (cell.cut, cell.codec, round(cell.code_bytes, 6), cell.bits)


def choose_source_cut(candidates: list[CellFeatures]) -> str:
    """The cut with the largest tensor (most bytes before compression), the earliest on ties."""
    size: dict[str, tuple[float, float]] = {}
    for cell in candidates:
        size[cell.cut] = (cell.code_bytes * cell.compression_ratio, -cell.cut_position)
    return max(size, key=size.get)


def _spread(cells: list[CellFeatures], count: int) -> list[CellFeatures]:
    ordered = sorted(cells, key=lambda c: (c.u, -c.bits))
    picks = sorted({round(i * (len(ordered) - 1) / max(1, count - 1)) for i in range(count)})
    return [ordered[i] for i in picks]


def sample_and_fit(
    candidates: list[CellFeatures],
    budget: int,
    train: Callable[[CellFeatures], float],
    baseline_accuracy: float,
    *,
    tolerance: float = 1.0,
    source_extra: int = 2,
    source_cut: str | None = None,
) -> SamplingResult:
    """Train ``budget`` cells chosen as described above and fit the transferred predictor.

    Args:
        candidates: every cell that could be trained.
        budget: number of cells to train (at least 4).
        train: trains one cell and returns its measured accuracy (percent).
        baseline_accuracy: accuracy of the uncompressed model (percent).
        tolerance: accuracy drop (points) that defines the knee.
        source_extra: cells beyond the first four spent at the source cut.
        source_cut: force the source cut (default: ``choose_source_cut``).

    Raises:
        InvalidConfigError: a budget below 4 or larger than the candidates.
    """
    if budget < _SOURCE_FIRST:
        raise InvalidConfigError(f"sampling budget {budget} is too small; at least {_SOURCE_FIRST} cells are needed")
    if budget > len(candidates):
        raise InvalidConfigError(f"sampling budget {budget} exceeds the {len(candidates)} candidate cells; lower --budget")
    source = source_cut or choose_source_cut(candidates)
    by_cut: dict[str, list[CellFeatures]] = {}
    for cell in candidates:
        by_cut.setdefault(cell.cut, []).append(cell)
    trained: dict[tuple[str, str, float, int], float] = {}
    order: list[CellFeatures] = []

    def measure(cell: CellFeatures) -> float:
        accuracy = train(cell)
        trained[_key(cell)] = accuracy
        order.append(cell)
        return accuracy

    source_cells = by_cut[source]
    first = _spread(source_cells, min(_SOURCE_FIRST, len(source_cells)))
    samples = [(c.u, c.bits, baseline_accuracy - measure(c)) for c in first]
    predictor = fit_predictor(baseline_accuracy, source, source_cells[0].cut_position, samples)
    targets = [c for c in by_cut if c != source]
    extra = max(0, min(source_extra, budget - len(order) - len(targets) // 2))
    for index in range(extra):
        untrained = [c for c in source_cells if _key(c) not in trained]
        if not untrained:
            break
        predictions = predictor.predict(untrained)
        if index % 2 == 0:  # pin the knee: the unpinned cell predicted nearest the tolerance
            scores = [-abs((baseline_accuracy - p.accuracy) - tolerance) + (0 if p.std > 0.31 else -1e3) for p in predictions]
        else:  # the steepest, least known part of the cliff
            scores = [p.std * (1 + abs(s)) for p, s in zip(predictions, _slopes(predictor, untrained))]
        pick = untrained[int(np.argmax(scores))]
        samples.append((pick.u, pick.bits, baseline_accuracy - measure(pick)))
        predictor = fit_predictor(baseline_accuracy, source, pick.cut_position, samples)

    cliff_middle = max(tolerance, max(s[2] for s in samples) / 2)
    sampled_positions = [source_cells[0].cut_position]
    remaining = list(targets)
    while remaining and len(order) < budget:
        cut = max(remaining, key=lambda c: min(abs(by_cut[c][0].cut_position - p) for p in sampled_positions))
        remaining.remove(cut)
        sampled_positions.append(by_cut[cut][0].cut_position)
        extreme = min(by_cut[cut], key=lambda c: (c.u, -c.bits))
        accuracy = measure(extreme)
        predictor.add_target_samples(cut, extreme.cut_position, [(extreme.u, extreme.bits, baseline_accuracy - accuracy)])
    while len(order) < budget:
        open_cuts = [c for c in targets if any(_key(x) not in trained for x in by_cut[c])]
        if not open_cuts:
            break
        cut = max(open_cuts, key=lambda c: (-len(predictor.target_points.get(c, [])), _knee_std(predictor, by_cut[c])))
        _sample_target(predictor, by_cut[cut], trained, measure, baseline_accuracy, cliff_middle)
    return SamplingResult(predictor=predictor, trained=trained, order=order)


def _slopes(predictor: AccuracyPredictor, cells: list[CellFeatures]) -> list[float]:
    upper = [replace(c, code_bytes=c.code_bytes * 2 ** 0.5) for c in cells]
    lower = [replace(c, code_bytes=c.code_bytes * 2 ** -0.5) for c in cells]
    return [a.accuracy - b.accuracy for a, b in zip(predictor.predict(upper), predictor.predict(lower))]


def _knee_std(predictor: AccuracyPredictor, cells: list[CellFeatures]) -> float:
    return max(p.std for p in predictor.predict(cells))


def _sample_target(predictor, cells, trained, measure, baseline, target_drop) -> None:
    untrained = [c for c in cells if _key(c) not in trained]
    if not untrained:
        return
    predictions = predictor.predict(untrained)
    pick = untrained[int(np.argmin([abs((baseline - p.accuracy) - target_drop) for p in predictions]))]
    accuracy = measure(pick)
    predictor.add_target_samples(pick.cut, pick.cut_position, [(pick.u, pick.bits, baseline - accuracy)])
