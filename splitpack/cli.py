"""The ``splitpack`` command line. Only this module catches errors broadly: it prints the
message of a ``SplitpackError`` and exits with status 2 (1 for a bug)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from splitpack.errors import InternalError, InvalidConfigError, SplitpackError, UnsupportedCutError
from splitpack.quiet import quiet_third_party, show_project_messages

__all__ = ["main", "build_parser", "format_table"]

DEFAULT_EPOCHS_HINT = 6  # compiler.train.DEFAULT_EPOCHS, repeated so that --help needs no torch


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


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="path/to/file.py:factory, package.module:factory, or model.onnx")
    parser.add_argument("--weights", help="state_dict file for a torch model (loaded with weights_only=True)")
    parser.add_argument("--input-shape", help="full input shape, batch first, e.g. 1x3x224x224")


def _load(args):
    from splitpack.compiler.export import load_model, parse_input_shape

    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    return load_model(args.model, weights=args.weights, input_shape=shape)


def _cmd_cuts(args) -> int:
    from splitpack.compiler.cuts import find_cuts

    loaded = _load(args)
    cuts = find_cuts(loaded.onnx_model, loaded.input_shape)
    if args.json:
        print(json.dumps([cut.to_dict() for cut in cuts], indent=2))
        return 0
    print(f"{len(cuts)} valid cuts of {args.model} at input {'x'.join(map(str, loaded.input_shape))}")
    rows = [
        [
            cut.index,
            cut.label,
            "x".join(map(str, cut.shape)),
            cut.bytes_per_sample,
            cut.head_flops,
            cut.tail_flops,
            cut.head_param_bytes,
            cut.tail_param_bytes,
            f"{100 * cut.position:.1f}%",
        ]
        for cut in cuts
    ]
    print(format_table(["#", "cut", "shape", "bytes", "head FLOPs", "tail FLOPs", "head params B",
                        "tail params B", "position"], rows))
    return 0


def _cmd_split(args) -> int:
    import onnx

    from splitpack.compiler.cuts import find_cuts, resolve_cut
    from splitpack.compiler.split import split_at

    loaded = _load(args)
    cut = resolve_cut(find_cuts(loaded.onnx_model, loaded.input_shape), args.cut, loaded.onnx_model)
    head, tail = split_at(loaded.onnx_model, cut)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(head, str(out / "head.onnx"))
    onnx.save(tail, str(out / "tail.onnx"))
    print(f"split at {cut.label} ({cut.name}): wrote {out / 'head.onnx'} and {out / 'tail.onnx'}")
    return 0


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="digits", help="digits | npz:PATH | imagefolder:PATH (default: digits)")
    parser.add_argument("--image-size", type=int, help="resize images to this size (imagefolder; digits: 32)")
    parser.add_argument("--mean", help="per-channel mean, comma-separated (e.g. 0.485,0.456,0.406)")
    parser.add_argument("--std", help="per-channel std, comma-separated")
    parser.add_argument("--train-limit", type=int, help="use at most N training examples")
    parser.add_argument("--test-limit", type=int, help="use at most N test examples")


def _floats(text: str | None, option: str):
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise InvalidConfigError(f"{option} {text!r} is not a comma-separated list of numbers, e.g. 0.5,0.5,0.5") from None


def _load_with_data(args):
    """Load the data set, then the model at the data set's input shape; check they fit."""
    from splitpack.compiler.export import load_model, parse_input_shape
    from splitpack.compiler.graph import graph_inputs
    from splitpack.datasets import check_fits_model, load_dataset

    dataset = load_dataset(
        args.data, image_size=args.image_size, mean=_floats(args.mean, "--mean"), std=_floats(args.std, "--std"),
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


def _first_middle_last(items: list) -> list:
    return [items[i] for i in sorted({0, len(items) // 2, len(items) - 1})]


def _parse_choices(option: str, text: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [part for part in chosen if part not in allowed]
    if unknown or not chosen:
        raise InvalidConfigError(f"{option} {text!r}: {', '.join(map(repr, unknown)) or 'nothing'} given; allowed: "
                                 f"a comma-separated list of {', '.join(allowed)}")
    return chosen


def _codec_chooser(text: str, methods: str = "learned"):
    """The codecs of a grid at a cut: for ``calibrated``, ``q8``..``q1``; for ``learned`` the
    ``--codecs`` choice (``ladder`` (default), ``ladder:N``, ``all`` or an explicit list); for
    ``finetuned`` the same learned codecs with the tail fine-tuned, each right after its unit."""
    from splitpack.compiler.codec import METHODS, calibrated_codecs, codec_ladder, codec_space, parse_codecs

    chosen = _parse_choices("--methods", methods, METHODS)
    if text.strip().startswith("ladder"):
        count = text.strip().partition(":")[2]
        if count and not count.isdigit():
            raise InvalidConfigError(f"--codecs {text!r}: write ladder or ladder:N with N a number of codecs, e.g. ladder:12")
        learned = lambda cut: codec_ladder(cut.shape, int(count) if count else 16)  # noqa: E731
    else:
        codecs = parse_codecs(text)
        learned = (lambda cut: codec_space(cut.shape)) if codecs is None else (lambda cut: codecs)  # noqa: E731

    def codecs_for(cut):
        plan = calibrated_codecs() if "calibrated" in chosen else []
        for codec in learned(cut):
            if codec.method == "calibrated":
                continue  # listed above when asked for
            unit = codec.with_method("learned")
            plan += [unit] if "learned" in chosen or "finetuned" in chosen else []
            plan += [unit.with_method("finetuned")] if "finetuned" in chosen else []
        return list(dict.fromkeys(plan))

    return codecs_for


def _quick_plan(plan: list) -> list:
    """The first calibrated codec and the first, middle and last learned unit (with their
    fine-tuned siblings) of a grid plan."""
    units = list(dict.fromkeys(codec.with_method("learned") for codec in plan if codec.method != "calibrated"))
    keep = set(_first_middle_last(units)) if units else set()
    calibrated = [codec for codec in plan if codec.method == "calibrated"][:1]
    return calibrated + [codec for codec in plan if codec.method != "calibrated" and codec.with_method("learned") in keep]


def _input_baselines(model, dataset, qualities: tuple[int, ...]) -> list[dict]:
    """The test images uploaded as JPEG and WebP (where Pillow has it) at each quality and as
    lossless PNG, measured through ``model``: the grid's ``input_baselines``."""
    from PIL import features

    from splitpack.compiler.input_upload import choose_input_upload

    formats = ("jpeg", "webp") if features.check("webp") else ("jpeg",)
    choice = choose_input_upload(
        model, dataset.to_uint8(dataset.x_test), dataset.y_test, max_accuracy_drop=1.0,
        preprocessing={"mean": list(dataset.mean), "std": list(dataset.std), "input_range": 255.0},
        formats=formats, qualities=qualities, lossless="png")
    return [point.as_dict() for point in choice.curve]


def _cmd_bench_grid(args) -> int:
    from splitpack.compiler.cuts import find_cuts
    from splitpack.compiler.grid import CODINGS, parse_cut_selection, run_grid
    from splitpack.plots import plot_grid_bytes

    loaded, dataset = _load_with_data(args)
    all_cuts = find_cuts(loaded.onnx_model, loaded.input_shape)
    cuts = parse_cut_selection(args.cuts, all_cuts)
    codecs_for = _codec_chooser(args.codecs, args.methods)
    codings = _parse_choices("--codings", args.codings, CODINGS)
    epochs = args.epochs
    if args.quick:  # a smoke run: first, middle and last cut and learned unit, q8, two epochs
        cuts = _first_middle_last(cuts)
        codecs_for = lambda cut, choose=codecs_for: _quick_plan(choose(cut))  # noqa: E731
        epochs = min(epochs, 2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    input_baselines = None
    if not args.no_input_baselines:
        qualities = (10, 50, 90) if args.quick else tuple(range(5, 100, 10))
        input_baselines = lambda: _input_baselines(loaded.onnx_model, dataset, qualities)  # noqa: E731
    document = run_grid(
        loaded.onnx_model, all_cuts, cuts, dataset, codecs_for=codecs_for, out=out, epochs=epochs,
        seed=args.seed, progress=not args.no_progress, codings=codings, input_baselines=input_baselines,
        settings={"model": args.model, "data": args.data, "codecs": args.codecs, "methods": args.methods,
                  "quick": bool(args.quick)},
    )
    if args.plot:
        plot_grid_bytes(document, Path(args.plot))
    print(f"{len(document['cells'])} cells measured, baseline {document['baseline_accuracy']:.2f}%: wrote {out}")
    return 0


def _cmd_bench_predictor(args) -> int:
    from splitpack.plots import plot_predictor
    from splitpack.predictors.replay import LatencySetting, replay_grid

    path = Path(args.grid)
    if not path.is_file():
        raise InvalidConfigError(f"grid file {str(path)!r} does not exist; write one with `splitpack bench grid`")
    try:
        grid = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidConfigError(f"grid file {str(path)!r} is not JSON: {exc}") from None
    try:
        slowdowns = tuple(float(v) for v in args.device_slowdowns.split(","))
    except ValueError:
        slowdowns = ()
    if not slowdowns or min(slowdowns) <= 0:
        raise InvalidConfigError(f"--device-slowdowns {args.device_slowdowns!r} is malformed; "
                                 "write positive numbers joined by commas, e.g. 1,3,10,30,100")
    setting = LatencySetting(args.device_gflops, args.edge_gflops, args.rtt_ms, slowdowns)
    report = replay_grid(grid, args.budget, tolerance=args.tolerance, max_drop=args.max_accuracy_drop,
                         setting=setting)
    report["grid"] = str(path)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    if args.plot:
        plot_predictor(report, Path(args.plot))
    rows = [[r["method"], r["trained_cells"], r["cost_examples"], r["mae"], r["mae_near_floor"], r["max_error"],
             r["knee_error_steps_max"], r["plan_accuracy_loss_max"]] for r in [report] + report["baselines"]]
    print(format_table(["method", "cells measured", "cost (examples)", "MAE (pts)", "MAE near floor", "max error",
                        "knee error (steps, max)", "plan loss max (pts)"], rows))
    print(f"transfer: {report['free_signal_cells']} of its cells are calibrated (evaluation only); "
          f"{report['within_one_sigma']:.0%} of the scored cells within +-1 sigma")
    print(f"cost ratio {report['cost_ratio']:.1f}x against the whole space ({report['space_cost_note']}), "
          f"{report['cost_ratio_grid']:.1f}x against the measured grid; wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(
        prog="splitpack", description="Compile a trained model into a bundle of head/tail variants for end-edge co-inference.")
    commands = parser.add_subparsers(dest="command", required=True)

    cuts = commands.add_parser("cuts", help="list every valid cut of a model")
    _add_model_args(cuts)
    cuts.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    cuts.set_defaults(handler=_cmd_cuts)

    split = commands.add_parser("split", help="write head.onnx and tail.onnx for one cut")
    _add_model_args(split)
    split.add_argument("--cut", required=True, help="tensor name or module path (see `splitpack cuts`)")
    split.add_argument("--out", required=True, help="output folder")
    split.set_defaults(handler=_cmd_split)

    bench = commands.add_parser("bench", help="benchmarks that write JSON").add_subparsers(dest="bench", required=True)
    grid = bench.add_parser("grid", help="train and measure every (cut, codec) cell")
    _add_model_args(grid)
    _add_data_args(grid)
    grid.add_argument("--cuts", default="all", help="'all' or comma-separated cut names")
    grid.add_argument("--codecs", default="ladder",
                      help="'ladder' or 'ladder:N' (16 or N codecs spanning each cut's ratios), 'all' (each cut's whole "
                           "space) or a list such as c4s1b8,c2s2b4")
    grid.add_argument("--methods", default="calibrated,learned,finetuned",
                      help="which of calibrated (q8..q1, no training), learned (the --codecs units, model frozen) "
                           "and finetuned (the same units with the tail fine-tuned) to measure")
    grid.add_argument("--codings", default="bitpack,entropy",
                      help="wire codings each cell is measured with: bitpack, entropy (one cell each)")
    grid.add_argument("--no-input-baselines", action="store_true",
                      help="skip the input-upload curve (JPEG/WebP at qualities 5..95, lossless PNG)")
    grid.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS_HINT, help="training epochs per cell")
    grid.add_argument("--seed", type=int, default=0)
    grid.add_argument("--out", required=True, help="grid JSON to write (resumed when it exists)")
    grid.add_argument("--plot", help="PNG of accuracy against bytes per image, one panel per cut")
    grid.add_argument("--quick", action="store_true", help="smoke run: 3 cuts x 3 codecs, 2 epochs")
    grid.add_argument("--no-progress", action="store_true", help="no progress bars")
    grid.set_defaults(handler=_cmd_bench_grid)

    predictor = bench.add_parser("predictor", help="replay sampling and prediction against a measured grid")
    predictor.add_argument("--grid", required=True, help="grid JSON from `splitpack bench grid`")
    predictor.add_argument("--budget", type=int, default=20, help="cells the predictor may train (default 20, as compile)")
    predictor.add_argument("--tolerance", type=float, default=1.0, help="accuracy drop (points) that defines the knee")
    predictor.add_argument("--max-accuracy-drop", type=float, default=1.0, help="planning floor below the baseline")
    predictor.add_argument("--device-gflops", type=float, default=2.0,
                           help="device compute at slowdown 1 for the planning replay (default 2 GFLOP/s)")
    predictor.add_argument("--device-slowdowns", default="1,3,10,30,100",
                           help="device slowdowns the plans are scored at (default 1,3,10,30,100)")
    predictor.add_argument("--edge-gflops", type=float, default=50.0, help="edge compute for the planning replay")
    predictor.add_argument("--rtt-ms", type=float, default=10.0, help="round-trip time for the planning replay")
    predictor.add_argument("--out", required=True, help="pred.json to write")
    predictor.add_argument("--plot", help="PNG of measured (solid) and predicted (dashed) curves per cut")
    predictor.set_defaults(handler=_cmd_bench_predictor)

    from splitpack.compile_cli import add_bundle_commands
    from splitpack.runtimes.bench_runtime import add_bench_runtime_commands
    from splitpack.runtimes.bench_serve import add_bench_serve_command
    from splitpack.runtimes.commands import add_runtime_commands

    add_bundle_commands(commands, bench)
    add_bench_runtime_commands(bench)
    add_bench_serve_command(bench)
    add_runtime_commands(commands)
    _add_verbose(parser)
    return parser


def _add_verbose(parser: argparse.ArgumentParser, default=False) -> None:
    """``--verbose`` on the top-level parser and on every sub-command, so that it may follow the
    command name; a sub-command's flag leaves the top-level value alone unless given."""
    parser.add_argument("--verbose", action="store_true", default=default,
                        help="also show third-party libraries' warnings and log lines")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                _add_verbose(command, argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``splitpack`` console script."""
    args = build_parser().parse_args(argv)
    quiet_third_party(args.verbose)  # before a handler imports torch or LiteRT
    show_project_messages(args.verbose)
    try:
        return args.handler(args)
    except InternalError as exc:
        print(f"splitpack: internal error (please report): {exc}", file=sys.stderr)
        return 1
    except SplitpackError as exc:
        print(f"splitpack: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
