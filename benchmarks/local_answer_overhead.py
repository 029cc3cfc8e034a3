"""What the adaptive runtime adds to a request it answers locally, against the fixed ``local`` method.

Where ``local`` is the best choice (a device 10x slower than this host, say), the adaptive
runtime's median can only be the fixed ``local`` method's plus what the runtime itself does per
request: choosing, checking the input, and taking in what the request measured (the device
load, the heads' references, the plan corrections). Issue 15 asks for an adaptive median within
2 % of the best fixed method's, 0.14 ms at 7 ms.

Starts the bundle's edge server on loopback, builds a :class:`DeviceRuntime` over a constant
0.02 Mbit/s emulated uplink (so it prefers ``local``; the local answers that send an uplink
probe beside them count, as their cost is the runtime's; an exploration, which a runtime
with probes does not make, would be left out) and the benchmark's fixed ``local`` method
(``splitpack.bench.runtime``), both on one emulated device, and interleaves their requests, ``--pause`` s apart, in an order that
alternates. Writes the medians and their difference to ``--out`` (JSON).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/local_answer_overhead.py demo-out/bundle \
        --device-slowdown 10 --out benchmarks/results/local_answer_overhead.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from splitpack.bench.runtime import _FixedVariant  # noqa: E402
from splitpack.bench.support import host_info  # noqa: E402
from splitpack.formats.bundle import read_bundle, read_samples  # noqa: E402
from splitpack.runtimes.backends import load_backend  # noqa: E402
from splitpack.runtimes.device import DeviceRuntime  # noqa: E402
from splitpack.runtimes.load import EmulatedLoad, constant_load  # noqa: E402
from splitpack.runtimes.netem import ShapedLink, constant_trace  # noqa: E402
from splitpack.serving.loopback import edge_server  # noqa: E402

WARMUP = 50


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--device-slowdown", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--pause", type=float, default=0.005)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    bundle = read_bundle(args.bundle)
    inputs, _ = read_samples(bundle)
    load = EmulatedLoad(constant_load(args.device_slowdown))
    heads = {v.id: load_backend(bundle, v, "onnxruntime", threads=1)
             for v in bundle.manifest.variants if v.kind in ("split", "local")}
    with edge_server(args.bundle) as edge, httpx.Client() as client:
        runtime = DeviceRuntime(bundle, edge.url, link=ShapedLink(constant_trace(0.02)),
                                device_slowdown=args.device_slowdown, emulated_load=load,
                                threads=1, rtt_ms=2.7)
        fixed = _FixedVariant(bundle, "local", heads, client, None, load)
        latencies: dict[str, list[float]] = {"fixed": [], "runtime": []}

        def request(name: str, x) -> None:
            if name == "fixed":
                latencies[name].append(fixed.infer(x).latency_ms)
                return
            explored = runtime.stats["explorations"]
            result = runtime.infer(x)
            if result.variant_id == "local" and runtime.stats["explorations"] == explored:
                latencies[name].append(result.latency_ms)

        names = list(latencies)
        for number in range(WARMUP + args.requests):
            x = inputs[number % len(inputs)]
            order = names if number % 2 else names[::-1]
            for name in order:
                request(name, x)
                time.sleep(args.pause)
            if number == WARMUP - 1:
                latencies = {name: [] for name in names}
        runtime.close()
    medians = {name: statistics.median(values) for name, values in latencies.items()}
    result = {
        "format": "splitpack-local-answer-overhead/1", "bundle": str(args.bundle),
        "device_slowdown": args.device_slowdown, "requests": args.requests, "pause_s": args.pause,
        "answered_locally": {name: len(values) for name, values in latencies.items()},
        "median_latency_ms": {name: round(ms, 4) for name, ms in medians.items()},
        "beyond_fixed_us": round((medians["runtime"] - medians["fixed"]) * 1e3, 1),
        "uplink_probes": runtime.stats["uplink_probes"],
        "explorations": runtime.stats["explorations"],
        "host": host_info()}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"median ms: fixed local {medians['fixed']:.3f}, the runtime answering locally "
          f"{medians['runtime']:.3f} ({result['beyond_fixed_us']:+} us) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
