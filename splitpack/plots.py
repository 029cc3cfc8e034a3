"""Plots written next to benchmark JSON (matplotlib, Agg backend, imported only when drawing)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["plot_grid", "plot_selector", "plot_runtime"]

# Colour and line style of each strategy of a selector report, in the order the benchmark lists
# them: oracle, adaptive bundle, static best, Neurosurgeon, local only, edge only.
_SELECTOR_STYLES = (("k", ":"), ("C0", "-"), ("C1", "--"), ("C2", "-."), ("C3", "-"), ("C4", "-"))


def plot_grid(document: dict, path: Path, predictions: dict | None = None) -> None:
    """Accuracy against compression ratio per cut (log x), measured; dashed where predicted.

    Args:
        document: a grid document.
        path: PNG to write.
        predictions: optional {cut label: [(ratio, predicted accuracy), ...]}.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    labels = list(dict.fromkeys(cell["cut"] for cell in document["cells"]))
    colors = plt.cm.viridis([i / max(1, len(labels) - 1) for i in range(len(labels))])
    for label, color in zip(labels, colors):
        by_ratio: dict[float, float] = {}
        for cell in document["cells"]:
            if cell["cut"] == label:  # best codec at each ratio: the curve a planner sees
                by_ratio[cell["compression_ratio"]] = max(by_ratio.get(cell["compression_ratio"], 0), cell["accuracy"])
        ratios = sorted(by_ratio)
        axes.plot(ratios, [by_ratio[r] for r in ratios], "o-", color=color, label=label, markersize=3)
        if predictions and label in predictions:
            points = sorted(predictions[label])
            axes.plot([p[0] for p in points], [p[1] for p in points], "--", color=color, alpha=0.7)
    axes.axhline(document["baseline_accuracy"], color="gray", linestyle=":", label="baseline")
    axes.set_xscale("log")
    axes.set_xlabel("compression ratio (float32 cut tensor ÷ bytes of codes)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title("accuracy against compression ratio, per cut" + (" (dashed: predicted)" if predictions else ""))
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_selector(report: dict, path: Path) -> None:
    """Latency against uplink bandwidth (log-log) per strategy: a row per model, a column per
    scenario, at device and edge load 1.

    Args:
        report: a selector benchmark report
            (:func:`~splitpack.predictors.bench_selector.run_selector_benchmark`).
        path: PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["models"].items())
    columns = max(len(entry["scenarios"]) for _, entry in models)
    figure, axes = plt.subplots(len(models), columns, figsize=(6 * columns, 4.5 * len(models)),
                                squeeze=False)
    for row, (model, entry) in zip(axes, models):
        for axis, (name, scenario) in zip(row, entry["scenarios"].items()):
            table = scenario["latency_by_bandwidth_load1"]
            styles = dict(zip(table["ms"], _SELECTOR_STYLES))
            for rank, (strategy, values) in enumerate(table["ms"].items()):
                color, line = styles[strategy]  # the oracle and the bundle drawn on top
                axis.plot(table["bandwidths_mbps"], values, line, color=color, label=strategy,
                          linewidth=1.6, zorder=len(styles) - rank)
            axis.set(xscale="log", yscale="log", xlabel="uplink bandwidth (Mbit/s)",
                     ylabel="latency per request (ms)")
            axis.set_title(f"{model}: {name} device ({scenario['scenario']['device_slowdown']:g}x "
                           "slower than this host), loads 1", fontsize=10)
            axis.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_runtime(result: dict, path: str | os.PathLike[str], window_s: float = 1.0) -> None:
    """Bandwidth (``window_s`` means), chosen variant and latency over time (three stacked
    axes) of a ``bench runtime`` result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = result["log"]
    times = np.array([r["t_s"] for r in log])
    figure, (bandwidth, variant, latency) = plt.subplots(3, 1, figsize=(10, 8), sharex=True,
                                                         gridspec_kw={"height_ratios": [1, 1, 1.4]})
    curve = np.array(result["trace"]["segment_mbps"])
    bandwidth.plot(curve[:, 0], curve[:, 1], "-", color="tab:blue", lw=1)
    bandwidth.set_ylabel(f"uplink Mbit/s\n({window_s:g} s mean)")
    bandwidth.set_title(f"{Path(result['trace']['path']).name} from {result['trace']['start_offset_s']:g} s;"
                        f" device slowdown {result['device_slowdown']:g}x")
    ids = list(result["bundle"]["variants"])
    chosen = [r.get("variant") for r in log]
    answered = [i for i, v in enumerate(chosen) if v is not None]
    variant.scatter(times[answered], [ids.index(chosen[i]) for i in answered], s=8, color="tab:green")
    variant.set_yticks(range(len(ids)), ids, fontsize=7)
    variant.set_ylabel("adaptive variant")
    medians = result["median_latency_ms"]
    latency.plot(times[answered], [log[i]["latency_ms"] for i in answered], ".", ms=4,
                 color="tab:red", label=f"adaptive (median {medians['adaptive']:.3g} ms)")
    for name, style in (("best_static", "tab:gray"), ("edge", "tab:purple"), ("local", "tab:orange")):
        vid = result["best_static_variant"] if name == "best_static" else name
        if vid not in result["fixed_log"] or medians[name] is None:
            continue
        series = np.array([[t, np.nan if ms is None else ms] for t, ms in result["fixed_log"][vid]])
        latency.plot(series[:, 0], series[:, 1], "-", lw=0.7, alpha=0.6, color=style,
                     label=f"{name} {vid} (median {medians[name]:.3g} ms)")
    latency.set_yscale("log")
    latency.set_ylabel("latency ms")
    latency.set_xlabel("seconds since the run started")
    latency.legend(fontsize=7)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
