"""The selection step on made-up predictions: what meets the floor is kept, what does not is
replaced once, and the result may hold fewer variants than asked for, or none."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from splitpack.compiler.selection import MAX_REPLACEMENT_ROUNDS, Selection, select_variants
from splitpack.formats.variants import VariantProfile
from splitpack.planning.selector import Constraints
from splitpack.planning.variant_set import OperatingRange
from splitpack.predictors.accuracy import CellFeatures, Prediction
from splitpack.quiet import forward_messages

BASELINE = 90.0
# Five cuts, one codec each: deeper cuts run more on the (slow) device and send fewer bytes,
# so several are worth bundling over 0.1..100 Mbit/s.
CELLS = [CellFeatures(f"cut{i}", i / 5, 4000 / 4**i, 8, 4.0 * 4**i, "c4s1b8") for i in range(5)]


class FakePredictor:
    """Predicts a fixed accuracy per cut; ``observe`` records what it was shown."""

    def __init__(self, accuracy: dict[str, float], observed=()):
        self.accuracy, self.observed = accuracy, list(observed)

    def predict(self, cells):
        return [Prediction(self.accuracy[cell.cut], 0.1) for cell in cells]

    def observe(self, cell, accuracy):
        updated = dict(self.accuracy)
        updated[cell.cut] = accuracy
        return FakePredictor(updated, self.observed + [(cell.cut, accuracy)])

    def to_json(self):
        return "{}"


def profiles_for(predictions):
    profiles = [VariantProfile("local", "local", 40.0, 0, 0, 0, 0, 0, BASELINE, 0),
                VariantProfile("edge", "edge", 0, 0, 0, 1.0, 50_000, 40, BASELINE, 0)]
    for i, (cell, prediction) in enumerate(zip(CELLS, predictions)):
        profiles.append(VariantProfile(
            f"cut{i:02d}-{cell.codec}", "split", 8.0 * (i + 1), 0, 0, 1.0, cell.code_bytes + 80, 40,
            max(0.0, prediction.accuracy - prediction.std), 0, cut=cell.cut, compression_ratio=cell.compression_ratio))
    return profiles


def run(predicted: dict[str, float], measured: dict[str, float], k: int = 3):
    trained: list[str] = []

    def train_final(cut, codec):
        trained.append(cut)
        return {"cut": cut, "codec": codec, "accuracy": measured[cut]}

    lines: list[str] = []
    with forward_messages(lines.append):  # its progress lines, through the splitpack loggers
        selection = select_variants(
            candidates=CELLS, predictor=FakePredictor(predicted), profiles_for=profiles_for,
            constraints=Constraints(baseline_accuracy=BASELINE, max_accuracy_drop=1.0),
            operating_range=OperatingRange(bandwidths_mbps=(0.1, 1.0, 10.0, 100.0), device_slowdown=1.0),
            k=k, train_final=train_final)
    return selection, trained, lines


def test_variants_that_meet_the_floor_are_kept_without_replacement():
    selection, trained, _ = run({c.cut: 89.9 for c in CELLS}, {c.cut: 89.5 for c in CELLS})
    assert selection.replacement_rounds == 0 and not selection.dropped
    assert 1 <= len(selection.chosen) <= 3 and len(trained) == len(selection.chosen)
    assert all(selection.finals[v]["accuracy"] == 89.5 for v in selection.chosen)


def test_a_variant_below_the_floor_is_replaced_once_and_the_others_kept():
    predicted = {c.cut: 89.9 for c in CELLS}
    first, _, _ = run(predicted, {c.cut: 89.5 for c in CELLS})
    failing = first.chosen[0].split("-")[0].replace("cut0", "cut")  # its cut label
    measured = {c.cut: (70.0 if c.cut == failing else 89.5) for c in CELLS}
    selection, trained, lines = run(predicted, measured)
    assert selection.replacement_rounds == 1
    assert [d.id for d in selection.dropped] == [first.chosen[0]]
    assert "measured 70.00% < floor 89.00%" in selection.dropped[0].reason
    assert set(first.chosen[1:]) <= set(selection.chosen)  # kept, not retrained
    assert trained.count(failing) == 1 and len(trained) == len(set(trained))
    assert first.chosen[0] not in selection.chosen and len(selection.chosen) == len(first.chosen)
    assert any(line.startswith("    dropped") for line in lines)


def test_replacements_that_fail_too_are_dropped_and_the_rest_ships():
    predicted = {c.cut: 89.9 for c in CELLS}
    measured = {c.cut: (89.5 if c.cut == "cut4" else 60.0) for c in CELLS}
    selection, trained, _ = run(predicted, measured)
    assert selection.replacement_rounds == MAX_REPLACEMENT_ROUNDS == 1
    assert all(selection.finals[v]["accuracy"] >= 89.0 for v in selection.chosen)
    assert {d.id for d in selection.dropped} == {v for v in selection.finals if v not in selection.chosen}
    assert len(trained) <= 2 * 3  # at most one replacement per slot


def test_nothing_predicted_to_hold_gives_an_empty_choice_not_an_error():
    selection, trained, lines = run({c.cut: 50.0 for c in CELLS}, {c.cut: 50.0 for c in CELLS})
    assert selection.chosen == ()
    assert len(trained) <= 2 * 3  # it still tried the most accurate ones, once each slot
    assert json.loads(json.dumps(selection.to_json()))["chosen"] == []


def test_selection_round_trips_through_json():
    selection, _, _ = run({c.cut: 89.9 for c in CELLS}, {c.cut: (70.0 if c.cut == "cut1" else 89.5) for c in CELLS})
    assert Selection.from_json(json.loads(json.dumps(selection.to_json()))) == selection


@pytest.mark.parametrize("k", [1, 2, 5])
def test_never_more_than_k_variants(k):
    selection, trained, _ = run({c.cut: 89.9 for c in CELLS}, {c.cut: 89.5 for c in CELLS}, k=k)
    assert len(selection.chosen) <= k and len(trained) <= 2 * k


def test_a_set_at_one_cut_gives_its_last_slot_to_another_cut():
    from splitpack.compiler.selection import spread_over_cuts

    # two codecs at cut0 (the cheapest bytes) and one at cut3: the set at one cut gives way
    profiles = profiles_for([Prediction(BASELINE, 0.1)] * len(CELLS))
    same = [p for p in profiles if p.kind == "split"][:1]
    twin = VariantProfile("cut00-c2s1b8", "split", same[0].head_ms, 0, 0, 1.0, same[0].payload_bytes / 2, 40,
                          BASELINE, 0, cut="cut0", compression_ratio=8.0)
    profiles = profiles + [twin]
    constraints = Constraints(baseline_accuracy=BASELINE, max_accuracy_drop=1.0)
    sizes = {c.cut: 16000.0 / 2**i for i, c in enumerate(CELLS)}  # each cut its own tensor
    chosen = spread_over_cuts([same[0].id, twin.id], profiles, constraints, OperatingRange(), sizes)
    by_id = {p.id: p for p in profiles}
    assert chosen[0] == same[0].id and len({by_id[v].cut for v in chosen}) == 2
    # nothing feasible elsewhere: unchanged
    below = [replace(p, accuracy=0.0) if p.kind == "split" and p.cut != "cut0" else p for p in profiles]
    assert spread_over_cuts([same[0].id, twin.id], below, constraints, OperatingRange(), sizes) == [same[0].id, twin.id]
    # already two cuts: unchanged
    two = [same[0].id, by_id["cut03-c4s1b8"].id]
    assert spread_over_cuts(two, profiles, constraints, OperatingRange(), sizes) == two
    # two labels that carry one tensor (pool and flatten) count as one
    pool_like = VariantProfile("cut09-c4s1b8", "split", same[0].head_ms, 0, 0, 1.0, 90, 40, BASELINE, 0,
                               cut="cut9", compression_ratio=4.0)
    spread = spread_over_cuts([same[0].id, pool_like.id], profiles + [pool_like], constraints, OperatingRange(),
                              {**sizes, "cut9": sizes["cut0"]})
    assert spread[0] == same[0].id and by_id.get(spread[1], pool_like).cut not in ("cut0", "cut9")
