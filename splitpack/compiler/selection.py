"""The compile's selection step: choose the split variants from predictions, train them at the
final settings, replace what measures below the floor once, and keep everything that met it.

A compile must end in a bundle. Predictions can be wrong by more than their spread (a variant
trained at final settings may measure below the floor), so:

1. :func:`choose_variant_set` picks up to K split variants from the predicted profiles (each
   cell's accuracy taken as predicted minus one standard deviation), padded to K when fewer
   already reach zero regret (:func:`pad_variants`), with at least two cut tensors where two
   have feasible variants (:func:`spread_over_cuts`);
2. each is trained at the final settings; one that meets the floor is kept, one that does not
   is dropped with its measured and predicted accuracy;
3. if any were dropped, the predictor observes every final measurement and one replacement
   round fills the dropped slots (the kept variants enter it at their measured accuracy; the
   dropped ones are excluded); what that round measures below the floor is dropped as well.

The bundle carries the kept variants, however few, plus ``local`` and ``edge``; the
:class:`Selection` record says what was dropped and why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from splitpack.compiler.codec import compression_ratio, cut_channels, parse_codec
from splitpack.compiler.cuts import Cut
from splitpack.compiler.grid import payload_bytes_of
from splitpack.formats.variants import (
    WIRE_ID_PLACEHOLDER, VariantProfile, parse_split_variant_id, result_bytes, split_variant_id,
)
from splitpack.planning.latency import ProfileArrays, latency_matrix
from splitpack.planning.selector import Constraints
from splitpack.planning.variant_set import OperatingRange, choose_variant_set
from splitpack.predictors.accuracy import AccuracyPredictor, CellFeatures, Prediction

__all__ = ["DroppedVariant", "Selection", "cell_features", "candidate_profiles", "pad_variants",
           "spread_over_cuts", "select_variants", "MAX_REPLACEMENT_ROUNDS"]

_LOG = logging.getLogger(__name__)

MAX_REPLACEMENT_ROUNDS = 1
_FLOOR_TOLERANCE = 1e-9


@dataclass(frozen=True)
class DroppedVariant:
    """A split variant trained at the final settings that measured below the accuracy floor."""

    id: str
    accuracy: float
    predicted_accuracy: float
    reason: str


@dataclass(frozen=True)
class Selection:
    """The split variants a bundle carries, as the selection step measured them.

    Attributes:
        chosen: Variant ids that met the floor at the final settings, in selection order.
        finals: Variant id -> final cell (the grid's cell fields) of every trained variant,
            dropped ones included.
        predicted: Variant id -> predicted accuracy when it was chosen.
        chosen_by_regret: What the first :func:`choose_variant_set` call returned (before padding).
        coverage_regret_mean, coverage_regret_max: Of the last choice.
        dropped: The variants that measured below the floor.
        replacement_rounds: 0 or 1.
        predictor_json: The predictor after observing the final measurements.
    """

    chosen: tuple[str, ...]
    finals: dict[str, dict]
    predicted: dict[str, float]
    chosen_by_regret: tuple[str, ...]
    coverage_regret_mean: float
    coverage_regret_max: float
    dropped: tuple[DroppedVariant, ...] = ()
    replacement_rounds: int = 0
    predictor_json: str = field(default="", repr=False)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Selection":
        values = dict(data)
        values["chosen"] = tuple(values["chosen"])
        values["chosen_by_regret"] = tuple(values["chosen_by_regret"])
        values["dropped"] = tuple(DroppedVariant(**item) for item in values.get("dropped", ()))
        return cls(**values)


def cell_features(cut: Cut, codec) -> CellFeatures:
    """The predictor's description of one (cut, codec) cell."""
    ratio = compression_ratio(cut.shape, codec)
    calibrated = codec.method == "calibrated"
    fraction = 1.0 if calibrated else codec.channels / cut_channels(cut.shape)
    return CellFeatures(cut.label, cut.position, cut.bytes_per_sample / ratio, codec.bits, ratio, codec.name,
                        channel_fraction=fraction, stride=codec.stride, calibrated=calibrated)


def candidate_profiles(cuts: dict[str, Cut], profile: dict, candidates: Sequence[CellFeatures],
                       predictions: Sequence[Prediction], *, num_classes: int,
                       input_shape: tuple[int, ...], baseline: float) -> list[VariantProfile]:
    """VariantProfiles of ``local``, ``edge`` and every candidate cell. A cell's accuracy is its
    predicted accuracy minus one standard deviation, so that the set is chosen among cells that
    are likely, not just predicted, to meet the floor."""
    from splitpack.formats.wire import message_bytes

    profiles = [
        VariantProfile("local", "local", profile["model_ms"], 0, 0, 0, 0, 0, baseline, 0),
        VariantProfile("edge", "edge", 0, 0, 0, profile["model_ms"],
                       message_bytes((1,) + tuple(input_shape[1:]), 8, bundle_id=WIRE_ID_PLACEHOLDER,
                                     variant_id="edge"),
                       result_bytes(num_classes, "edge"), baseline, 0),
    ]
    for cell, prediction in zip(candidates, predictions):
        cut, codec = cuts[cell.cut], parse_codec(cell.codec)
        timing = profile["cuts"][cell.cut]
        vid = split_variant_id(cut.index, codec.name)
        profiles.append(VariantProfile(
            vid, "split", timing["head_ms"], timing["encode_ms"], timing["decode_ms"],
            timing["tail_ms"], payload_bytes_of(cut, codec), result_bytes(num_classes, vid),
            max(0.0, prediction.accuracy - prediction.std), cut.head_param_bytes, cut=cell.cut,
            compression_ratio=compression_ratio(cut.shape, codec),
        ))
    return profiles


def pad_variants(chosen: list[str], profiles: Sequence[VariantProfile], constraints: Constraints,
                 operating_range: OperatingRange, k: int) -> list[str]:
    """Fill the set up to ``k`` split variants when fewer already reach zero regret (local and
    edge cover a small model's range on their own): the feasible split variants with the lowest
    mean latency over the range, one per cut first. A bundle without split variants could not
    follow a device whose load or uplink leaves the planned range."""
    chosen = list(chosen)
    splits = [p for p in profiles if p.kind == "split" and p.id not in chosen]
    feasible = [p for p in splits if p.accuracy >= constraints.min_accuracy - _FLOOR_TOLERANCE]
    if not feasible and not chosen:  # none is likely to hold: try the most accurate ones
        feasible = sorted(splits, key=lambda p: -p.accuracy)[: 4 * k]
    if len(chosen) >= k or not feasible:
        return chosen
    latency = latency_matrix(ProfileArrays.from_profiles(feasible), operating_range.condition_arrays())
    order = np.argsort(latency.reshape(-1, len(feasible)).mean(axis=0))
    cuts_taken = {p.cut for p in profiles if p.id in chosen}
    ranked = [feasible[i] for i in order]
    for candidate in [p for p in ranked if p.cut not in cuts_taken] + ranked:
        if len(chosen) >= k:
            break
        if candidate.id not in chosen:
            chosen.append(candidate.id)
            cuts_taken.add(candidate.cut)
    return chosen


def spread_over_cuts(chosen: list[str], profiles: Sequence[VariantProfile], constraints: Constraints,
                     operating_range: OperatingRange, tensor_bytes: dict[str, float]) -> list[str]:
    """When every chosen split variant carries one tensor (one cut, or cuts such as ``pool`` and
    ``flatten`` that carry the same values) and a feasible variant exists at a cut with another
    tensor, the last of them gives way to the best such variant at the heaviest device load of
    the range. Variants of one tensor differ only in bytes, so such a set cannot follow the
    device's load (the runtime moves work between the device and the edge by changing cut); at
    the range's own conditions the set loses at most what that one variant added.
    ``tensor_bytes`` maps each cut label to its tensor's float32 bytes."""
    by_id = {p.id: p for p in profiles}
    if len(chosen) < 2:
        return chosen
    size = tensor_bytes[by_id[chosen[0]].cut]
    if any(abs(tensor_bytes[by_id[vid].cut] - size) > 0.1 * size for vid in chosen):
        return chosen
    others = [p for p in profiles if p.kind == "split" and abs(tensor_bytes[p.cut] - size) > 0.1 * size
              and p.accuracy >= constraints.min_accuracy - _FLOOR_TOLERANCE]
    if not others:
        return chosen
    heavy = replace(operating_range, device_loads=(max(operating_range.device_loads),),
                    edge_loads=(min(operating_range.edge_loads),))
    latency = latency_matrix(ProfileArrays.from_profiles(others), heavy.condition_arrays())
    best = others[int(np.argmin(latency.reshape(-1, len(others)).mean(axis=0)))]
    return chosen[:-1] + [best.id]


def select_variants(*, candidates: Sequence[CellFeatures], predictor: AccuracyPredictor,
                    profiles_for: Callable[[Sequence[Prediction]], list[VariantProfile]],
                    constraints: Constraints, operating_range: OperatingRange, k: int,
                    train_final: Callable[[str, str], dict]) -> Selection:
    """Choose up to ``k`` split variants, train them, replace the ones below the floor once.

    Args:
        candidates: Every (cut, codec) cell the compiler considers.
        predictor: The fitted accuracy predictor.
        profiles_for: Predictions of ``candidates`` (same order) -> :func:`candidate_profiles`.
        constraints: The accuracy floor (and memory limits).
        operating_range: Bandwidths and loads the set must cover.
        k: Most split variants.
        train_final: ``(cut label, codec name) -> final cell dict`` (trains at final settings,
            keeps the artifacts; cached by the caller).

    Returns:
        The :class:`Selection`; its ``chosen`` may be empty (the bundle then carries ``local``
        and ``edge`` only).
    """
    floor = constraints.min_accuracy
    by_cell = {(c.cut, c.codec): c for c in candidates}
    predictions = predictor.predict(list(candidates))
    profiles = profiles_for(predictions)
    predicted_of = _predicted_by_id(profiles, predictions)
    first = choose_variant_set(profiles, constraints, operating_range, k)
    tensor_bytes = {c.cut: c.code_bytes * c.compression_ratio for c in candidates}
    queue = spread_over_cuts(pad_variants(list(first.variant_ids), profiles, constraints, operating_range, k),
                             profiles, constraints, operating_range, tensor_bytes)
    if not queue:
        _LOG.info("    no split variant is predicted to meet the floor: the bundle carries local and edge only")
    by_id = {p.id: p for p in profiles}
    finals: dict[str, dict] = {}
    predicted: dict[str, float] = {}
    kept: list[str] = []
    dropped: list[DroppedVariant] = []
    rounds, last = 0, first
    while True:
        for vid in queue:
            cell = train_final(by_id[vid].cut, parse_split_variant_id(vid)[1])
            finals[vid], predicted[vid] = cell, predicted_of[vid]
            if cell["accuracy"] >= floor - _FLOOR_TOLERANCE:
                kept.append(vid)
            else:
                reason = f"measured {cell['accuracy']:.2f}% < floor {floor:.2f}% (predicted {predicted_of[vid]:.2f}%)"
                dropped.append(DroppedVariant(vid, cell["accuracy"], predicted_of[vid], reason))
                _LOG.info(f"    dropped {vid}: {reason}")
        open_slots = len(queue) - sum(1 for vid in queue if vid in kept)
        if not open_slots or rounds >= MAX_REPLACEMENT_ROUNDS:
            break
        rounds += 1
        for cell in finals.values():  # what the final training measured teaches the predictor
            predictor = predictor.observe(by_cell[(cell["cut"], cell["codec"])], cell["accuracy"])
        predictions = predictor.predict(list(candidates))
        failed = {d.id for d in dropped}
        every = profiles_for(predictions)
        predicted_of = _predicted_by_id(every, predictions)
        profiles = [replace(p, accuracy=finals[p.id]["accuracy"]) if p.id in kept else p
                    for p in every if p.id not in failed]
        by_id = {p.id: p for p in profiles}
        last = choose_variant_set(profiles, constraints, operating_range, len(kept) + open_slots)
        wanted = kept + [vid for vid in last.variant_ids if vid not in kept][:open_slots]
        wanted = pad_variants(wanted, profiles, constraints, operating_range, len(kept) + open_slots)
        queue = spread_over_cuts(wanted, profiles, constraints, operating_range, tensor_bytes)[len(kept):]
        if not queue:
            break
        _LOG.info(f"    replacing {open_slots} variant(s) once: {', '.join(queue)}")
    return Selection(chosen=tuple(kept), finals=finals, predicted=predicted,
                     chosen_by_regret=tuple(first.variant_ids),
                     coverage_regret_mean=last.coverage_regret_mean, coverage_regret_max=last.coverage_regret_max,
                     dropped=tuple(dropped), replacement_rounds=rounds, predictor_json=predictor.to_json())


def _predicted_by_id(profiles: Sequence[VariantProfile], predictions: Sequence[Prediction]) -> dict[str, float]:
    """Split variant id -> predicted accuracy; ``profiles`` is :func:`candidate_profiles` of
    ``predictions`` (local, edge, then one split profile per prediction, in order)."""
    splits = [p for p in profiles if p.kind == "split"]
    return {p.id: prediction.accuracy for p, prediction in zip(splits, predictions, strict=True)}
