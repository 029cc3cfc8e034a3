"""``splitpack compile``: the steps from a trained model to a verified bundle, top to bottom.

    load → cuts → profile → sample (train a few cells) → predict → select the variant set →
    train the chosen variants (final) → entropy tables, input upload, TFLite heads → bundle →
    verify

The emit step calibrates entropy tables for every chosen split variant on the codes of the
training inputs (a variant keeps bit-packing when that sends fewer bytes), and for an image
input chooses the ``edge`` variant's upload: the lowest JPEG / WebP quality whose accuracy
through the model stays within ``max_accuracy_drop`` of the lossless upload, on up to
``UPLOAD_SAMPLES`` test images (:func:`~splitpack.compiler.input_upload.choose_input_upload`).

Every step keeps its result in the work folder (``<out>.work/<settings hash>/``): trained
cells, the profile, the chosen set, the final artifacts. A run interrupted midway resumes
without retraining what is finished. A failing step raises the same error type with the step
and the model named.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from splitpack.compiler.codec import codec_space, compression_ratio, parse_codec
from splitpack.compiler.cuts import Cut, find_cuts
from splitpack.compiler.evaluate import evaluate_model
from splitpack.compiler.grid import measure_cell, payload_bytes_of, variant_id
from splitpack.compiler.settings import CompileSettings, parse_bandwidth
from splitpack.compiler.train import compute_cut_features, frozen_tail
from splitpack.errors import InvalidConfigError, SplitpackError
from splitpack.predictors.accuracy import CellFeatures
from splitpack.predictors.latency import VariantProfile
from splitpack.predictors.sampling import sample_and_fit
from splitpack.predictors.selector import Constraints
from splitpack.predictors.variant_set import OperatingRange, choose_variant_set

__all__ = ["compile_bundle", "CompileResult", "UPLOAD_SAMPLES"]

UPLOAD_SAMPLES = 2000  # test images that measure the edge variant's upload curve


class CompileResult(dict):
    """What ``compile_bundle`` returns: the manifest path, archive path and a timing per step."""


class _Work:
    """The work folder: JSON and ONNX results of each step, keyed by name."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def json(self, name: str, compute: Callable[[], object]):
        path = self.path(f"{name}.json")
        if path.exists():
            return json.loads(path.read_text())
        value = compute()
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(value, indent=1))
        temporary.replace(path)
        return value

    def path(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def _cell_features(cut: Cut, codec) -> CellFeatures:
    ratio = compression_ratio(cut.shape, codec)
    return CellFeatures(cut.label, cut.position, cut.bytes_per_sample / ratio, codec.bits, ratio, codec.name)


class _Trainer:
    """Trains cells on demand, with cut features cached in memory and results in the work folder."""

    def __init__(self, model, cuts: dict[str, Cut], dataset, work: _Work, settings: CompileSettings, log):
        self.model, self.cuts, self.dataset, self.work, self.settings, self.log = model, cuts, dataset, work, settings, log
        self._features: dict[str, tuple] = {}

    def _cut_state(self, cut: Cut):
        if cut.label not in self._features:
            self._features.clear()  # one cut's features at a time: they can be large
            features = compute_cut_features(self.model, cut, self.dataset)
            self._features[cut.label] = (features, frozen_tail(features.tail))
        return self._features[cut.label]

    def cell(self, cut_label: str, codec_name: str, *, epochs: int, keep_artifacts: bool) -> dict:
        cut, codec = self.cuts[cut_label], parse_codec(codec_name)
        folder = "final" if keep_artifacts else "cells"
        key = variant_id(cut, codec)

        def compute():
            features, tail_module = self._cut_state(cut)
            (cell,), _, (head, tail) = measure_cell(self.model, features, codec, self.dataset, epochs=epochs,
                                                     seed=self.settings.seed, progress=True, tail_module=tail_module)
            if keep_artifacts:
                onnx.save(head, str(self.work.path(folder, key, "head.onnx")))
                onnx.save(tail, str(self.work.path(folder, key, "tail.onnx")))
            self.log(f"    {cut.label} {codec}: {cell.compression_ratio:.0f}x, {cell.accuracy:.2f}% "
                     f"({cell.train_seconds:.1f} s)")
            return asdict(cell)

        return self.work.json(f"{folder}/{key}", compute)


def _profiles(settings, cuts, profile, cells, predictions, num_classes, input_shape, baseline):
    """Candidate VariantProfiles for every cell, plus local and edge. A cell's accuracy is its
    predicted accuracy minus one standard deviation, so that the set is chosen among cells that
    are likely, not just predicted, to meet the floor."""
    from splitpack.runtimes.wire import message_bytes

    result_bytes = message_bytes((1, num_classes), 32, bundle_id="0" * 16, variant_id="edge")
    candidates = [
        VariantProfile("local", "local", profile["model_ms"], 0, 0, 0, 0, 0, baseline, 0),
        VariantProfile("edge", "edge", 0, 0, 0, profile["model_ms"],
                       message_bytes((1,) + tuple(input_shape[1:]), 8, bundle_id="0" * 16, variant_id="edge"),
                       result_bytes, baseline, 0),
    ]
    for (cut_label, codec_name), prediction in zip(cells, predictions):
        accuracy = max(0.0, prediction.accuracy - prediction.std)
        cut, codec = cuts[cut_label], parse_codec(codec_name)
        timing = profile["cuts"][cut_label]
        candidates.append(VariantProfile(
            variant_id(cut, codec), "split", timing["head_ms"], timing["encode_ms"], timing["decode_ms"],
            timing["tail_ms"], payload_bytes_of(cut, codec), result_bytes, accuracy,
            cut.head_param_bytes, cut=cut_label, compression_ratio=compression_ratio(cut.shape, codec),
        ))
    return candidates


def _pad(chosen: list[str], profiles, constraints, operating_range, k: int) -> list[str]:
    """Fill the set up to ``k`` split variants when fewer already reach zero regret (local and
    edge cover a small model's range on their own): the feasible split variants with the lowest
    mean latency over the range, one per cut first. A bundle without split variants could not
    follow a device whose load or uplink leaves the planned range."""
    from splitpack.predictors.latency import ProfileArrays, latency_matrix

    splits = [p for p in profiles if p.kind == "split" and p.id not in chosen]
    feasible = [p for p in splits if p.accuracy >= constraints.min_accuracy - 1e-9]
    if not feasible and not chosen:  # none is likely to hold: try the most accurate ones
        feasible = sorted(splits, key=lambda p: -p.accuracy)[: 4 * k]
    if len(chosen) >= k or not feasible:
        return chosen
    latency = latency_matrix(ProfileArrays.from_profiles(feasible), operating_range.condition_arrays())
    order = np.argsort(latency.reshape(-1, len(feasible)).mean(axis=0))
    cuts_taken = {p.cut for p in profiles if p.id in chosen}
    ranked = [feasible[i] for i in order]
    for profile in [p for p in ranked if p.cut not in cuts_taken] + ranked:
        if len(chosen) >= k:
            break
        if profile.id not in chosen:
            chosen.append(profile.id)
            cuts_taken.add(profile.cut)
    return chosen


def compile_bundle(settings: CompileSettings, out: Path, *, log: Callable[[str], None] = print) -> CompileResult:
    """Run every step of the compile pipeline; see the module docstring.

    Args:
        settings: validated compile settings.
        out: the bundle folder to write (replaced atomically); the archive goes next to it.
        log: where progress lines go.

    Returns:
        A ``CompileResult`` with ``bundle``, ``archive``, ``work`` and ``step_seconds``.
    """
    from splitpack.compiler.emit import emit_bundle
    from splitpack.compiler.profile import profile_model
    from splitpack.compiler.export import load_model, parse_input_shape
    from splitpack.datasets import check_fits_model, load_dataset

    out = Path(out)
    work = _Work(out.parent / f"{out.name}.work" / settings.fingerprint())
    timings: dict[str, float] = {}
    state: dict = {}

    def step(name: str, run: Callable[[], object]):
        log(f"[{len(timings) + 1}/7] {name}")
        start = time.perf_counter()
        try:
            state[name] = run()
        except SplitpackError as exc:
            raise type(exc)(f"compile step '{name}' on model {settings.model!r}: {exc}") from exc
        timings[name] = round(time.perf_counter() - start, 2)
        return state[name]

    def load():
        dataset = load_dataset(settings.data, image_size=settings.image_size, mean=settings.mean, std=settings.std,
                               train_limit=settings.train_limit, test_limit=settings.test_limit, seed=settings.seed)
        shape = parse_input_shape(settings.input_shape) if settings.input_shape else (1,) + tuple(dataset.input_shape)
        loaded = load_model(settings.model, weights=settings.weights, input_shape=shape)
        outputs = loaded.onnx_model.graph.output
        if len(outputs) != 1 or len(loaded.onnx_model.graph.input) - len(loaded.onnx_model.graph.initializer) > 1:
            raise InvalidConfigError("compile needs a model with one input and one (class score) output")
        dims = outputs[0].type.tensor_type.shape.dim
        check_fits_model(dataset, loaded.input_shape, dims[-1].dim_value if dims[-1].HasField("dim_value") else dataset.num_classes)
        onnx.save(loaded.onnx_model, str(work.path("model.onnx")))
        return loaded, dataset

    loaded, dataset = step("load model and data", load)
    model = loaded.onnx_model
    cuts = step("find cuts", lambda: {cut.label: cut for cut in find_cuts(model, loaded.input_shape)})
    if not cuts:
        raise InvalidConfigError(f"model {settings.model!r} has no valid cut; nothing to split")
    profile = step("profile (ONNX Runtime, this host)", lambda: work.json(
        "profile", lambda: profile_model(model, loaded.input_shape, list(cuts.values()))))
    baseline = work.json("baseline", lambda: evaluate_model(model, dataset.x_test, dataset.y_test))
    log(f"    baseline accuracy {baseline:.2f}% over {len(dataset.x_test)} test samples, {len(cuts)} cuts")

    trainer = _Trainer(model, cuts, dataset, work, settings, log)
    candidates = [_cell_features(cut, codec) for cut in cuts.values() for codec in codec_space(cut.shape)]

    def sample():
        measured = lambda c: trainer.cell(c.cut, c.codec, epochs=settings.epochs, keep_artifacts=False)["accuracy"]  # noqa: E731
        return sample_and_fit(candidates, min(settings.budget, len(candidates)), measured, baseline,
                              tolerance=settings.max_accuracy_drop)

    sampling = step(f"sample and train {settings.budget} of {len(candidates)} cells", sample)
    predictor = sampling.predictor
    work.path("predictor.json").write_text(predictor.to_json())
    predicted = step("predict every cell", lambda: predictor.predict(candidates))
    keys = [(c.cut, c.codec) for c in candidates]
    low, high = parse_bandwidth(settings.bandwidth)
    operating_range = OperatingRange(bandwidths_mbps=tuple(np.logspace(math.log10(low), math.log10(high), 25)),
                                     device_slowdown=settings.device_slowdown)
    constraints = Constraints(baseline_accuracy=baseline, max_accuracy_drop=settings.max_accuracy_drop)

    def select_and_train():
        nonlocal predictor, predicted
        excluded: set[str] = set()
        for _ in range(6):  # a chosen variant that measures below the floor is replaced
            profiles = _profiles(settings, cuts, profile, keys, predicted, dataset.num_classes, loaded.input_shape, baseline)
            profiles = [p for p in profiles if p.id not in excluded]
            chosen = choose_variant_set(profiles, constraints, operating_range, settings.variants)
            by_id = {p.id: p for p in profiles}
            chosen_ids = _pad(list(chosen.variant_ids), profiles, constraints, operating_range, settings.variants)
            finals = {}
            for vid in chosen_ids:
                profile_entry = by_id[vid]
                codec_name = vid.split("-", 1)[1]
                finals[vid] = trainer.cell(profile_entry.cut, codec_name, epochs=settings.final_epochs, keep_artifacts=True)
            failed = [vid for vid, cell in finals.items() if cell["accuracy"] < constraints.min_accuracy - 1e-9]
            if not failed:
                return {"chosen": chosen_ids, "chosen_by_regret": list(chosen.variant_ids),
                        "coverage_regret_mean": chosen.coverage_regret_mean,
                        "coverage_regret_max": chosen.coverage_regret_max, "finals": finals,
                        "predicted": {vid: predicted[keys.index((by_id[vid].cut, vid.split("-", 1)[1]))].accuracy
                                      for vid in chosen_ids}}
            log(f"    measured below the floor, replacing: {', '.join(failed)}")
            excluded.update(failed)
            for vid in failed:  # what the final training measured teaches the predictor too
                cell = finals[vid]
                predictor = predictor.observe(_cell_features(cuts[cell["cut"]], parse_codec(cell["codec"])), cell["accuracy"])
            predicted = predictor.predict(candidates)
        raise InvalidConfigError("no variant set whose measured accuracy meets the floor was found in 6 rounds; "
                                 "raise --max-accuracy-drop or --final-epochs")

    selection = step(f"select {settings.variants} variants and train them", lambda: work.json("selection", select_and_train))
    log(f"    chosen: {', '.join(selection['chosen'])} (coverage regret mean {selection['coverage_regret_mean']:.3f})")
    work.path("predictor.json").write_text(predictor.to_json())

    def emit():
        from splitpack.compiler.emit import entropy_calibration_codes
        from splitpack.compiler.input_upload import choose_input_upload

        entropy = {vid: entropy_calibration_codes(onnx.load(str(work.path("final", vid, "head.onnx"))), dataset)
                   for vid in selection["chosen"]}
        upload = None
        shape = tuple(dataset.input_shape)
        if len(shape) == 3 and shape[0] in (1, 3):  # image input: JPEG / WebP are what users send
            upload = choose_input_upload(
                model, dataset.to_uint8(dataset.x_test[:UPLOAD_SAMPLES]), dataset.y_test[:UPLOAD_SAMPLES],
                max_accuracy_drop=settings.max_accuracy_drop,
                preprocessing={"mean": list(dataset.mean), "std": list(dataset.std)},
                confirm=(dataset.to_uint8(dataset.x_test), dataset.y_test))
            point = upload.choice
            log(f"    edge upload: {point.format}{'' if point.quality is None else f' quality {point.quality}'}, "
                f"{point.payload_bytes:.0f} B mean, {point.accuracy:.2f}% (floor {upload.min_accuracy:.2f}%)")
        return emit_bundle(
            settings=settings, out=out, work=work.root, model=model, cuts=cuts, dataset=dataset, baseline=baseline,
            profile=profile, selection=selection, predictor_json=predictor.to_json(), log=log,
            entropy=entropy, edge_upload=upload)

    result = step("entropy tables, input upload, emit, TFLite, bundle and verify", emit)
    return CompileResult(bundle=str(out), archive=result["archive"], work=str(work.root), step_seconds=timings,
                         variants=result["variants"])
