"""Run a bundle's tails with ONNX Runtime's CUDA provider, directly and behind a real edge server.

    python benchmarks/cuda_tails.py BUNDLE --out cuda_tails.json [--repeats 200] [--batch 32]

For every tail (split variants and ``edge``), on the bundle's sample inputs:

1. the same tail input runs in a CPU session and a CUDA session: the JSON records the largest
   difference between them and against the bundle's expected outputs, whether the predicted
   classes agree, and the median time of one call at batch 1 and at ``--batch`` on each provider
   (the CPU figures are the baseline measured in the same run);
2. ``splitpack serve BUNDLE`` starts as a subprocess on loopback (which picks CUDA when
   ONNX Runtime offers it); ``/metadata`` must report ``CUDAExecutionProvider``; each variant's
   payloads go through the device runtime's wire path, and each answer is compared with the
   expected outputs.

The direct CUDA sessions use ONNX Runtime's own CUDA defaults (TensorFloat-32 on Ampere and
later) unless ``--no-tf32``; the served edge uses splitpack's default, full float32.

Exits 1 with a message when ONNX Runtime offers no CUDA provider or a session falls back to CPU: a GPU check
that silently ran on the CPU would prove nothing. Needs numpy, onnxruntime-gpu, fastapi and
uvicorn; not torch. The results of the run that was made are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from splitpack.formats import read_bundle, read_samples  # noqa: E402
from splitpack.formats.variants import normalize_uint8  # noqa: E402
from splitpack.formats.wire import round_trip_codes  # noqa: E402
from splitpack.runtimes.backends import OnnxBackend  # noqa: E402
from splitpack.runtimes.device import DeviceRuntime  # noqa: E402
from splitpack.serving.loopback import free_port  # noqa: E402

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
CUDA_OPTIONS: dict = {}  # --no-tf32 sets use_tf32=0


def median_ms(run, x: np.ndarray, repeats: int) -> float:
    for _ in range(10):  # warm-up: CUDA kernels, cuDNN algorithm search
        run(x)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def tail_inputs(bundle, variant, x: np.ndarray) -> np.ndarray:
    """What the edge's tail receives: normalized pixels (edge) or unpacked codes (split)."""
    if variant.kind == "edge":
        return x
    head = OnnxBackend(bundle.path(variant.artifacts.head), providers=[CPU])
    codes = head.run(x)
    return round_trip_codes(codes, variant.quantization.bits)


def direct(bundle, inputs, expected, repeats: int, batch: int) -> dict:
    manifest = bundle.manifest
    x = normalize_uint8(inputs, manifest.preprocessing) if inputs.dtype == np.uint8 else inputs
    results = {}
    for variant in manifest.variants:
        if variant.kind == "local":
            continue
        feed = tail_inputs(bundle, variant, x)
        cpu = OnnxBackend(bundle.path(variant.artifacts.tail), providers=[CPU])
        gpu = OnnxBackend(bundle.path(variant.artifacts.tail), providers=[(CUDA, CUDA_OPTIONS), CPU])
        if gpu.provider != CUDA:
            sys.exit(f"variant {variant.id}: the tail session runs on {gpu.provider}, not CUDA")
        out_cpu, out_gpu = cpu.run(feed), gpu.run(feed)
        big = np.concatenate([feed] * (batch // len(feed) + 1))[:batch]
        results[variant.id] = {
            "kind": variant.kind,
            "session_provider": gpu.provider,
            "max_abs_diff_cuda_vs_cpu": float(np.max(np.abs(out_gpu - out_cpu))),
            "max_abs_diff_cuda_vs_expected": float(np.max(np.abs(out_gpu - expected[variant.id]))),
            "classes_agree": bool(np.array_equal(out_gpu.argmax(1), out_cpu.argmax(1))),
            "median_ms": {
                "cpu_batch1": median_ms(cpu.run, feed[:1], repeats),
                "cuda_batch1": median_ms(gpu.run, feed[:1], repeats),
                f"cpu_batch{batch}": median_ms(cpu.run, big, repeats),
                f"cuda_batch{batch}": median_ms(gpu.run, big, repeats),
            },
        }
        ms = results[variant.id]["median_ms"]
        results[variant.id]["cpu_over_cuda"] = {
            "batch1": ms["cpu_batch1"] / ms["cuda_batch1"],
            f"batch{batch}": ms[f"cpu_batch{batch}"] / ms[f"cuda_batch{batch}"]}
    return results


def served(bundle_path: str, bundle, inputs, expected) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "splitpack", "serve", bundle_path,
                               "--port", str(port)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"splitpack serve did not come up (exit code {server.poll()})")
            time.sleep(0.2)
        report: dict = {"metadata_provider": httpx.get(f"{url}/metadata").json()["provider"],
                        "variants": {}}
        if report["metadata_provider"] != CUDA:
            sys.exit(f"the edge serves on {report['metadata_provider']}, not CUDA")
        with DeviceRuntime(bundle, url, rtt_ms=0.1, timeout_s=30) as runtime:
            for vid, variant in runtime.variants.items():
                if variant.kind == "local":
                    continue
                worst, agree, edge_ms = 0.0, True, []
                for i in range(len(inputs)):
                    payload, _ = runtime._payload(vid, inputs[i:i + 1])
                    output, _, tail_ms = runtime._exchange(vid, payload, 1)
                    edge_ms.append(tail_ms)
                    worst = max(worst, float(np.max(np.abs(output[0] - expected[vid][i]))))
                    agree &= bool(output[0].argmax() == expected[vid][i].argmax())
                report["variants"][vid] = {"requests": len(inputs),
                                           "max_abs_diff_vs_expected": worst,
                                           "classes_agree_with_expected": agree,
                                           "edge_tail_ms_median": statistics.median(edge_ms)}
        metadata = httpx.get(f"{url}/metadata").json()
        report["metadata_measured_tail_ms"] = {v["id"]: v["measured_tail_ms"]
                                               for v in metadata["variants"]}
        return report
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--out", required=True)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--no-tf32", action="store_true",
                        help="direct CUDA sessions with use_tf32=0 (full float32 matmuls/convs)")
    args = parser.parse_args()
    if args.no_tf32:
        CUDA_OPTIONS["use_tf32"] = "0"
    import onnxruntime as ort

    try:
        ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels, where they are installed
    except (AttributeError, OSError) as exc:  # older onnxruntime, or libraries on the path
        print(f"onnxruntime.preload_dlls: {exc}", file=sys.stderr)
    if CUDA not in ort.get_available_providers():
        sys.exit(f"onnxruntime {ort.__version__} offers {ort.get_available_providers()}: "
                 "install onnxruntime-gpu on a machine with an NVIDIA GPU")
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        gpu = "unknown (no nvidia-smi)"
    bundle = read_bundle(args.bundle)
    inputs, expected = read_samples(bundle)
    report = {"format": "splitpack-bench-cuda-tails/1", "bundle_id": bundle.manifest.bundle_id,
              "gpu": gpu, "onnxruntime": ort.__version__, "python": platform.python_version(),
              "samples": len(inputs), "repeats": args.repeats, "cuda_options": CUDA_OPTIONS,
              "direct": direct(bundle, inputs, expected, args.repeats, args.batch),
              "served": served(args.bundle, bundle, inputs, expected)}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
