"""Entropy coding of codes on one core: time of one sample, and bytes against bit-packing.

    OMP_NUM_THREADS=1 python benchmarks/entropy_coding.py --out benchmarks/results/entropy_coding.json

For a few realistic cut shapes and bit widths (feature maps (C, H, W), a pooled vector (D,) and
tokens (T, D)), codes are made like those of a ReLU feature map: per channel, a normal with its
own mean and spread, clipped at zero (so 30-80 % of the codes are 0), quantized to ``bits`` over
the channel's calibrated range. Tables are calibrated on ``--train`` samples
(:func:`splitpack.formats.entropy.calibrate_tables`); on ``--test`` other samples the script
measures, in the same run and process:

* ``entropy``: :func:`encode_codes` + :func:`decode_codes` of one sample (one message's work),
  and the whole wire path (``encode_payload`` / ``decode_payload`` with compression
  ``entropy``: header, two crc32s, validation);
* ``bitpack`` (the baseline): ``pack_codes`` + ``unpack_codes``, and the wire path with
  compression ``none``;
* bytes: the mean and p95 of each message (header included, 16-digit bundle id, as a manifest
  assumes), and the ratio entropy / bit-packed.

Times are the median and p99 over ``--repeats`` calls after a warm-up, with the process pinned
to one CPU (``sched_setaffinity``) and OMP_NUM_THREADS=1. A ``uniform`` case (codes spread
evenly over every level) shows what entropy coding costs when it cannot win. Needs numpy and
constriction only. The results of the run that was made are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy starts its thread pool

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from splitpack.formats.entropy import calibrate_tables, decode_codes, encode_codes  # noqa: E402
from splitpack.formats.wire import (  # noqa: E402
    decode_payload, encode_payload, pack_codes, unpack_codes,
)

# (name, per-sample codes shape, bits, distribution)
CASES = [
    ("stem 16x32x32 b8", (16, 32, 32), 8, "relu"),
    ("stage1 16x32x32 b4", (16, 32, 32), 4, "relu"),
    ("stage2 32x16x16 b8", (32, 16, 16), 8, "relu"),
    ("stage2 32x16x16 b4", (32, 16, 16), 4, "relu"),
    ("stage2 32x16x16 b2", (32, 16, 16), 2, "relu"),
    ("stage3 64x8x8 b8", (64, 8, 8), 8, "relu"),
    ("stage3 64x8x8 b4", (64, 8, 8), 4, "relu"),
    ("stage3 64x8x8 b2", (64, 8, 8), 2, "relu"),
    ("learned 8x8x8 b1", (8, 8, 8), 1, "relu"),
    ("pooled 64 b8", (64,), 8, "relu"),
    ("pooled 1280 b8", (1280,), 8, "relu"),
    ("tokens 65x192 b8", (65, 192), 8, "relu"),
    ("uniform 16x32x32 b8", (16, 32, 32), 8, "uniform"),
]
WIRE_ID = "0" * 16


def synthetic_codes(rng: np.random.Generator, count: int, shape: tuple[int, ...], bits: int,
                    distribution: str, channel_params: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``count`` samples of codes of ``shape`` (channel axis first for maps, last otherwise)."""
    levels = (1 << bits) - 1
    if distribution == "uniform":
        return rng.integers(0, levels + 1, size=(count, *shape)).astype(np.uint8)
    means, spreads = channel_params
    axis = 1 if len(shape) == 3 else len(shape)  # the channel axis of (N, *shape)
    view = [1] * (len(shape) + 1)
    view[axis] = -1
    values = np.maximum(rng.standard_normal((count, *shape)) * spreads.reshape(view)
                        + means.reshape(view), 0.0)
    # per channel, the calibrated range: 0 .. 3 spreads above the mean (clipped above)
    top = (means + 3 * spreads).reshape(view)
    return np.clip(np.rint(values / top * levels), 0, levels).astype(np.uint8)


def timed(call, repeats: int) -> dict:
    for _ in range(max(10, repeats // 20)):
        call()
    times = np.empty(repeats)
    for index in range(repeats):
        started = time.perf_counter()
        call()
        times[index] = time.perf_counter() - started
    return {"median_ms": float(np.median(times) * 1e3), "p99_ms": float(np.percentile(times, 99) * 1e3)}


def measure_case(name: str, shape: tuple[int, ...], bits: int, distribution: str, *, train: int,
                 test: int, repeats: int, rng: np.random.Generator) -> dict:
    channels = shape[0] if len(shape) == 3 else shape[-1]
    params = (rng.uniform(-1.0, 0.5, channels), rng.uniform(0.5, 2.0, channels))
    tables = calibrate_tables(synthetic_codes(rng, train, shape, bits, distribution, params), bits)
    samples = synthetic_codes(rng, test, shape, bits, distribution, params)
    entropy_messages = [encode_payload(samples[i:i + 1], bundle_id=WIRE_ID, variant_id="v",
                                       bits=bits, compression="entropy", tables=tables)
                        for i in range(test)]
    packed_messages = [encode_payload(samples[i:i + 1], bundle_id=WIRE_ID, variant_id="v", bits=bits)
                       for i in range(test)]
    for i, message in enumerate(entropy_messages):  # bit-exact, or the figures mean nothing
        assert np.array_equal(decode_payload(message, tables=tables)[1], samples[i:i + 1])
    entropy_sizes = np.array([len(m) for m in entropy_messages])
    packed_size = len(packed_messages[0])
    one = samples[:1]
    stream, packed = encode_codes(one, tables), pack_codes(one, bits)
    message, plain = entropy_messages[0], packed_messages[0]
    zeros = float(np.mean(samples == 0))
    return {
        "name": name, "codes_shape": list(shape), "bits": bits, "distribution": distribution,
        "codes_per_sample": int(np.prod(shape)), "zero_fraction": zeros,
        "entropy": {
            "encode_decode": timed(lambda: decode_codes(encode_codes(one, tables), one.shape, tables),
                                   repeats),
            "encode": timed(lambda: encode_codes(one, tables), repeats),
            "decode": timed(lambda: decode_codes(stream, one.shape, tables), repeats),
            "wire_encode_decode": timed(lambda: decode_payload(encode_payload(
                one, bundle_id=WIRE_ID, variant_id="v", bits=bits, compression="entropy",
                tables=tables), tables=tables), repeats),
            "payload_bytes_mean": float(entropy_sizes.mean()),
            "payload_bytes_p95": float(np.percentile(entropy_sizes, 95)),
        },
        "bitpack": {
            "encode_decode": timed(lambda: unpack_codes(pack_codes(one, bits), bits, one.size), repeats),
            "encode": timed(lambda: pack_codes(one, bits), repeats),
            "decode": timed(lambda: unpack_codes(packed, bits, one.size), repeats),
            "wire_encode_decode": timed(lambda: decode_payload(encode_payload(
                one, bundle_id=WIRE_ID, variant_id="v", bits=bits)), repeats),
            "payload_bytes": packed_size,
        },
        "bytes_ratio_entropy_over_bitpack": float(entropy_sizes.mean() / packed_size),
        "wire_sizes_checked": len(message) == entropy_sizes[0] and len(plain) == packed_size,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/entropy_coding.json")
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--train", type=int, default=512, help="samples that calibrate the tables")
    parser.add_argument("--test", type=int, default=200, help="samples whose messages are sized")
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last allowed)")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    rng = np.random.default_rng(0)
    cases = []
    for name, shape, bits, distribution in CASES:
        result = measure_case(name, shape, bits, distribution, train=args.train, test=args.test,
                              repeats=args.repeats, rng=rng)
        cases.append(result)
        e, b = result["entropy"], result["bitpack"]
        print(f"{name:22s} entropy enc+dec {e['encode_decode']['median_ms']:.3f} ms "
              f"(p99 {e['encode_decode']['p99_ms']:.3f}), wire {e['wire_encode_decode']['median_ms']:.3f} ms; "
              f"bitpack enc+dec {b['encode_decode']['median_ms']:.3f} ms; bytes "
              f"{e['payload_bytes_mean']:.0f} / {b['payload_bytes']} = "
              f"{result['bytes_ratio_entropy_over_bitpack']:.2f}", flush=True)
    relu = [c for c in cases if c["distribution"] == "relu"]
    summary = {
        "max_entropy_encode_decode_median_ms": max(c["entropy"]["encode_decode"]["median_ms"] for c in cases),
        "max_entropy_encode_decode_p99_ms": max(c["entropy"]["encode_decode"]["p99_ms"] for c in cases),
        "relu_cases_with_ratio_at_most_0.8": sum(c["bytes_ratio_entropy_over_bitpack"] <= 0.8 for c in relu),
        "relu_cases": len(relu),
    }
    document = {
        "benchmark": "entropy_coding",
        "command": "OMP_NUM_THREADS=1 python benchmarks/entropy_coding.py " + " ".join(argv or sys.argv[1:]),
        "host": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                 "python": platform.python_version(), "numpy": np.__version__,
                 "constriction": metadata.version("constriction"),
                 "cpus_pinned": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                 "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                 "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "settings": {"repeats": args.repeats, "train": args.train, "test": args.test},
        "summary": summary,
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(json.dumps(summary))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
