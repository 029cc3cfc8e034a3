"""The ``bench`` sub-commands: ``grid``, ``predictor``, ``selector``, ``runtime``,
``concurrency`` and ``serve``. Each parses its options, calls its harness in
:mod:`splitpack.bench` (or the compiler's grid) and prints a one-line summary; the harnesses
write the JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from splitpack.bench.defaults import DEFAULT_INTERVAL_S, DEFAULT_REQUESTS, DEFAULT_THREADS
from splitpack.cli.common import (
    add_data_args, add_model_args, format_table, load_with_data, require_plotting,
)
from splitpack.errors import InvalidConfigError
from splitpack.predictors import DEFAULT_SAMPLE_SECONDS
from splitpack.serving import ENGINES

__all__ = ["add_bench_commands"]

DEFAULT_EPOCHS_HINT = 6  # compiler.train.DEFAULT_EPOCHS, repeated so that --help needs no torch


def add_bench_commands(commands) -> None:
    """Add ``bench`` and its sub-commands to the CLI's sub-parsers."""
    bench = commands.add_parser("bench", help="benchmarks that write JSON").add_subparsers(dest="bench", required=True)
    grid = bench.add_parser("grid", help="train and measure every (cut, codec) cell")
    add_model_args(grid)
    add_data_args(grid)
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
    predictor.add_argument("--sample-seconds", type=float, default=DEFAULT_SAMPLE_SECONDS,
                           help="seconds the predictor's sampling may spend, by the cells' recorded "
                                f"train_seconds (default {DEFAULT_SAMPLE_SECONDS:g}, as compile; 0: no limit)")
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

    selector = bench.add_parser("selector", help="decision time, coverage regret and latency per bandwidth")
    selector.add_argument("--out", required=True)
    selector.add_argument("--plot")
    selector.set_defaults(handler=_cmd_bench_selector)
    _add_bench_runtime_command(bench)
    _add_bench_concurrency_command(bench)
    _add_bench_serve_command(bench)


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
    if args.plot:
        require_plotting("bench grid --plot")
    from splitpack.compiler.cuts import find_cuts
    from splitpack.compiler.grid import CODINGS, parse_cut_selection, run_grid
    from splitpack.bench.plots import plot_grid_bytes

    loaded, dataset = load_with_data(args)
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
    if args.plot:
        require_plotting("bench predictor --plot")
    from splitpack.bench.plots import plot_predictor
    from splitpack.bench.replay import LatencySetting, replay_grid

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
    if args.sample_seconds < 0:
        raise InvalidConfigError(f"--sample-seconds {args.sample_seconds:g} is negative; allowed: 0 (no time "
                                 "limit) or more")
    report = replay_grid(grid, args.budget, tolerance=args.tolerance, max_drop=args.max_accuracy_drop,
                         setting=setting, seconds=args.sample_seconds or None)
    report["grid"] = str(path)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    if args.plot:
        plot_predictor(report, Path(args.plot))
    rows = [[r["method"], r["trained_cells"], r["cost_examples"], r["cost_seconds"], r["mae"], r["mae_near_floor"],
             r["max_error"], r["knee_error_steps_max"], r["plan_accuracy_loss_max"]]
            for r in [report] + report["baselines"]]
    print(format_table(["method", "cells measured", "cost (examples)", "cost (s)", "MAE (pts)", "MAE near floor",
                        "max error", "knee error (steps, max)", "plan loss max (pts)"], rows))
    print(f"transfer: {report['free_signal_cells']} of its cells are calibrated (evaluation only); "
          f"{report['within_one_sigma']:.0%} of the scored cells within +-1 sigma")
    print(f"cost ratio {report['cost_ratio']:.1f}x against the whole space ({report['space_cost_note']}), "
          f"{report['cost_ratio_grid']:.1f}x against the measured grid")
    limit = report["sample_seconds_limit"]
    ratio = report["cost_ratio_seconds"]
    print(f"transfer sampled for {report['cost_seconds']:.0f} s of training (limit "
          f"{'none' if limit is None else f'{limit:g} s'}, stopped by {report['sampling_stopped']}): "
          f"{'-' if ratio is None else f'{ratio:.1f}x'} less than the whole space at the mean learned cell's "
          f"seconds; the baselines get as many cells as its examples pay for, at least the budget; wrote {out}")
    return 0


def _cmd_bench_selector(args) -> int:
    if args.plot:
        require_plotting("bench selector --plot")
    from splitpack.bench.selector import run_bench_selector_command

    run_bench_selector_command(args.out, args.plot)
    return 0


def _add_bench_runtime_command(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench runtime``.

    Args:
        bench_subparsers: The sub-parsers object of ``splitpack bench``.
    """
    runtime = bench_subparsers.add_parser(
        "runtime", help="replay an uplink trace: adaptive runtime against fixed variants",
        description="Replay an uplink trace (and optionally device and edge load traces) "
        "against a real edge process on loopback: the adaptive runtime and every fixed method "
        "(each split variant, local, edge), interleaved round by round; the oracle is the best "
        "fixed method of each round. Load trace files have one 'seconds,slowdown' row per line "
        "(times on the bandwidth trace's clock, slowdowns > 0 as multiples of this host's "
        "compute; each holds until the next row, the last for ever), e.g. '0,10' then '20,30' "
        "then '40,10': a device 10x slower whose slowdown triples for 20 s.")
    runtime.add_argument("bundle", help="bundle folder or archive (with samples)")
    runtime.add_argument("--trace", required=True, help="uplink trace (mahimahi or seconds,mbps CSV)")
    runtime.add_argument("--requests", type=int, default=DEFAULT_REQUESTS,
                         help=f"requests per run (default {DEFAULT_REQUESTS})")
    runtime.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S,
                         help=f"seconds between request starts (default {DEFAULT_INTERVAL_S:g})")
    runtime.add_argument("--start-offset", type=float, default=0.0,
                         help="trace time (s) at which each run starts (default 0)")
    runtime.add_argument("--device-slowdown", type=float,
                         help="the device is this many times slower than this host: what the "
                         "adaptive runtime is told, and, without --load-trace, every method's "
                         "device compute x this (default: the load trace's slowdown at "
                         "--start-offset, else the bundle's profiles.device_slowdown)")
    runtime.add_argument("--load-trace", metavar="FILE",
                         help="device load that changes: 'seconds,slowdown' rows replayed beside "
                         "the bandwidth trace, on its clock, for every method alike")
    runtime.add_argument("--edge-load-trace", metavar="FILE",
                         help="edge load that changes: 'seconds,slowdown' rows; the edge process "
                         "stretches its tails to them, on the same clock")
    runtime.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                         help=f"threads of every head and tail session (default {DEFAULT_THREADS})")
    runtime.add_argument("--hysteresis", type=float, default=0.1,
                         help="the adaptive runtime's: the fraction by which a variant's plan "
                         "must beat the current one's to switch (default 0.1)")
    runtime.add_argument("--no-uplink-probes", dest="uplink_probes", action="store_false",
                         help="the adaptive runtime explores with remote requests instead of "
                         "probing the uplink while it answers locally")
    runtime.add_argument("--out", required=True, help="runtime JSON to write")
    runtime.add_argument("--plot", help="PNG: bandwidth, variant and latency over time")
    runtime.set_defaults(handler=_cmd_bench_runtime)



def _cmd_bench_runtime(args: argparse.Namespace) -> int:
    if args.plot:
        require_plotting("bench runtime --plot")
    from splitpack.bench.runtime import run_runtime_benchmark

    result = run_runtime_benchmark(args.bundle, args.trace, requests=args.requests,
                                   interval_s=args.interval, start_offset_s=args.start_offset,
                                   device_slowdown=args.device_slowdown,
                                   load_trace=args.load_trace,
                                   edge_load_trace=args.edge_load_trace,
                                   threads=args.threads, hysteresis=args.hysteresis,
                                   uplink_probes=args.uplink_probes, out_json=args.out,
                                   out_png=args.plot)
    medians = ", ".join(f"{name} {ms:.3g}" for name, ms in result["median_latency_ms"].items()
                        if ms is not None)
    ratios = result["adaptive_to_oracle"]
    vs_oracle = (f"; adaptive/oracle median {ratios['median']:.3g}, p90 {ratios['p90']:.3g}"
                 if ratios["median"] is not None and ratios["p90"] is not None else "")
    print(f"median latency ms: {medians} (best static: {result['best_static_variant']}"
          f"{vs_oracle}); "
          f"{result['switches']} switches, switch_ms p99 {result['switch_ms_p99']:.3g}; "
          f"errors {result['errors']}, lost {result['lost']}"
          f"{', skipped ' + str(result['skipped']) if result['skipped'] else ''} -> {args.out}")
    return 0


def _add_bench_concurrency_command(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench concurrency`` to the ``bench`` sub-parsers."""
    concurrency = bench_subparsers.add_parser(
        "concurrency", help="many concurrent clients against one edge process")
    concurrency.add_argument("bundle", help="bundle folder or archive (with samples)")
    concurrency.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    concurrency.add_argument("--requests", type=int, default=200, help="requests per client (default 200)")
    concurrency.add_argument("--max-inflight", type=int,
                             help="the edge's --max-inflight (default: the number of clients)")
    concurrency.add_argument("--out", required=True, help="concurrency JSON to write")
    concurrency.set_defaults(handler=_cmd_bench_concurrency)


def _cmd_bench_concurrency(args: argparse.Namespace) -> int:
    from splitpack.bench.concurrency import run_concurrency_benchmark

    result = run_concurrency_benchmark(args.bundle, clients=args.clients, requests=args.requests,
                                       max_inflight=args.max_inflight, out_json=args.out)
    print(f"{result['requests']} requests from {result['clients']} clients: errors "
          f"{result['errors']}, 503s {result['busy_503']} (max_inflight {result['max_inflight']}), "
          f"p50 {result['p50_latency_ms']:.3g} ms, p99 {result['p99_latency_ms']:.3g} ms, "
          f"{result['throughput_rps']:.0f} req/s -> {args.out}")
    return 0


def _add_bench_serve_command(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench serve``.

    Args:
        bench_subparsers: The sub-parsers object of ``splitpack bench``.
    """
    bench = bench_subparsers.add_parser(
        "serve", help="requests/s and p50/p99 latency of the edge engines under concurrent clients")
    bench.add_argument("bundle", help="bundle folder or archive")
    bench.add_argument("--engine", choices=(*ENGINES, "both"), default="both",
                       help="engine(s) to measure, one after the other (default: both)")
    bench.add_argument("--clients", type=int, default=8, help="concurrent clients (default: 8)")
    bench.add_argument("--requests", type=int, default=50,
                       help="timed requests per client (default: 50)")
    bench.add_argument("--replicas", type=int, default=2,
                       help="tail replicas of the ray engine (default: 2)")
    bench.add_argument("--variant", help="split variant whose codes are sent (default: the first)")
    bench.add_argument("--out", required=True, help="JSON file to write")
    bench.set_defaults(handler=_cmd_bench_serve)


def _cmd_bench_serve(args: argparse.Namespace) -> int:
    from splitpack.bench.serve import run_serve_benchmark

    result = run_serve_benchmark(args.bundle, args.engine, args.clients, args.requests, args.out,
                                 replicas=args.replicas, variant=args.variant)
    for engine, numbers in result["engines"].items():
        latency = numbers["latency_ms"]
        print(f"{engine}: {numbers['requests_per_s']:.1f} req/s, p50 {latency['p50']:.2f} ms, "
              f"p99 {latency['p99']:.2f} ms ({numbers['ok']}/{numbers['requests']} ok, "
              f"{numbers['mismatches']} mismatches)")
    print(f"wrote {args.out}")
    return 0
