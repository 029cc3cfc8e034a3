"""What the runtime benchmarks share: the host's description, the model's input from uint8
pixels, percentiles. (The edge server process on loopback is :mod:`splitpack.serving.loopback`.)"""

from __future__ import annotations

import os

import numpy as np

from splitpack.formats.variants import normalize_uint8

__all__ = ["host_info", "model_input", "percentile", "MAX_BUSY_RETRIES", "OCTET_STREAM_HEADERS"]

MAX_BUSY_RETRIES = 3
OCTET_STREAM_HEADERS = {"content-type": "application/octet-stream"}


def model_input(manifest, pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels as the model takes them (normalized float32 unless it takes uint8)."""
    return pixels if manifest.input.dtype == "uint8" else normalize_uint8(pixels, manifest.preprocessing)


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def host_info() -> dict:
    """Where it ran (:func:`splitpack.runtimes.profile.host_info`), and how busy the machine
    was (other processes skew every timing)."""
    from splitpack.runtimes.profile import host_info as machine_info

    return {**machine_info(), "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()]}
