"""The runtime sub-commands of the ``splitpack`` CLI: ``serve`` (the edge) and ``run`` (a device).

:func:`add_runtime_commands` adds both to an argparse sub-parsers object; each sets
``handler`` to a function of the parsed arguments that returns the exit status and raises
:class:`~splitpack.errors.SplitpackError` subclasses for the CLI to report. FastAPI and uvicorn
are imported only by ``serve``, so ``run`` works on a device without them.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from splitpack.errors import InvalidConfigError
from splitpack.runtimes.backends import BACKEND_KINDS

__all__ = ["add_runtime_commands", "add_serve_arguments", "cmd_serve", "cmd_run", "load_inputs"]


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``serve`` (shared with ``python -m splitpack.runtimes.edge``)."""
    parser.add_argument("bundle", help="bundle folder or archive")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    parser.add_argument("--token", help="bearer token that requests must carry")
    parser.add_argument("--max-inflight", type=int, default=8,
                        help="requests handled at once; more get 503 (default: 8)")


def add_runtime_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve`` and ``run`` to ``subparsers`` (from ``parser.add_subparsers()``).

    Args:
        subparsers: The CLI's sub-parsers object.
    """
    serve = subparsers.add_parser("serve", help="serve every tail of a bundle over HTTP (edge)")
    add_serve_arguments(serve)
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
    run.set_defaults(handler=cmd_run)


def cmd_serve(args: argparse.Namespace) -> int:
    """``splitpack serve``: serve until interrupted."""
    from splitpack.runtimes.edge import serve

    serve(args.bundle, host=args.host, port=args.port, token=args.token,
          max_inflight=args.max_inflight)
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
    from splitpack.packaging.bundle import read_bundle
    from splitpack.runtimes.device import DeviceRuntime
    from splitpack.runtimes.netem import ShapedLink, load_trace

    bundle = read_bundle(args.bundle)
    inputs = load_inputs(args.input, len(bundle.manifest.input.shape) - 1)
    link = ShapedLink(load_trace(args.trace)) if args.trace else None
    modes: Counter[str] = Counter()
    with DeviceRuntime(bundle, args.edge, backend=args.backend, token=args.token, link=link,
                       device_slowdown=args.device_slowdown) as runtime:
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
