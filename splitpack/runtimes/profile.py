"""Measure a bundle's heads and tails where they will run (``splitpack profile BUNDLE``).

A compiled bundle carries latencies measured on the compile host. The device and the edge are
other machines, so :func:`profile_bundle` re-measures every variant on the machine it runs on,
with ONNX Runtime on the CPU, on the bundle's own sample inputs: the head on the normalized
inputs, the tail on what the head emitted (the uint8 codes, exactly what the edge decodes from
the wire). Each run is one sample (batch 1), as a device serves single requests.

Runs on devices: numpy, onnxruntime and the standard library only (no torch, no compiler).
The timing helpers here are shared with :mod:`splitpack.compiler.profile`.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from splitpack.errors import InvalidConfigError
from splitpack.formats.bundle import Bundle, read_bundle, read_samples
from splitpack.formats.variants import normalize_uint8
from splitpack.runtimes.backends import load_backend

__all__ = ["BUNDLE_PROFILE_FORMAT", "CPU_PROVIDER", "host_info", "check_timing_arguments",
           "timed_rounds", "summarize_ms", "time_interleaved", "profile_bundle"]

BUNDLE_PROFILE_FORMAT = "splitpack-bundle-profile/1"
CPU_PROVIDER = "CPUExecutionProvider"


def host_info() -> dict:
    """Where a measurement was taken: OS, machine, CPU count and runtime versions (JSON-able)."""
    import onnxruntime

    return {"platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor() or "unknown", "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0], "onnxruntime": onnxruntime.__version__}


def check_timing_arguments(threads: int | None, repeats: int, warmup: int) -> None:
    """Raise InvalidConfigError naming the bad value of ``threads``, ``repeats`` or ``warmup``."""
    for name, value, minimum, optional in (("threads", threads, 1, True),
                                           ("repeats", repeats, 1, False),
                                           ("warmup", warmup, 0, False)):
        if optional and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise InvalidConfigError(f"{name} must be an integer >= {minimum}"
                                     f"{' or None' if optional else ''}; got {value!r}")


def timed_rounds(runs: Sequence[Callable[[], object]], *, repeats: int, warmup: int) -> np.ndarray:
    """Seconds of each callable per round, the callables run in turn within each round.

    Running them round-robin (``warmup`` rounds untimed, then ``repeats`` timed rounds) means
    that all of them see the same background load: a difference between two of them (a spliced
    head against the plain head) is not skewed by load that came and went between two separate
    measurement loops.

    Args:
        runs: Callables without arguments, e.g. one inference each.
        repeats: Timed rounds (>= 1).
        warmup: Untimed rounds first (>= 0).

    Returns:
        Array (len(runs), repeats) of wall times in seconds.
    """
    check_timing_arguments(None, repeats, warmup)
    for _ in range(warmup):
        for run in runs:
            run()
    samples = np.empty((len(runs), repeats))
    for r in range(repeats):
        for i, run in enumerate(runs):
            start = time.perf_counter()
            run()
            samples[i, r] = time.perf_counter() - start
    return samples


def summarize_ms(seconds: np.ndarray) -> dict[str, float]:
    """``{"median_ms", "p90_ms", "min_ms"}`` of wall times given in seconds."""
    return {"median_ms": float(np.median(seconds) * 1e3),
            "p90_ms": float(np.percentile(seconds, 90) * 1e3),
            "min_ms": float(np.min(seconds) * 1e3)}


def time_interleaved(runs: Sequence[Callable[[], object]], *, repeats: int,
                     warmup: int) -> list[dict[str, float]]:
    """Median and p90 ms of each callable, timed round-robin (see :func:`timed_rounds`).

    Args:
        runs: Callables without arguments.
        repeats: Timed rounds (>= 1).
        warmup: Untimed rounds first (>= 0).

    Returns:
        Per callable ``{"median_ms", "p90_ms", "min_ms"}``.
    """
    return [summarize_ms(row) for row in timed_rounds(runs, repeats=repeats, warmup=warmup)]


def _cycling(backend, rows: np.ndarray) -> Callable[[], object]:
    """A callable that runs ``backend`` on the next row (batch 1), wrapping around."""
    position = [0]

    def run() -> object:
        index = position[0] % len(rows)
        position[0] += 1
        return backend.run(rows[index:index + 1])

    return run


def _run_rows(backend, rows: np.ndarray) -> np.ndarray:
    return np.concatenate([backend.run(rows[i:i + 1]) for i in range(len(rows))])


def _profile_variant(bundle: Bundle, variant, inputs: np.ndarray, expected: np.ndarray, *,
                     threads: int | None, repeats: int, warmup: int) -> dict:
    """Median and p90 of the head and tail of one variant, and its output check."""
    parts = {"local": ("head",), "edge": ("tail",), "split": ("head", "tail")}[variant.kind]
    backends = {part: load_backend(bundle, variant, part=part, providers=[CPU_PROVIDER],
                                   threads=threads) for part in parts}
    feeds = {parts[0]: inputs}
    if variant.kind == "split":
        feeds["tail"] = _run_rows(backends["head"], inputs)
    timings = time_interleaved([_cycling(backends[part], feeds[part]) for part in parts],
                               repeats=repeats, warmup=warmup)
    measured = dict(zip(parts, timings))
    outputs = _run_rows(backends[parts[-1]], feeds[parts[-1]])
    zero = {"median_ms": 0.0, "p90_ms": 0.0}
    head, tail = measured.get("head", zero), measured.get("tail", zero)
    return {
        "kind": variant.kind,
        "head_ms": head["median_ms"], "head_p90_ms": head["p90_ms"],
        "tail_ms": tail["median_ms"], "tail_p90_ms": tail["p90_ms"],
        "compiled_head_ms": variant.latency.head_ms, "compiled_tail_ms": variant.latency.tail_ms,
        "max_abs_diff": float(np.max(np.abs(outputs.astype(np.float64) - expected))),
        "provider": backends[parts[0]].provider,
    }


def _profile_opened(bundle: Bundle, source: str, *, threads: int | None, repeats: int,
                    warmup: int) -> dict:
    manifest = bundle.manifest
    inputs, expected = read_samples(bundle)
    if manifest.samples is not None and manifest.samples.input_dtype == "uint8":
        inputs = normalize_uint8(inputs, manifest.preprocessing)
    variants = {v.id: _profile_variant(bundle, v, inputs, expected[v.id], threads=threads,
                                       repeats=repeats, warmup=warmup)
                for v in manifest.variants}
    return {
        "format": BUNDLE_PROFILE_FORMAT, "bundle": source, "model_id": manifest.model_id,
        "bundle_id": manifest.bundle_id, "host": host_info(), "threads": threads,
        "provider": CPU_PROVIDER, "repeats": repeats, "warmup": warmup,
        "samples": int(len(inputs)), "compiled_on": dict(manifest.profiles), "variants": variants,
    }


def profile_bundle(bundle_path: str | os.PathLike[str], *, threads: int | None = None,
                   repeats: int = 50, warmup: int = 5) -> dict:
    """Measure every variant's head and tail of a bundle on this machine.

    ``local`` runs the whole model as its head (``tail_ms`` 0); ``edge`` runs it as its tail on
    the normalized input (``head_ms`` 0: the device only uploads pixels); a ``split`` variant
    runs its head on the normalized inputs and its tail on the head's codes. Samples are run
    one at a time, cycling through the bundle's samples. ``max_abs_diff`` compares the final
    outputs with the bundle's expected outputs, so a profile also says whether the artifacts
    compute what they did on the compile host.

    Args:
        bundle_path: A bundle folder or archive (``.tar.gz``, ``.tgz``, ``.zip``).
        threads: ONNX Runtime intra-op threads; None leaves ONNX Runtime's default (one per
            physical core).
        repeats: Timed runs of each artifact (median and p90 are reported).
        warmup: Untimed runs first.

    Returns:
        A JSON-able dict: ``host``, ``threads``, ``provider``, ``repeats``, ``warmup``,
        ``samples``, ``compiled_on`` (the manifest's ``profiles``) and ``variants``: per id
        ``kind``, ``head_ms``, ``head_p90_ms``, ``tail_ms``, ``tail_p90_ms``, the compiled
        ``compiled_head_ms`` / ``compiled_tail_ms``, ``max_abs_diff`` and ``provider``.

    Raises:
        InvalidConfigError: Bad ``threads``, ``repeats`` or ``warmup``.
        InvalidBundleError: The bundle is missing, corrupt, or carries no samples.
    """
    check_timing_arguments(threads, repeats, warmup)
    path = Path(bundle_path)
    if path.is_dir():
        return _profile_opened(read_bundle(path), str(path), threads=threads, repeats=repeats,
                               warmup=warmup)
    with tempfile.TemporaryDirectory(prefix="splitpack-profile-") as scratch:
        return _profile_opened(read_bundle(path, extract_to=scratch), str(path), threads=threads,
                               repeats=repeats, warmup=warmup)
