"""Train and measure a grid of (cut, codec) cells: the ground truth the accuracy predictor is
judged against, and the source of its training samples inside ``compile``.

Each cell is trained (``compiler.train``), spliced into ONNX (``compiler.splice``) and measured
through ONNX Runtime with bit-packing (``compiler.evaluate``). The result file is rewritten
after every cell, so an interrupted run resumes where it stopped when started again with the
same settings.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import onnx

from splitpack.compiler.codec import CodecSpec, check_codec_fits, codec_space, codes_shape, compression_ratio
from splitpack.compiler.cuts import Cut
from splitpack.compiler.evaluate import evaluate_model, evaluate_split
from splitpack.compiler.splice import build_variant
from splitpack.compiler.train import DEFAULT_EPOCHS, TrainedCodec, compute_cut_features, frozen_tail, train_codec
from splitpack.errors import InvalidConfigError
from splitpack.runtimes.backends import WIRE_BUNDLE_ID_LENGTH
from splitpack.runtimes.wire import message_bytes

__all__ = ["Cell", "variant_id", "payload_bytes_of", "measure_cell", "run_grid", "parse_cut_selection"]

GRID_FORMAT = "splitpack-grid/1"


@dataclass(frozen=True)
class Cell:
    """One measured (cut, codec) cell."""

    cut: str
    cut_name: str
    cut_index: int
    cut_position: float
    cut_bytes: int
    codec: str
    channels: int
    stride: int
    bits: int
    channel_fraction: float
    compression_ratio: float
    payload_bytes: int
    accuracy: float
    train_seconds: float
    train_examples: int


def variant_id(cut: Cut, codec: CodecSpec) -> str:
    """Short, file-system-safe id of a split variant, e.g. ``cut03-c8s1b4``."""
    return f"cut{cut.index:02d}-{codec}"


def payload_bytes_of(cut: Cut, codec: CodecSpec) -> int:
    """Bytes of one wire message carrying one sample's codes (header included)."""
    return message_bytes(
        (1,) + codes_shape(cut.shape, codec), codec.bits,
        bundle_id="0" * WIRE_BUNDLE_ID_LENGTH, variant_id=variant_id(cut, codec),
    )


def measure_cell(model: onnx.ModelProto, features, codec: CodecSpec, dataset, *, epochs: int, seed: int,
                 progress: bool, tail_module=None) -> tuple[Cell, TrainedCodec, tuple[onnx.ModelProto, onnx.ModelProto]]:
    """Train one unit at ``features.cut``, emit its head and tail, measure its accuracy in ONNX Runtime."""
    cut = features.cut
    trained = train_codec(features, codec, epochs=epochs, seed=seed, progress=progress, tail_module=tail_module)
    head, tail = build_variant(model, cut, codec, trained.encoder, trained.decoder)
    evaluation = evaluate_split(head, tail, dataset.x_test, dataset.y_test, codec.bits)
    channels = cut.shape[0] if len(cut.shape) == 3 else cut.shape[-1]
    cell = Cell(
        cut=cut.label, cut_name=cut.name, cut_index=cut.index, cut_position=cut.position,
        cut_bytes=cut.bytes_per_sample, codec=codec.name, channels=codec.channels, stride=codec.stride,
        bits=codec.bits, channel_fraction=codec.channels / channels,
        compression_ratio=compression_ratio(cut.shape, codec), payload_bytes=payload_bytes_of(cut, codec),
        accuracy=evaluation.accuracy, train_seconds=trained.train_seconds, train_examples=trained.train_examples,
    )
    return cell, trained, (head, tail)


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

    Returns:
        The grid document that was written.
    """
    plans = {cut.label: codecs_for(cut) for cut in cuts}
    for cut in cuts:
        for codec in plans[cut.label]:
            check_codec_fits(cut.shape, codec, cut.label)
    identity = {"format": GRID_FORMAT, "epochs": epochs, "seed": seed, **(settings or {})}
    done: dict[tuple[str, str], dict] = {}
    if out.exists():
        previous = json.loads(out.read_text())
        if all(previous.get(key) == value for key, value in identity.items()):
            done = {(cell["cut"], cell["codec"]): cell for cell in previous.get("cells", [])}
            log(f"resuming {out}: {len(done)} cells already measured")
    baseline = evaluate_model(model, dataset.x_test, dataset.y_test)
    space_sizes = [len(codec_space(cut.shape)) for cut in all_cuts]
    document = {
        **identity,
        "baseline_accuracy": baseline,
        "input_shape": list(dataset.input_shape),
        "num_classes": dataset.num_classes,
        "space": {"cuts": len(all_cuts), "codecs_per_cut": space_sizes, "cells": sum(space_sizes)},
        "cuts": [cut.to_dict() for cut in cuts],
        "cells": [],
    }
    for cut in cuts:
        plan = plans[cut.label]
        todo = [codec for codec in plan if (cut.label, codec.name) not in done]
        features = compute_cut_features(model, cut, dataset) if todo else None
        tail_module = frozen_tail(features.tail) if todo else None
        for codec in plan:
            if (cut.label, codec.name) in done:
                document["cells"].append(done[(cut.label, codec.name)])
                continue
            cell, _, _ = measure_cell(model, features, codec, dataset, epochs=epochs, seed=seed,
                                      progress=progress, tail_module=tail_module)
            document["cells"].append(asdict(cell))
            log(f"{cut.label:>24} {codec.name:>10}  ratio {cell.compression_ratio:7.1f}x  "
                f"accuracy {cell.accuracy:6.2f}%  ({cell.train_seconds:.1f} s)")
            _write_json(out, document)
    _write_json(out, document)
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
