"""Train and measure a grid of (cut, codec) cells: the ground truth the accuracy predictor is
judged against, and the source of its training samples inside ``compile``.

Each cell is calibrated or trained (``compiler.train``), spliced into ONNX
(``compiler.splice``) and measured through ONNX Runtime (``compiler.evaluate``). A cell is
written once per wire coding: ``bitpack`` and ``entropy`` (tables calibrated on the training
codes, ``formats.entropy``) share one accuracy, and ``payload_bytes`` is the true size of the
wire message of one test sample, header included (mean and p95 over the test set) — in entropy
mode per message the smaller of the entropy-coded and bit-packed one, as the device sends it;
``entropy_only_payload_bytes`` is the mean of the entropy-coded messages alone. A
``finetuned`` codec reuses the ``learned`` unit of the same projection trained just before it
and fine-tunes only the tail, so its ``train_seconds`` counts both and ``tail_seconds`` the
fine-tuning alone; neither counts the head's features and the tail's conversion to torch, which
are computed once per cut and shared by its cells. The result file is rewritten after every cell, so an interrupted run resumes
where it stopped when started again with the same settings.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from splitpack.compiler.codec import (
    CodecSpec, check_codec_fits, codec_space, codes_shape, compression_ratio, cut_channels, kept_channels,
)  # fmt: skip
from splitpack.compiler.cuts import Cut
from splitpack.compiler.evaluate import evaluate_model, evaluate_split
from splitpack.compiler.splice import build_variant
from splitpack.compiler.train import DEFAULT_EPOCHS, TrainedCodec, compute_cut_features, frozen_tail, train_codec
from splitpack.errors import InvalidConfigError
from splitpack.formats.variants import WIRE_ID_PLACEHOLDER, split_variant_id
from splitpack.formats.wire import message_bytes

__all__ = ["CODINGS", "Cell", "payload_bytes_of", "measure_cell", "run_grid", "parse_cut_selection"]

GRID_FORMAT = "splitpack-grid/2"


CODINGS = ("bitpack", "entropy")


@dataclass(frozen=True)
class Cell:
    """One measured (cut, codec, coding) cell."""

    cut: str
    cut_name: str
    cut_index: int
    cut_position: float
    cut_bytes: int
    codec: str
    method: str
    coding: str
    channels: int
    stride: int
    bits: int
    channel_fraction: float
    compression_ratio: float
    payload_bytes: float
    payload_bytes_p95: float
    packed_payload_bytes: int
    entropy_only_payload_bytes: float | None
    accuracy: float
    train_seconds: float
    train_examples: int
    tail_seconds: float
    kept: str


def payload_bytes_of(cut: Cut, codec: CodecSpec) -> int:
    """Bytes of one wire message carrying one sample's codes (header included)."""
    return message_bytes(
        (1,) + codes_shape(cut.shape, codec), codec.bits,
        bundle_id=WIRE_ID_PLACEHOLDER, variant_id=split_variant_id(cut.index, codec.name),
    )


def _entropy_payloads(cut: Cut, codec: CodecSpec, head: onnx.ModelProto, dataset, test_codes):
    """(entropy-coded, sent) wire bytes of each test sample's message in entropy mode
    (:func:`~splitpack.runtimes.backends.entropy_message_sizes`), the tables calibrated on the
    codes of training inputs as ``compile`` calibrates them."""
    from splitpack.compiler.emit import entropy_calibration_codes
    from splitpack.runtimes.backends import entropy_message_sizes
    from splitpack.formats.entropy import calibrate_tables

    tables = calibrate_tables(entropy_calibration_codes(head, dataset), codec.bits)
    return entropy_message_sizes(test_codes, bits=codec.bits, tables=tables,
                                 variant_id=split_variant_id(cut.index, codec.name))


def measure_cell(model: onnx.ModelProto, features, codec: CodecSpec, dataset, *, epochs: int, seed: int,
                 progress: bool, tail_module=None, start_from: TrainedCodec | None = None,
                 codings: tuple[str, ...] = ("bitpack",),
                 ) -> tuple[list[Cell], TrainedCodec, tuple[onnx.ModelProto, onnx.ModelProto]]:
    """Calibrate or train one unit at ``features.cut``, emit its head and tail, and measure its
    accuracy in ONNX Runtime and its payload under each of ``codings``.

    Returns:
        ``(cells, trained, (head, tail))``: one cell per coding, in the order of ``codings``.
    """
    cut = features.cut
    trained = train_codec(features, codec, epochs=epochs, seed=seed, progress=progress, tail_module=tail_module,
                          start_from=start_from)
    head, tail = build_variant(model, cut, codec, trained.encoder, trained.decoder, trained.tail_weights)
    evaluation = evaluate_split(head, tail, dataset.x_test, dataset.y_test, codec.bits)
    channels = cut_channels(cut.shape)
    packed = payload_bytes_of(cut, codec)
    unknown = [coding for coding in codings if coding not in CODINGS]
    if unknown:
        raise InvalidConfigError(f"coding {unknown[0]!r} is unknown; allowed: {', '.join(CODINGS)}")
    entropy_coded, sent = (_entropy_payloads(cut, codec, head, dataset, evaluation.codes)
                           if "entropy" in codings else (None, None))
    cells = []
    for coding in codings:
        sizes = sent if coding == "entropy" else np.full(len(evaluation.codes), packed)
        cells.append(Cell(
            cut=cut.label, cut_name=cut.name, cut_index=cut.index, cut_position=cut.position,
            cut_bytes=cut.bytes_per_sample, codec=codec.name, method=codec.method, coding=coding,
            channels=kept_channels(cut.shape, codec), stride=codec.stride, bits=codec.bits,
            channel_fraction=kept_channels(cut.shape, codec) / channels,
            compression_ratio=compression_ratio(cut.shape, codec), payload_bytes=float(sizes.mean()),
            payload_bytes_p95=float(np.percentile(sizes, 95)), packed_payload_bytes=packed,
            entropy_only_payload_bytes=float(entropy_coded.mean()) if coding == "entropy" else None,
            accuracy=evaluation.accuracy, train_seconds=trained.train_seconds,
            train_examples=trained.train_examples, tail_seconds=trained.tail_seconds, kept=",".join(trained.kept),
        ))
    return cells, trained, (head, tail)


def _write_json(path: Path, payload: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, indent=1))
    os.replace(temporary, path)


def run_grid(
    model: onnx.ModelProto,
    all_cuts: list[Cut],
    cuts: list[Cut],
    dataset,
    *,
    codecs_for: Callable[[Cut], list[CodecSpec]],
    out: Path,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    progress: bool = True,
    settings: dict | None = None,
    codings: tuple[str, ...] = CODINGS,
    input_baselines: Callable[[], list[dict]] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Measure every (cut, codec) cell and write ``out`` (JSON) after each one.

    Args:
        model: the checked ONNX model.
        all_cuts: every valid cut (defines the full space stated in the result).
        cuts: the cuts to measure.
        dataset: a ``splitpack.datasets.Dataset``.
        codecs_for: the codecs to train at a cut (e.g. ``codec_ladder`` of its shape).
        out: the grid JSON path; an existing file with the same settings is resumed.
        epochs, seed: training settings.
        settings: extra identifying settings recorded (model spec, data spec).
        codings: the wire codings each cell is measured with (one cell each).
        input_baselines: computes the ``input_baselines`` list (the input uploaded as an image
            at several qualities, measured through the model) when the grid lacks it.

    Returns:
        The grid document that was written.
    """
    plans = {cut.label: codecs_for(cut) for cut in cuts}
    for cut in cuts:
        for codec in plans[cut.label]:
            check_codec_fits(cut.shape, codec, cut.label)
    identity = {"format": GRID_FORMAT, "epochs": epochs, "seed": seed, "train_examples": len(dataset.x_train),
                "test_examples": len(dataset.x_test), "codings": list(codings), **(settings or {})}
    done: dict[tuple[str, str], list[dict]] = {}
    previous_baselines = None
    if out.exists():
        previous = json.loads(out.read_text())
        if all(previous.get(key) == value for key, value in identity.items()):
            for cell in previous.get("cells", []):
                done.setdefault((cell["cut"], cell["codec"]), []).append(cell)
            previous_baselines = previous.get("input_baselines")
            log(f"resuming {out}: {len(done)} units already measured")
    baseline = evaluate_model(model, dataset.x_test, dataset.y_test)
    space_sizes = [len(codec_space(cut.shape)) for cut in all_cuts]
    document = {
        **identity,
        "baseline_accuracy": baseline,
        "input_shape": list(dataset.input_shape),
        "num_classes": dataset.num_classes,
        "space": {"cuts": len(all_cuts), "codecs_per_cut": space_sizes, "cells": sum(space_sizes)},
        "cuts": [cut.to_dict() for cut in cuts],
        "input_baselines": previous_baselines,
        "cells": [],
    }
    def write() -> None:
        """The document so far, plus every resumed cell not yet reached (so that a resumed run
        that is interrupted loses nothing it had)."""
        written = {(cell["cut"], cell["codec"]) for cell in document["cells"]}
        pending = [cell for key, cells in done.items() if key not in written for cell in cells]
        _write_json(out, {**document, "cells": document["cells"] + pending})

    if input_baselines is not None and previous_baselines is None:
        document["input_baselines"] = input_baselines()
        write()
    for cut in cuts:
        plan = plans[cut.label]
        todo = [codec for codec in plan if (cut.label, codec.name) not in done]
        features = compute_cut_features(model, cut, dataset) if todo else None
        tail_module = frozen_tail(features.tail) if todo else None
        learned: dict[CodecSpec, TrainedCodec] = {}
        for codec in plan:
            if (cut.label, codec.name) in done:
                document["cells"].extend(done[(cut.label, codec.name)])
                continue
            start_from = learned.get(codec.with_method("learned")) if codec.trains_tail else None
            cells, trained, _ = measure_cell(model, features, codec, dataset, epochs=epochs, seed=seed,
                                             progress=progress, tail_module=tail_module, start_from=start_from,
                                             codings=codings)
            if codec.method == "learned":
                learned[codec] = trained
            document["cells"].extend(asdict(cell) for cell in cells)
            sizes = ", ".join(f"{cell.coding} {cell.payload_bytes:.0f} B" for cell in cells)
            log(f"{cut.label:>24} {codec.name:>10}  ratio {cells[0].compression_ratio:7.1f}x  "
                f"accuracy {cells[0].accuracy:6.2f}%  {sizes}  ({cells[0].train_seconds:.1f} s)")
            write()
    write()
    return document


def parse_cut_selection(text: str, cuts: list[Cut]) -> list[Cut]:
    """``all`` or a comma-separated list of cut labels / tensor names."""
    from splitpack.compiler.cuts import resolve_cut

    if text.strip() == "all":
        return list(cuts)
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise InvalidConfigError("--cuts is empty; give 'all' or a comma-separated list of cuts")
    return [resolve_cut(cuts, name) for name in names]
