"""Where the adaptive device runtime's own time goes, request by request, over a constant link.

Starts the bundle's edge server on loopback, runs :class:`DeviceRuntime` over a constant
emulated uplink for ``--requests`` requests (one every ``--pause`` s, after 20 warm-up ones) and
prints the median of each part of a request's wall time: choosing the variant, the head and
payload (stretched to ``--device-slowdown``), the emulated link (with the hedged local answer
when the upload waits past its planned time and the local run's time), the HTTP exchange
(``post``, the edge's tail included), and the rest (input checks, decoding the answer, the
estimators' refits, statistics); then how many uploads were hedged and how many of those ran
the local head. ``--no-hedge`` runs without hedged uploads.

Usage::

    python benchmarks/runtime_overhead.py demo-out/bundle --mbps 20 --device-slowdown 30
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from splitpack.formats.bundle import read_bundle, read_samples  # noqa: E402
from splitpack.runtimes.device import DeviceRuntime  # noqa: E402
from splitpack.runtimes.load import EmulatedLoad, constant_load  # noqa: E402
from splitpack.runtimes.netem import ShapedLink, constant_trace  # noqa: E402
from splitpack.serving.loopback import edge_server  # noqa: E402

PARTS = ("_choose", "_payload", "_send", "post")


def _timed(owner: object, name: str, spent: dict[str, float]) -> None:
    """Replace ``owner.name`` by a wrapper that adds its seconds to ``spent[name]``."""
    inner = getattr(owner, name)

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - started

    setattr(owner, name, wrapper)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--mbps", type=float, default=20.0)
    parser.add_argument("--device-slowdown", type=float, default=30.0)
    parser.add_argument("--requests", type=int, default=150)
    parser.add_argument("--pause", type=float, default=0.02)
    parser.add_argument("--no-hedge", action="store_true")
    args = parser.parse_args()
    bundle = read_bundle(args.bundle)
    inputs, _ = read_samples(bundle)
    spent: dict[str, float] = {}
    with edge_server(bundle.root, threads=1) as edge:
        runtime = DeviceRuntime(bundle, edge.url, device_slowdown=args.device_slowdown,
                                emulated_load=EmulatedLoad(constant_load(args.device_slowdown)),
                                rtt_ms=1.0, threads=1, link=ShapedLink(constant_trace(args.mbps)),
                                hedge_factor=None if args.no_hedge else 1.0)
        for name in PARTS[:3]:
            _timed(runtime, name, spent)
        _timed(runtime._client, "post", spent)
        local_runs = []
        beside = runtime._local_beside
        runtime._local_beside = lambda *args: local_runs.append(1) or beside(*args)
        for index in range(20):  # warm-up
            runtime.infer(inputs[index % len(inputs)])
        rows, used = [], set()
        for index in range(args.requests):
            time.sleep(args.pause)
            spent.clear()
            started = time.perf_counter()
            used.add(runtime.infer(inputs[index % len(inputs)]).variant_id)
            total = time.perf_counter() - started
            rows.append([total] + [spent.get(name, 0.0) for name in PARTS])
        runtime.close()
    medians = np.median(np.array(rows), axis=0) * 1e3
    names = ("total",) + tuple(name.strip("_") for name in PARTS)
    print("  ".join(f"{name} {ms:.3f}" for name, ms in zip(names, medians))
          + f"  rest {medians[0] - medians[1:].sum():.3f} ms (medians); hedges "
          f"{runtime.stats['hedges']} of {args.requests + 20}, {len(local_runs)} ran the local "
          f"head; variants {sorted(used)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
