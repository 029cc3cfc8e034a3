"""Plots written next to benchmark JSON (matplotlib, Agg backend; compile-side only)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_grid"]


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
