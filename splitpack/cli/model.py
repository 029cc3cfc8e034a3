"""Sub-commands on a model alone: ``cuts`` (every valid cut) and ``split`` (head.onnx and
tail.onnx at one cut)."""

from __future__ import annotations

import json
from pathlib import Path

from splitpack.cli.common import add_model_args, format_table, load_model_args

__all__ = ["add_model_commands"]


def add_model_commands(commands) -> None:
    """Add ``cuts`` and ``split`` to the CLI's sub-parsers."""
    cuts = commands.add_parser("cuts", help="list every valid cut of a model")
    add_model_args(cuts)
    cuts.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    cuts.set_defaults(handler=_cmd_cuts)

    split = commands.add_parser("split", help="write head.onnx and tail.onnx for one cut")
    add_model_args(split)
    split.add_argument("--cut", required=True, help="tensor name or module path (see `splitpack cuts`)")
    split.add_argument("--out", required=True, help="output folder")
    split.set_defaults(handler=_cmd_split)


def _cmd_cuts(args) -> int:
    from splitpack.compiler.cuts import find_cuts

    loaded = load_model_args(args)
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

    loaded = load_model_args(args)
    cut = resolve_cut(find_cuts(loaded.onnx_model, loaded.input_shape), args.cut, loaded.onnx_model)
    head, tail = split_at(loaded.onnx_model, cut)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(head, str(out / "head.onnx"))
    onnx.save(tail, str(out / "tail.onnx"))
    print(f"split at {cut.label} ({cut.name}): wrote {out / 'head.onnx'} and {out / 'tail.onnx'}")
    return 0
