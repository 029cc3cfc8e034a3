"""The ``splitpack`` command line. Only this module catches errors broadly: it prints the
message of a ``SplitpackError`` and exits with status 2 (1 for a bug)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from splitpack.errors import InternalError, SplitpackError

__all__ = ["main", "build_parser", "format_table"]


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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="splitpack", description=__doc__.splitlines()[0])
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``splitpack`` console script."""
    args = build_parser().parse_args(argv)
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
