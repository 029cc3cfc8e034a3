"""Plots written next to benchmark JSON (matplotlib, Agg backend; compile-side only)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_grid", "plot_selector"]

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
