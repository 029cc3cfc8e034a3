"""Plots written next to benchmark JSON (matplotlib, Agg backend, imported only when drawing)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["plot_grid_bytes", "plot_predictor", "plot_selector", "plot_runtime"]

# Colour and line style of each strategy of a selector report, in the order the benchmark lists
# them: oracle, adaptive bundle, static best, Neurosurgeon, local only, edge only.
_SELECTOR_STYLES = (("k", ":"), ("C0", "-"), ("C1", "--"), ("C2", "-."), ("C3", "-"), ("C4", "-"))


def plot_predictor(report: dict, path: Path) -> None:
    """Measured against predicted accuracy per cut (one panel each) from a ``bench predictor``
    report: dots measured, line predicted with its ±1σ band, crosses the cells it trained."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = report["curves"]
    columns = 4
    rows = math.ceil(len(curves) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), sharey=True, squeeze=False)
    trained = {(t["cut"], t["codec"]) for t in report["trained"]}
    floor = report["baseline_accuracy"] - report["max_accuracy_drop"]
    for axis, (cut, points) in zip(axes.flat, curves.items()):
        points = sorted(points)
        ratios = [p[0] for p in points]
        predicted = [p[2] for p in points]
        sigma = [p[3] for p in points]
        axis.fill_between(ratios, [a - s for a, s in zip(predicted, sigma)], [a + s for a, s in zip(predicted, sigma)],
                          color="tab:orange", alpha=0.25, linewidth=0)
        axis.plot(ratios, predicted, "-", color="tab:orange", label="predicted ±1σ")
        axis.plot(ratios, [p[1] for p in points], "o", color="black", markersize=3, label="measured")
        marked = [p for p in points if (cut, p[4]) in trained]
        axis.plot([p[0] for p in marked], [p[1] for p in marked], "x", color="tab:red", markersize=7, label="trained")
        axis.axhline(floor, color="gray", linestyle=":", linewidth=1)
        axis.set_xscale("log")
        axis.set_title(cut, fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(curves):]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=6)
    figure.suptitle(f"measured and predicted accuracy per cut ({report['trained_cells']} cells trained; "
                    f"dotted: the floor; x: compression ratio)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


_METHOD_STYLES = {"calibrated": "tab:blue", "learned": "tab:orange", "finetuned": "tab:green"}
_INPUT_STYLES = {"jpeg": "tab:red", "webp": "tab:purple", "png": "black"}


def plot_grid_bytes(document: dict, path: Path) -> None:
    """Accuracy against bytes per image on the wire (log x): one panel per cut, every cell as a
    dot and, per method and coding (solid: entropy-coded, dashed: bit-packed), a line through the
    best accuracy reached at each size or less; in every panel the input uploaded as an image at
    each quality (the baseline a user would pick).

    Args:
        document: a grid document (``splitpack bench grid``).
        path: PNG to write.
    """
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(cell["cut"] for cell in document["cells"]))
    columns = min(4, max(1, len(labels)))
    rows = max(1, math.ceil(len(labels) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False, sharey=True)
    baselines = document.get("input_baselines") or []
    for axis, label in zip(axes.flat, labels):
        cells = [cell for cell in document["cells"] if cell["cut"] == label]
        for method, color in _METHOD_STYLES.items():
            for coding, line in (("entropy", "-"), ("bitpack", "--")):
                points = sorted((c["payload_bytes"], c["accuracy"]) for c in cells
                                if c.get("method", "learned") == method and c.get("coding", "bitpack") == coding)
                frontier, best = [], -1.0  # the best accuracy at each size or smaller: what a planner can reach
                for size, accuracy in points:
                    if accuracy > best:
                        frontier.append((size, accuracy))
                        best = accuracy
                if frontier:
                    axis.plot([p[0] for p in frontier], [p[1] for p in frontier], line, color=color,
                              label=f"{method} + {coding}")
                    axis.plot([p[0] for p in points], [p[1] for p in points], "o", markersize=2.5, color=color,
                              alpha=0.6 if coding == "entropy" else 0.3)  # every cell, knee and dips included
        for image_format, color in _INPUT_STYLES.items():
            points = sorted((b["payload_bytes"], b["accuracy"]) for b in baselines if b["format"] == image_format)
            if points:
                axis.plot([p[0] for p in points], [p[1] for p in points], ":", marker="x", markersize=3, color=color,
                          label=f"input {image_format}")
        axis.axhline(document["baseline_accuracy"], color="gray", linewidth=0.8)
        axis.set_xscale("log")
        axis.set_title(label, fontsize=9)
        axis.set_xlabel("bytes per image on the wire", fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in axes.flat[len(labels):]:
        axis.axis("off")
    axes[0][0].set_ylabel("test accuracy (%)")
    handles, names = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, names, loc="lower center", ncol=min(6, len(names)), fontsize=7)
    figure.suptitle(f"{document.get('model', '')}: accuracy against payload (grey: the model, "
                    f"{document['baseline_accuracy']:.2f}%)", fontsize=10)
    figure.tight_layout(rect=(0, 0.06, 1, 0.96))
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_selector(report: dict, path: Path) -> None:
    """Latency against uplink bandwidth (log-log) per strategy: a row per model, a column per
    scenario, at device and edge load 1.

    Args:
        report: a selector benchmark report
            (:func:`~splitpack.bench.selector.run_selector_benchmark`).
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
    """Bandwidth (``window_s`` means) and scheduled loads, chosen variant, and latency (the
    adaptive runtime's, fixed methods' and the per-round oracle's) over time (three stacked
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
    schedules = {name: info for name, info in (result.get("load") or {}).items() if info}
    if schedules:  # the slowdowns the load traces schedule, as steps on a second axis
        slowdown = bandwidth.twinx()
        offset, end = result["trace"]["segment_s"]
        for (name, info), style in zip(schedules.items(), ("tab:brown", "tab:olive")):
            rows = [[max(t, offset), s] for t, s in info["rows"] if t <= end]
            rows = [[offset, info["start_slowdown"]]] + [r for r in rows if r[0] > offset]
            steps = np.array(rows + [[end, rows[-1][1]]])
            slowdown.step(steps[:, 0] - offset, steps[:, 1], where="post", lw=1, color=style,
                          label=f"{name} slowdown")
        slowdown.set_ylabel("slowdown x")
        slowdown.legend(fontsize=7, loc="upper right")
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
    oracle = [row for row in result.get("oracle_log", []) if row[1] is not None]
    if oracle and medians.get("oracle") is not None:
        series = np.array([row[:2] for row in oracle], dtype=float)
        latency.plot(series[:, 0], series[:, 1], "-", lw=0.9, color="black",
                     label=f"oracle: best fixed method per round (median {medians['oracle']:.3g} ms)")
    latency.set_yscale("log")
    latency.set_ylabel("latency ms")
    latency.set_xlabel("seconds since the run started")
    latency.legend(fontsize=7)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
