"""What the ``splitpack`` sub-commands share: the model and data set options, loading them,
number lists, text tables and a bundle's variant table (``inspect``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from splitpack.errors import InvalidConfigError, UnsupportedCutError

__all__ = ["require_plotting", "format_table", "add_model_args", "load_model_args", "add_data_args", "parse_floats",
           "load_with_data", "INSPECT_HEADERS", "inspect_rows", "print_inspect"]


def require_plotting(what: str) -> None:
    """Refuse before any work is done when ``what`` will draw plots and matplotlib (the
    ``bench`` extra) is missing, rather than after a long run.

    Raises:
        InvalidConfigError: naming the extra to install.
    """
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise InvalidConfigError(f"{what} draws its plots with matplotlib, which is not installed "
                                 "here; pip install 'splitpack[bench]' (or leave out --plot)")


def format_table(headers: list[str], rows: list[list[object]]) -> str:
    """Left-aligned text columns; numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) if rows else False for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        line = "  ".join(v.rjust(w) if numeric[i] else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths)))
        lines.append(line.rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="path/to/file.py:factory, package.module:factory, or model.onnx")
    parser.add_argument("--weights", help="state_dict file for a torch model (loaded with weights_only=True)")
    parser.add_argument("--input-shape", help="full input shape, batch first, e.g. 1x3x224x224")


def load_model_args(args):
    from splitpack.compiler.export import load_model, parse_input_shape

    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    return load_model(args.model, weights=args.weights, input_shape=shape)


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="digits", help="digits | npz:PATH | imagefolder:PATH (default: digits)")
    parser.add_argument("--image-size", type=int, help="resize images to this size (imagefolder; digits: 32)")
    parser.add_argument("--mean", help="per-channel mean, comma-separated (e.g. 0.485,0.456,0.406)")
    parser.add_argument("--std", help="per-channel std, comma-separated")
    parser.add_argument("--train-limit", type=int, help="use at most N training examples")
    parser.add_argument("--test-limit", type=int, help="use at most N test examples")


def parse_floats(text: str | None, option: str):
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise InvalidConfigError(f"{option} {text!r} is not a comma-separated list of numbers, e.g. 0.5,0.5,0.5") from None


def load_with_data(args):
    """Load the data set, then the model at the data set's input shape; check they fit."""
    from splitpack.compiler.export import load_model, parse_input_shape
    from splitpack.compiler.graph import graph_inputs
    from splitpack.datasets import check_fits_model, load_dataset

    dataset = load_dataset(
        args.data, image_size=args.image_size, mean=parse_floats(args.mean, "--mean"), std=parse_floats(args.std, "--std"),
        train_limit=args.train_limit, test_limit=args.test_limit,
    )
    shape = parse_input_shape(args.input_shape) if args.input_shape else (1,) + tuple(dataset.input_shape)
    loaded = load_model(args.model, weights=args.weights, input_shape=shape)
    inputs = graph_inputs(loaded.onnx_model)
    if len(inputs) != 1 or len(loaded.onnx_model.graph.output) != 1:
        raise UnsupportedCutError(
            f"model {args.model!r} has {len(inputs)} inputs and {len(loaded.onnx_model.graph.output)} outputs; "
            "training compression units needs one input and one (class score) output. "
            "`splitpack cuts` and `splitpack split` support several."
        )
    output_dims = loaded.onnx_model.graph.output[0].type.tensor_type.shape.dim
    classes = output_dims[-1].dim_value if output_dims and output_dims[-1].HasField("dim_value") else dataset.num_classes
    check_fits_model(dataset, loaded.input_shape, classes)
    return loaded, dataset


INSPECT_HEADERS = ["variant", "kind", "cut", "ratio", "bits", "payload B", "wire", "accuracy %",
                   "predicted %", "head ms", "tail ms", "TFLite"]


def _wire(variant) -> str:
    """How a variant's messages travel: codes bit-packed or entropy-coded, the input's upload."""
    if variant.quantization is not None:
        return variant.quantization.coding
    if variant.kind == "edge":
        upload = variant.upload
        if upload is None:
            return "zlib"
        return upload.format + ("" if upload.quality is None else f" q{upload.quality}")
    return "-"


def inspect_rows(manifest) -> list[list]:
    """One table row per variant of a manifest."""
    rows = []
    for v in manifest.variants:
        rows.append([
            v.id, v.kind, v.cut_label or "-", round(v.compression_ratio, 1),
            v.quantization.bits if v.quantization else "-", v.payload_bytes, _wire(v), round(v.accuracy, 2),
            "-" if v.predicted_accuracy is None else round(v.predicted_accuracy, 2),
            round(v.latency.head_ms + v.latency.encode_ms, 3), round(v.latency.decode_ms + v.latency.tail_ms, 3),
            "yes" if v.artifacts.head_tflite else "-",
        ])
    return rows


def print_inspect(path: Path) -> None:
    """Print a bundle's id, model, baseline and variant table (as ``splitpack inspect``)."""
    from splitpack.formats.bundle import read_bundle

    manifest = read_bundle(path).manifest
    print(f"bundle {manifest.bundle_id[:16]} of {manifest.model_id}: baseline accuracy {manifest.baseline_accuracy:.2f}%")
    print(format_table(INSPECT_HEADERS, inspect_rows(manifest)))
