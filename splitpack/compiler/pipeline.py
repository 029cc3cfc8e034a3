"""``splitpack compile``: the steps from a trained model to a verified bundle, top to bottom.

    load → cuts → profile → sample (train a few cells) → select (predict, choose the variant
    set, train it at final settings, replace what fails once) → entropy tables, input upload,
    TFLite heads → bundle → verify

Each step is a module-level function of typed inputs; :func:`compile_bundle` calls them in that
order and names the step and the model in any error. The selection step
(:mod:`splitpack.compiler.selection`) keeps every variant that met the accuracy floor and
replaces the others at most once, so a compile that trained anything ends in a bundle: with
fewer split variants than asked for (each dropped one named, with its measured accuracy), or
with only ``local`` and ``edge``.

The emit step calibrates entropy tables for every chosen split variant on the codes of the
training inputs (a variant keeps bit-packing when that sends fewer bytes), and for an image
input chooses the ``edge`` variant's upload: the lowest JPEG / WebP quality whose accuracy
through the model stays within ``max_accuracy_drop`` of the lossless upload, on up to
``UPLOAD_SAMPLES`` test images (:func:`~splitpack.compiler.input_upload.choose_input_upload`).

Every step keeps its result in the work folder (``<out>.work/<training settings hash>/``),
keyed by every setting it reads: trained cells and final variants by the training settings
(the folder), the profile by the model, the selection also by ``variants``,
``max_accuracy_drop``, ``bandwidth``, ``device_slowdown`` and the source of the code that makes it
(``selection-<hash>.json``). A run
interrupted midway resumes without retraining what is finished. A failing step raises the same
error type with the step and the model named.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from splitpack.compiler.codec import codec_space, parse_codec
from splitpack.compiler.cuts import Cut, find_cuts
from splitpack.compiler.evaluate import evaluate_model
from splitpack.compiler.grid import measure_cell
from splitpack.compiler.selection import Selection, candidate_profiles, cell_features, select_variants
from splitpack.compiler.settings import CompileSettings, parse_bandwidth
from splitpack.compiler.train import compute_cut_features, frozen_tail
from splitpack.errors import InvalidConfigError, SplitpackError
from splitpack.formats.variants import split_variant_id
from splitpack.planning.selector import Constraints
from splitpack.planning.variant_set import OperatingRange
from splitpack.predictors.accuracy import CellFeatures
from splitpack.predictors.sampling import SamplingResult, TrainingCost, sample_and_fit, training_work
from splitpack.quiet import forward_messages

__all__ = ["compile_bundle", "CompileResult", "UPLOAD_SAMPLES", "load_inputs", "find_model_cuts",
           "profile_cuts", "sample_cells", "select_and_train", "emit_variants"]

_LOG = logging.getLogger(__name__)

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
        return self.write_json(name, compute())

    def write_json(self, name: str, value):
        """Write ``name``.json (atomically: a temporary file renamed over it) and return ``value``."""
        path = self.path(f"{name}.json")
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(value, indent=1))
        temporary.replace(path)
        return value

    def path(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


class _Trainer:
    """Trains cells on demand, with cut features cached in memory and results in the work folder."""

    def __init__(self, model, cuts: dict[str, Cut], dataset, work: _Work, settings: CompileSettings):
        self.model, self.cuts, self.dataset, self.work, self.settings = model, cuts, dataset, work, settings
        self._features: dict[str, tuple] = {}

    def _cut_state(self, cut: Cut):
        if cut.label not in self._features:
            self._features.clear()  # one cut's features at a time: they can be large
            features = compute_cut_features(self.model, cut, self.dataset)
            self._features[cut.label] = (features, frozen_tail(features.tail))
        return self._features[cut.label]

    def cell(self, cut_label: str, codec_name: str, *, epochs: int, keep_artifacts: bool) -> dict:
        """Train (or load) one cell. Sampled cells (``keep_artifacts=False``) keep their head and
        tail too: a final variant at the sampling's epochs is that same training (same seed),
        so it is copied instead of trained again."""
        cut, codec = self.cuts[cut_label], parse_codec(codec_name)
        folder = "final" if keep_artifacts else "cells"
        key = split_variant_id(cut.index, codec.name)
        sampled = self.work.root / "cells" / key

        def compute():
            if keep_artifacts and epochs == self.settings.epochs and (sampled / "tail.onnx").exists() \
                    and sampled.with_suffix(".json").exists():
                for name in ("head.onnx", "tail.onnx"):
                    shutil.copyfile(sampled / name, self.work.path(folder, key, name))
                cell = json.loads(sampled.with_suffix(".json").read_text())
                _LOG.info(f"    {cut.label} {codec}: {cell['accuracy']:.2f}% (trained while sampling, same settings)")
                return cell
            start = time.perf_counter()
            features, tail_module = self._cut_state(cut)
            (cell,), _, (head, tail) = measure_cell(self.model, features, codec, self.dataset, epochs=epochs,
                                                     seed=self.settings.seed, progress=True, tail_module=tail_module)
            onnx.save(head, str(self.work.path(folder, key, "head.onnx")))
            onnx.save(tail, str(self.work.path(folder, key, "tail.onnx")))
            wall = time.perf_counter() - start  # the cut's features (first at a cut), training, evaluation
            _LOG.info(f"    {cut.label} {codec}: {cell.compression_ratio:.0f}x, {cell.accuracy:.2f}% "
                     f"({cell.train_seconds:.1f} s training, {wall:.1f} s in all)")
            return {**asdict(cell), "wall_seconds": wall}

        return self.work.json(f"{folder}/{key}", compute)



# -- the steps ------------------------------------------------------------------------------------

def load_inputs(settings: CompileSettings, work: _Work):
    """(loaded model, data set): the model brought to ONNX (saved in the work folder), checked to
    have one input and one class-score output that fit the data set."""
    from splitpack.compiler.export import load_model, parse_input_shape
    from splitpack.datasets import check_fits_model, load_dataset

    dataset = load_dataset(settings.data, image_size=settings.image_size, mean=settings.mean, std=settings.std,
                           train_limit=settings.train_limit, test_limit=settings.test_limit, seed=settings.seed)
    shape = parse_input_shape(settings.input_shape) if settings.input_shape else (1,) + tuple(dataset.input_shape)
    loaded = load_model(settings.model, weights=settings.weights, input_shape=shape)
    outputs = loaded.onnx_model.graph.output
    if len(outputs) != 1 or len(loaded.onnx_model.graph.input) - len(loaded.onnx_model.graph.initializer) > 1:
        raise InvalidConfigError("compile needs a model with one input and one (class score) output")
    dims = outputs[0].type.tensor_type.shape.dim
    check_fits_model(dataset, loaded.input_shape,
                     dims[-1].dim_value if dims[-1].HasField("dim_value") else dataset.num_classes)
    onnx.save(loaded.onnx_model, str(work.path("model.onnx")))
    return loaded, dataset


def find_model_cuts(settings: CompileSettings, model: onnx.ModelProto, input_shape: tuple[int, ...]) -> dict[str, Cut]:
    """Label -> cut, every valid cut of the model."""
    cuts = {cut.label: cut for cut in find_cuts(model, input_shape)}
    if not cuts:
        raise InvalidConfigError(f"model {settings.model!r} has no valid cut; nothing to split")
    return cuts


def profile_cuts(work: _Work, model: onnx.ModelProto, input_shape: tuple[int, ...], cuts: dict[str, Cut]) -> dict:
    """Head, tail, encode and decode times per cut on this host (cached with the model)."""
    from splitpack.compiler.profile import profile_model

    return work.json("profile", lambda: profile_model(model, input_shape, list(cuts.values())))


def sample_cells(settings: CompileSettings, trainer: _Trainer, candidates: list[CellFeatures],
                 baseline: float) -> SamplingResult:
    """Train up to ``settings.budget`` cells in up to ``settings.sample_seconds`` where they teach
    the predictor most, and fit it. A cell is charged the seconds it took here, the head's
    features at its cut (computed again whenever sampling moves to the cut: one cut's are kept
    at a time) and its evaluation included (``wall_seconds`` in its record, read back from the
    work folder on a second run, so that it samples the same cells), and estimated beforehand
    from its cut's work (``predictors.sampling.training_work``)."""
    if settings.budget > len(candidates):
        raise InvalidConfigError(
            f"budget {settings.budget} is larger than the {len(candidates)} cells the compiler considers "
            f"for this model (every cut x its codec space); allowed: 1..{len(candidates)}: lower --budget")

    records: dict[tuple[str, str], dict] = {}  # each cell's record read once, for its accuracy and seconds

    def record(cell: CellFeatures) -> dict:
        key = (cell.cut, cell.codec)
        if key not in records:
            records[key] = trainer.cell(cell.cut, cell.codec, epochs=settings.epochs, keep_artifacts=False)
        return records[key]

    def work(cell: CellFeatures) -> float:
        cut = trainer.cuts[cell.cut]
        return training_work(cut.tail_flops, cut.bytes_per_sample / 4)

    def took(cell: CellFeatures) -> float:  # the cell's whole time here, its evaluation included
        done = record(cell)
        return float(done.get("wall_seconds", done["train_seconds"]))

    result = sample_and_fit(candidates, settings.budget, lambda cell: record(cell)["accuracy"], baseline,
                            tolerance=settings.max_accuracy_drop, cost=TrainingCost(work, took),
                            seconds=settings.sample_seconds or None)
    limit = f"{settings.sample_seconds:g} s" if settings.sample_seconds else "no time limit"
    _LOG.info(f"    sampled {len(result.order)} cells in {result.seconds:.0f} s (their features, training and "
              f"evaluation; limits {settings.budget} cells, {limit}; stopped by {result.stopped})")
    return result


# The code that turns trained cells into a selection: a cached selection made by other code is
# made anew (its trained cells and finals are kept; they are keyed by the training settings).
_SELECTION_CODE = ("splitpack.compiler.selection", "splitpack.predictors.accuracy", "splitpack.predictors.sampling",
                   "splitpack.planning.variant_set", "splitpack.planning.latency")


def selection_key(settings: CompileSettings) -> str:
    """What the selection reads besides the training settings (the work folder's name): the
    settings it reads and the source of the code that makes it."""
    import importlib

    read = {name: getattr(settings, name)
            for name in ("variants", "max_accuracy_drop", "bandwidth", "device_slowdown", "budget", "sample_seconds")}
    code = hashlib.sha256()
    for name in _SELECTION_CODE:
        code.update(Path(importlib.import_module(name).__file__).read_bytes())
    read["code"] = code.hexdigest()
    return hashlib.sha256(json.dumps(read, sort_keys=True).encode()).hexdigest()[:12]


def select_and_train(settings: CompileSettings, work: _Work, trainer: _Trainer, sampling: SamplingResult,
                     candidates: list[CellFeatures], *, profile: dict, num_classes: int,
                     input_shape: tuple[int, ...], baseline: float) -> Selection:
    """The variant set, trained at final settings (see :mod:`splitpack.compiler.selection`),
    cached under :func:`selection_key`."""
    low, high = parse_bandwidth(settings.bandwidth)
    operating_range = OperatingRange(bandwidths_mbps=tuple(np.logspace(math.log10(low), math.log10(high), 25)),
                                     device_slowdown=settings.device_slowdown)
    constraints = Constraints(baseline_accuracy=baseline, max_accuracy_drop=settings.max_accuracy_drop)

    def profiles_for(predictions):
        return candidate_profiles(trainer.cuts, profile, candidates, predictions, num_classes=num_classes,
                                  input_shape=input_shape, baseline=baseline)

    def train_final(cut_label: str, codec_name: str) -> dict:
        return trainer.cell(cut_label, codec_name, epochs=settings.final_epochs, keep_artifacts=True)

    def compute() -> dict:
        return select_variants(candidates=candidates, predictor=sampling.predictor, profiles_for=profiles_for,
                               constraints=constraints, operating_range=operating_range, k=settings.variants,
                               train_final=train_final).to_json()

    return Selection.from_json(work.json(f"selection-{selection_key(settings)}", compute))


def emit_variants(settings: CompileSettings, out: Path, work: _Work, *, model: onnx.ModelProto,
                  cuts: dict[str, Cut], dataset, baseline: float, profile: dict, selection: Selection,
                  ) -> dict:
    """Entropy tables and the edge upload, then the bundle, its archive and their verification."""
    from splitpack.compiler.emit import emit_bundle, entropy_calibration_codes
    from splitpack.compiler.input_upload import choose_input_upload

    entropy = {vid: entropy_calibration_codes(onnx.load(str(work.path("final", vid, "head.onnx"))), dataset)
               for vid in selection.chosen}
    upload = None
    shape = tuple(dataset.input_shape)
    if len(shape) == 3 and shape[0] in (1, 3):  # image input: JPEG / WebP are what users send
        upload = choose_input_upload(
            model, dataset.to_uint8(dataset.x_test[:UPLOAD_SAMPLES]), dataset.y_test[:UPLOAD_SAMPLES],
            max_accuracy_drop=settings.max_accuracy_drop,
            preprocessing={"mean": list(dataset.mean), "std": list(dataset.std)},
            confirm=(dataset.to_uint8(dataset.x_test), dataset.y_test))
        point = upload.choice
        work.write_json("edge_upload", {  # the curve the choice was made from (the demo plots it)
            "images": min(UPLOAD_SAMPLES, len(dataset.x_test)), "min_accuracy": upload.min_accuracy,
            "choice": point.as_dict(), "curve": [p.as_dict() for p in upload.curve]})
        _LOG.info(f"    edge upload: {point.format}{'' if point.quality is None else f' quality {point.quality}'}, "
            f"{point.payload_bytes:.0f} B mean, {point.accuracy:.2f}% (floor {upload.min_accuracy:.2f}%)")
    return emit_bundle(
        settings=settings, out=out, work=work.root, model=model, cuts=cuts, dataset=dataset, baseline=baseline,
        profile=profile, selection=selection, predictor_json=selection.predictor_json,
        entropy=entropy, edge_upload=upload)


# -- the pipeline ---------------------------------------------------------------------------------

class _Steps:
    """Runs the named steps in order: logs ``[i/n] name``, times each, and names the step and the
    model in any error."""

    def __init__(self, model: str, count: int) -> None:
        self.model, self.count = model, count
        self.seconds: dict[str, float] = {}

    def run(self, name: str, function: Callable, *args, **kwargs):
        _LOG.info(f"[{len(self.seconds) + 1}/{self.count}] {name}")
        start = time.perf_counter()
        try:
            result = function(*args, **kwargs)
        except SplitpackError as exc:
            raise type(exc)(f"compile step '{name}' on model {self.model!r}: {exc}") from exc
        self.seconds[name] = round(time.perf_counter() - start, 2)
        return result


def compile_bundle(settings: CompileSettings, out: Path, *, log: Callable[[str], None] | None = None) -> CompileResult:
    """Run every step of the compile pipeline; see the module docstring.

    Args:
        settings: validated compile settings.
        out: the bundle folder to write (replaced atomically); the archive goes next to it.
        log: also given every progress line, if set. The lines are INFO messages of the
            ``splitpack.compiler.*`` loggers (the command line prints those) either way.

    Returns:
        A ``CompileResult`` with ``bundle``, ``archive``, ``work``, ``step_seconds``,
        ``variants`` (the manifest's records) and ``dropped`` (variants that measured below the
        floor: id, accuracy, predicted_accuracy, reason).
    """
    out = Path(out)
    if log is None:
        return _compile(settings, out)
    with forward_messages(log):
        return _compile(settings, out)


def _compile(settings: CompileSettings, out: Path) -> CompileResult:
    work = _Work(out.parent / f"{out.name}.work" / settings.fingerprint())
    steps = _Steps(settings.model, 6)
    loaded, dataset = steps.run("load model and data", load_inputs, settings, work)
    model, input_shape = loaded.onnx_model, loaded.input_shape
    cuts = steps.run("find cuts", find_model_cuts, settings, model, input_shape)
    profile = steps.run("profile (ONNX Runtime, this host)", profile_cuts, work, model, input_shape, cuts)
    baseline = work.json("baseline", lambda: evaluate_model(model, dataset.x_test, dataset.y_test))
    _LOG.info(f"    baseline accuracy {baseline:.2f}% over {len(dataset.x_test)} test samples, {len(cuts)} cuts")

    trainer = _Trainer(model, cuts, dataset, work, settings)
    candidates = [cell_features(cut, codec) for cut in cuts.values() for codec in codec_space(cut.shape)]
    sampling = steps.run(f"sample and train up to {settings.budget} of {len(candidates)} cells"
                         + (f" in {settings.sample_seconds:g} s" if settings.sample_seconds else ""),
                         sample_cells, settings, trainer, candidates, baseline)
    work.path("predictor.json").write_text(sampling.predictor.to_json())
    selection = steps.run(f"select {settings.variants} variants and train them", select_and_train,
                          settings, work, trainer, sampling, candidates, profile=profile,
                          num_classes=dataset.num_classes, input_shape=input_shape, baseline=baseline)
    _LOG.info(f"    chosen: {', '.join(selection.chosen) or 'no split variant'} "
        f"(coverage regret mean {selection.coverage_regret_mean:.3f})")
    for dropped in selection.dropped:
        _LOG.info(f"    not in the bundle: {dropped.id}: {dropped.reason}")
    if len(selection.chosen) < settings.variants:
        _LOG.info(f"    {len(selection.chosen)} of {settings.variants} split variants met the accuracy floor; "
            "the bundle carries those, local and edge (raise --max-accuracy-drop or --final-epochs for more)")
    result = steps.run("entropy tables, input upload, emit, TFLite, bundle and verify", emit_variants,
                       settings, out, work, model=model, cuts=cuts, dataset=dataset, baseline=baseline,
                       profile=profile, selection=selection)
    return CompileResult(bundle=str(out), archive=result["archive"], work=str(work.root), step_seconds=steps.seconds,
                         variants=result["variants"], dropped=[asdict(d) for d in selection.dropped])
