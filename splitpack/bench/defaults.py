"""The benchmark harnesses' defaults, apart from the harnesses: the ``splitpack`` command shows
them in ``--help`` without importing a harness (a device running ``splitpack run`` loads no
benchmark code). Standard library only."""

from __future__ import annotations

__all__ = ["DEFAULT_INTERVAL_S", "DEFAULT_THREADS", "DEFAULT_REQUESTS"]

# bench runtime
DEFAULT_INTERVAL_S = 0.1
DEFAULT_THREADS = 1  # per session; see splitpack.bench.runtime.run_runtime_benchmark
DEFAULT_REQUESTS = 150  # 15 s of trace at the 100 ms pace (longer when rounds slip)
