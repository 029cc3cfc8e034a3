"""The runtime sub-commands of the ``splitpack`` CLI: ``serve`` (the edge, on uvicorn or Ray
Serve), ``run`` (a device) and ``export-triton`` (a Triton model repository of the tails).

:func:`add_runtime_commands` adds them to an argparse sub-parsers object; each sets
``handler`` to a function of the parsed arguments that returns the exit status and raises
:class:`~splitpack.errors.SplitpackError` subclasses for the CLI to report. FastAPI, uvicorn,
Ray and tritonclient are imported only by the commands that use them, so ``run`` works on a
device without them.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from splitpack.errors import InvalidConfigError
from splitpack.runtimes.backends import BACKEND_KINDS
from splitpack.runtimes.load import LOAD_CLOCKS
from splitpack.serving import ENGINES

__all__ = [
    "add_runtime_commands", "add_serve_arguments", "add_triton_command",
    "cmd_serve", "cmd_run", "cmd_export_triton", "load_inputs",
]  # fmt: skip


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``serve`` (shared with ``python -m splitpack.serving.edge``)."""
    parser.add_argument("bundle", help="bundle folder or archive")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    parser.add_argument("--token", help="bearer token that requests must carry")
    parser.add_argument("--max-inflight", type=int, default=8,
                        help="requests handled at once; more get 503 (default: 8)")
    parser.add_argument("--threads", type=int,
                        help="threads of each tail's ONNX Runtime session (default: its choice)")
    parser.add_argument("--load-trace", help="edge load that changes: a file of 'seconds,"
                        "slowdown' rows; every tail is stretched to the slowdown scheduled when "
                        "it starts (local engine only)")
    parser.add_argument("--load-start-offset", type=float, default=0.0,
                        help="the load trace's time (s) when its clock starts (default 0)")
    parser.add_argument("--load-clock", choices=LOAD_CLOCKS, default="start",
                        help="start: the load clock starts once the tails are loaded; stdin: "
                        "when a line 'start UNIX_SECONDS' arrives on standard input, at that "
                        "time (default: start)")


def add_runtime_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve``, ``run`` and ``export-triton`` to ``subparsers`` (from
    ``parser.add_subparsers()``).

    Args:
        subparsers: The CLI's sub-parsers object.
    """
    serve = subparsers.add_parser("serve", help="serve every tail of a bundle over HTTP (edge)")
    add_serve_arguments(serve)
    serve.add_argument("--engine", choices=ENGINES, default="local",
                       help="local: one uvicorn process; ray: Ray Serve on a local cluster, tails "
                       "on --replicas replicas (default: local)")
    serve.add_argument("--replicas", type=int,
                       help="tail replicas of the ray engine (default: 2)")
    serve.set_defaults(handler=cmd_serve)

    run = subparsers.add_parser("run", help="run a bundle on this device against an edge")
    run.add_argument("bundle", help="bundle folder or archive")
    run.add_argument("--edge", required=True, help="edge URL, e.g. http://127.0.0.1:8000")
    run.add_argument("--input", required=True,
                     help=".npy of uint8 pixels or float32 normalized inputs, one per row")
    run.add_argument("--trace", help="uplink trace to emulate (mahimahi or seconds,mbps CSV)")
    run.add_argument("--device-slowdown", type=float, default=1.0,
                     help="emulate a device this many times slower (default: 1)")
    run.add_argument("--backend", choices=BACKEND_KINDS, default="onnxruntime",
                     help="runtime of the heads (default: onnxruntime)")
    run.add_argument("--token", help="bearer token the edge requires")
    run.add_argument("--threads", type=int,
                     help="threads of each head's session (default: the runtime's choice)")
    run.set_defaults(handler=cmd_run)

    add_triton_command(subparsers)


def add_triton_command(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export-triton BUNDLE --out REPO`` to ``subparsers``.

    Args:
        subparsers: The CLI's sub-parsers object.
    """
    export = subparsers.add_parser(
        "export-triton", help="write a Triton Inference Server model repository of the tails")
    export.add_argument("bundle", help="bundle folder or archive")
    export.add_argument("--out", required=True,
                        help="repository folder to create (absent or empty)")
    export.add_argument("--max-batch-size", type=int, default=64,
                        help="Triton max_batch_size of each model (default: 64)")
    export.add_argument("--instance-kind", choices=("gpu", "cpu"), default="gpu",
                        help="where Triton runs the model instances (default: gpu)")
    export.set_defaults(handler=cmd_export_triton)


def cmd_serve(args: argparse.Namespace) -> int:
    """``splitpack serve``: serve until interrupted (Ctrl-C)."""
    if args.engine == "ray":
        if args.load_trace is not None:
            raise InvalidConfigError(f"--load-trace {args.load_trace}: the ray engine runs tails "
                                     "on its replicas, which cannot stretch them; use --engine "
                                     "local to emulate edge load, or drop --load-trace")
        from splitpack.serving.ray_serve import DEFAULT_REPLICAS, serve_ray

        replicas = DEFAULT_REPLICAS if args.replicas is None else args.replicas
        serve_ray(args.bundle, host=args.host, port=args.port, replicas=replicas,
                  token=args.token, max_inflight=args.max_inflight, threads=args.threads)
        return 0
    if args.replicas is not None:
        raise InvalidConfigError(f"--replicas {args.replicas}: only the ray engine has replicas; "
                                 "add --engine ray, or drop --replicas")
    from splitpack.serving.edge import serve

    serve(args.bundle, host=args.host, port=args.port, token=args.token,
          max_inflight=args.max_inflight, threads=args.threads, load_trace=args.load_trace,
          load_start_offset_s=args.load_start_offset, load_clock=args.load_clock)
    return 0


def cmd_export_triton(args: argparse.Namespace) -> int:
    """``splitpack export-triton``: write the repository and say what is in it."""
    from splitpack.serving.triton import export_triton

    repo = export_triton(args.bundle, args.out, max_batch_size=args.max_batch_size,
                         instance_kind=f"KIND_{args.instance_kind.upper()}")
    models = sorted(path.parent.name for path in repo.glob("*/config.pbtxt"))
    print(f"wrote {repo}: {len(models)} models ({', '.join(models)}); serve it with "
          f"`tritonserver --model-repository={repo}` (see {repo / 'README.md'})")
    return 0


def load_inputs(path: str | Path, sample_rank: int) -> np.ndarray:
    """Read the ``--input`` file as a batch of samples.

    Args:
        path: A ``.npy`` file (no pickles).
        sample_rank: Rank of one sample (the model input's rank less the batch).

    Returns:
        An array with the batch first (a single sample gets a batch of one).
    """
    try:
        inputs = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidConfigError(f"--input {str(path)!r} cannot be read as a .npy array ({exc}); "
                                 "save the inputs with numpy.save") from None
    if not isinstance(inputs, np.ndarray) or inputs.ndim not in (sample_rank, sample_rank + 1):
        raise InvalidConfigError(f"--input {str(path)!r}: found shape {getattr(inputs, 'shape', None)}"
                                 f", expected one sample of rank {sample_rank} or a batch of them")
    return inputs[np.newaxis] if inputs.ndim == sample_rank else inputs


def cmd_run(args: argparse.Namespace) -> int:
    """``splitpack run``: one line per sample (index, variant, mode, latency, argmax)."""
    from splitpack.formats.bundle import read_bundle
    from splitpack.runtimes.device import DeviceRuntime
    from splitpack.runtimes.load import EmulatedLoad, constant_load
    from splitpack.runtimes.netem import ShapedLink, load_trace

    bundle = read_bundle(args.bundle)
    inputs = load_inputs(args.input, len(bundle.manifest.input.shape) - 1)
    link = ShapedLink(load_trace(args.trace)) if args.trace else None
    modes: Counter[str] = Counter()
    with DeviceRuntime(bundle, args.edge, backend=args.backend, threads=args.threads,
                       token=args.token, link=link, device_slowdown=args.device_slowdown,
                       emulated_load=EmulatedLoad(constant_load(args.device_slowdown))) as runtime:
        for index, sample in enumerate(inputs):
            result = runtime.infer(sample)
            modes[result.mode] += 1
            flag = " fallback" if result.fallback else ""
            print(f"{index} variant={result.variant_id} mode={result.mode} "
                  f"latency_ms={result.latency_ms:.2f} argmax={int(np.argmax(result.output))}{flag}",
                  flush=True)
        stats = runtime.stats
    summary = ", ".join(f"{mode} {count}" for mode, count in sorted(modes.items()))
    print(f"{len(inputs)} samples ({summary}); {stats['switches']} switches, "
          f"{stats['fallbacks']} fallbacks", file=sys.stderr)
    return 0
