"""Where each method's time goes in one ``bench runtime`` run over a constant uplink.

Prints, per method and per variant it answered with, the median latency and its parts (head,
transfer, edge ms), from the request logs of :func:`run_runtime_benchmark` (the fixed methods'
parts are not in its JSON, so this script keeps the logs of the replay itself). It is how the
bias of the rotated order of turns was found: the adaptive runtime's requests on a variant
against the fixed run of the same variant (benchmarks/README.md, "Device runtime over real
uplink traces").

Usage::

    python benchmarks/runtime_parts.py demo-out/bundle --mbps 20 --requests 150 --device-slowdown 30
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import splitpack.bench.runtime as bench_runtime  # noqa: E402
from splitpack.runtimes.netem import constant_trace  # noqa: E402

PARTS = ("latency_ms", "head_ms", "transfer_ms", "edge_ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--mbps", type=float, default=20.0)
    parser.add_argument("--requests", type=int, default=150)
    parser.add_argument("--device-slowdown", type=float, default=30.0)
    args = parser.parse_args()
    logs: dict[str, list[dict]] = {}
    replay = bench_runtime._replay

    def keep(*positional, **options):
        logs.update(replay(*positional, **options))
        return logs

    bench_runtime._replay = keep
    result = bench_runtime.run_runtime_benchmark(
        args.bundle, constant_trace(args.mbps, 60.0), requests=args.requests, interval_s=0.1,
        device_slowdown=args.device_slowdown)
    print(f"{'method':15s} {'variant':15s} {'n':>4s}  " + "  ".join(f"{p:>11s}" for p in PARTS))
    for method, records in logs.items():
        by_variant: dict[str, list[dict]] = {}
        for record in records:
            if "latency_ms" in record:
                by_variant.setdefault(record["variant"], []).append(record)
        for variant, rows in by_variant.items():
            medians = [float(np.median([row[part] for row in rows])) for part in PARTS]
            print(f"{method:15s} {variant:15s} {len(rows):4d}  " + "  ".join(f"{m:11.2f}" for m in medians))
    print("median latency ms:", {k: round(v, 2) for k, v in result["median_latency_ms"].items() if v})
    return 0


if __name__ == "__main__":
    sys.exit(main())
