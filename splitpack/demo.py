"""``make demo`` / ``splitpack demo``: the main job on the embedded default.

Trains the digits reference model (cached in the output folder), compiles it into
``<out>/bundle``, prints the inspect table, and writes two plots: accuracy against compression
ratio per cut (cells trained for the predictor, measured; every cell, predicted) and latency
against uplink bandwidth per bundled variant.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["run_demo"]

MODEL_SPEC = "splitpack.models:digits_cnn"


def run_demo(out: Path, *, quick: bool = False) -> dict:
    """Run the demo into ``out``; ``quick`` trains fewer cells and epochs and skips TFLite.

    Returns:
        The compile result.
    """
    from splitpack.compile_cli import _print_inspect
    from splitpack.compiler.pipeline import compile_bundle
    from splitpack.compiler.settings import CompileSettings
    from splitpack.models.digits import train_digits_reference

    out.mkdir(parents=True, exist_ok=True)
    weights = out / "digits_cnn.pt"
    if not weights.exists():
        print(f"training the digits reference model -> {weights}")
        accuracy = train_digits_reference(weights, epochs=2 if quick else 6)
        print(f"    test accuracy (torch) {accuracy:.2f}%")
    # A board-class device: ten times slower than this host (stated in the manifest's profiles).
    settings = CompileSettings(
        model=MODEL_SPEC, weights=str(weights), data="digits", device_slowdown=10.0,
        **({"budget": 6, "epochs": 2, "final_epochs": 2, "variants": 2, "tflite": False, "samples": 8,
            "max_accuracy_drop": 50.0} if quick else {}),
    )
    result = compile_bundle(settings, out / "bundle")
    _print_inspect(out / "bundle")
    _plot_accuracy(Path(result["work"]), out / "accuracy_vs_ratio.png")
    _plot_latency(out / "bundle", out / "latency_vs_bandwidth.png")
    print(f"plots: {out / 'accuracy_vs_ratio.png'}, {out / 'latency_vs_bandwidth.png'}")
    return result


def _plot_accuracy(work: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from splitpack.predictors.accuracy import AccuracyPredictor, CellFeatures

    predictor = AccuracyPredictor.from_json((work / "predictor.json").read_text())
    cells = [json.loads(p.read_text()) for p in sorted((work / "cells").glob("*.json"))]
    cuts = {c["cut"]: c for c in cells}
    figure, axes = plt.subplots(figsize=(8, 5))
    for index, (label, cell) in enumerate(sorted(cuts.items(), key=lambda item: item[1]["cut_position"])):
        color = plt.cm.viridis(index / max(1, len(cuts) - 1))
        for codec_cell in cells:
            if codec_cell["cut"] == label:
                axes.plot(codec_cell["compression_ratio"], codec_cell["accuracy"], "o", color=color)
        ratios = np.geomspace(4, 8192, 40)
        features = [CellFeatures(label, cell["cut_position"], cell["cut_bytes"] / r, 8, r) for r in ratios]
        axes.plot(ratios, [p.accuracy for p in predictor.predict(features)], "-", color=color, label=label)
    axes.set_xscale("log")
    axes.set_xlabel("compression ratio")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title("digits: trained cells (dots) and predicted curves at 8-bit codes (lines)")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_latency(bundle_path: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from splitpack.packaging.bundle import read_bundle
    from splitpack.predictors.latency import Conditions, plan_latency_ms
    from splitpack.runtimes.device import profile_of

    manifest = read_bundle(bundle_path).manifest
    slowdown = float(manifest.profiles.get("device_slowdown", 1.0))
    bandwidths = np.geomspace(0.1, 100, 60)
    figure, axes = plt.subplots(figsize=(8, 5))
    for variant in manifest.variants:
        profile = profile_of(variant)
        latencies = [plan_latency_ms(profile, Conditions(uplink_mbps=float(b), device_slowdown=slowdown))
                     for b in bandwidths]
        axes.plot(bandwidths, latencies, label=f"{variant.id} ({variant.accuracy:.1f}%)")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("uplink bandwidth (Mbit/s)")
    axes.set_ylabel("predicted end-to-end latency (ms), rtt 20 ms")
    axes.set_title(f"latency per bundled variant against bandwidth (device {slowdown:g}x slower than this host)")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
