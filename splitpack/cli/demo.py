"""``make demo`` / ``splitpack demo``: compile a camera-sized model, then run it live.

On the embedded default (``--data scenes``: 64x64 photo patches of scikit-learn's bundled
photographs and ``scenes_cnn``, :mod:`splitpack.models.scenes`; nothing is downloaded):

1. trains the reference model (cached in the output folder);
2. compiles it into ``<out>/bundle`` for a device :data:`DEVICE_SLOWDOWN` times slower than this
   host, at settings sized to run in a few minutes (:data:`CASES`);
3. starts the bundle's edge server as a real process on loopback and replays a short synthetic
   uplink schedule (:data:`SCHEDULE`: 20 -> 2 -> 0.3 -> 5 Mbit/s, made up to cross the regimes,
   not measured) through :func:`~splitpack.bench.runtime.run_runtime_benchmark`: the
   adaptive device runtime, every split variant fixed, ``local`` and ``edge`` (the input
   uploaded as the compile's JPEG/WebP choice) take turns round by round on the same schedule,
   and the per-round best fixed method is the oracle;
4. prints a table per method and per phase, writes ``session.png`` (bandwidth, chosen variant,
   latency over time), ``accuracy_vs_bytes.png`` (every bundled variant and trained cell against
   bytes per image, with the JPEG and WebP curves the edge upload was chosen from),
   ``latency_vs_bandwidth.png`` (the selector's model of each variant) and ``demo.json``.

``--data digits`` runs the same on the digits model (16x16 inputs: there every split loses).
Every file is written to a temporary name and renamed, so a failed run leaves the previous
results whole.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from splitpack.cli.common import format_table, print_inspect, require_plotting
from splitpack.errors import InvalidConfigError, InvalidDatasetError

__all__ = ["add_demo_command", "CASES", "DEVICE_SLOWDOWN", "SCHEDULE", "DemoCase", "run_demo", "phase_summary",
           "demo_summary", "DEMO_FORMAT"]

_LOG = logging.getLogger(__name__)
DEMO_FORMAT = "splitpack-demo/1"
DEVICE_SLOWDOWN = 30.0  # a board-class device: 30x slower than this host (stated in demo.json)
SCHEDULE = (20.0, 2.0, 0.3, 5.0)  # Mbit/s of each phase: synthetic, made up to cross the regimes
PHASE_S, QUICK_PHASE_S = 10.0, 1.5  # seconds of each phase
INTERVAL_S = 0.1  # a request every 100 ms (rounds start later when one takes longer)


@dataclass(frozen=True)
class DemoCase:
    """One demo data set: its model, how to train it, and the compile settings it runs at."""

    model: str
    train: str  # "module:function" writing the weights, returning the test accuracy
    epochs: int
    quick_epochs: int
    settings: dict = field(default_factory=dict)


CASES = {
    "scenes": DemoCase(
        model="splitpack.models:scenes_cnn", train="splitpack.models.scenes:train_scenes_reference",
        epochs=20, quick_epochs=1,
        settings={"train_limit": 2048, "bandwidth": "0.3:20", "budget": 6, "epochs": 2,
                  "final_epochs": 4, "variants": 3}),
    "digits": DemoCase(
        model="splitpack.models:digits_cnn", train="splitpack.models.digits:train_digits_reference",
        epochs=6, quick_epochs=2, settings={"bandwidth": "0.3:20", "budget": 6, "variants": 3}),
}
QUICK_SETTINGS = {"budget": 2, "epochs": 1, "final_epochs": 1, "variants": 2, "tflite": False,
                  "samples": 8, "max_accuracy_drop": 50.0, "train_limit": 256}


def add_demo_command(commands) -> None:
    """Add ``demo`` to the CLI's sub-parsers."""
    demo = commands.add_parser("demo", help="train the scenes model, compile it, run it live against an "
                                            "edge server on loopback, show the tables and plots")
    demo.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    demo.add_argument("--data", default="scenes", help="scenes (the default: 64x64 photo patches) or digits")
    demo.add_argument("--port", type=int, default=0, help="the edge server's loopback port (default: a free one)")
    demo.add_argument("--device-slowdown", type=float, default=30.0,
                      help="the device is F times slower than this host (default 30)")
    demo.add_argument("--quick", action="store_true", help="a smoke run: fewer cells and epochs, no TFLite, "
                                                          "a 6 s session")
    demo.set_defaults(handler=_cmd_demo)


def _cmd_demo(args) -> int:
    require_plotting("demo")  # its plots come last: refuse before the training, not after
    run_demo(Path(args.out), data=args.data, quick=args.quick, port=args.port,
             device_slowdown=args.device_slowdown)
    return 0


def _check_out(out: Path) -> None:
    """A folder the demo can write, or a typed error before anything is written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as error:
        raise InvalidConfigError(f"--out {str(out)!r}: cannot write there ({error.strerror or error}); "
                                 "pass a folder you can write, e.g. --out ./demo-out") from None


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    temporary = path.with_name(f".{path.name}.tmp{path.suffix}")
    write(temporary)
    temporary.replace(path)


def _schedule_file(path: Path, phase_s: float) -> list[dict]:
    phases, rows, start = [], ["seconds,mbps"], 0.0
    for mbps in SCHEDULE:
        phases.append({"mbps": mbps, "start_s": start, "end_s": start + phase_s})
        rows.append(f"{start:g},{mbps:g}")
        start += phase_s
    rows.append(f"{start:g},{SCHEDULE[0]:g}")  # the period's end (the trace repeats)
    _write_atomic(path, lambda p: p.write_text("\n".join(rows) + "\n"))
    return phases


def _train_reference(case: DemoCase, weights: Path, quick: bool) -> float | None:
    if weights.exists():
        _LOG.info("reference model: %s (cached; delete it to train again)", weights)
        return None
    import importlib

    module, _, function = case.train.partition(":")
    epochs = case.quick_epochs if quick else case.epochs
    _LOG.info("training the reference model %s, %d epochs -> %s", case.model, epochs, weights)
    accuracy = getattr(importlib.import_module(module), function)(weights.with_suffix(".tmp.pt"),
                                                                   epochs=epochs)
    weights.with_suffix(".tmp.pt").replace(weights)
    _LOG.info("    test accuracy (torch) %.2f%%", accuracy)
    return accuracy


def run_demo(out: Path, *, data: str = "scenes", quick: bool = False, port: int = 0,
             device_slowdown: float = DEVICE_SLOWDOWN) -> dict:
    """Train, compile and run the demo into ``out``; see the module docstring.

    Args:
        out: The output folder (created).
        data: A key of :data:`CASES`.
        quick: A smoke run: one epoch, two sampled cells, no TFLite, a 6 s schedule.
        port: The edge server's loopback port (0: a free one).
        device_slowdown: How many times slower than this host the device is.

    Returns:
        The summary written to ``out/demo.json`` (see :func:`demo_summary`).

    Raises:
        InvalidDatasetError: ``data`` is not a demo data set.
        InvalidConfigError: ``out`` cannot be written, or ``port`` is in use.
    """
    if data not in CASES:
        raise InvalidDatasetError(f"--data {data!r} is not a demo data set; allowed: "
                                  f"{', '.join(CASES)}; compile other data with splitpack compile")
    if not (isinstance(device_slowdown, (int, float)) and device_slowdown > 0):
        raise InvalidConfigError(f"--device-slowdown: found {device_slowdown!r}; expected > 0")
    from splitpack.serving.loopback import free_port

    free_port(port)  # a port in use fails here, not after the compile (0 always passes)
    out = Path(out)
    _check_out(out)
    from splitpack.compiler.pipeline import compile_bundle
    from splitpack.compiler.settings import CompileSettings
    from splitpack.bench.runtime import run_runtime_benchmark

    case, seconds = CASES[data], {}
    started = time.perf_counter()
    weights = out / f"{case.model.rpartition(':')[2]}{'-quick' if quick else ''}.pt"
    torch_accuracy = _train_reference(case, weights, quick)
    seconds["train"] = round(time.perf_counter() - started, 1)

    settings = CompileSettings(model=case.model, weights=str(weights), data=data,
                               device_slowdown=device_slowdown,
                               **{**case.settings, **(QUICK_SETTINGS if quick else {})})
    started = time.perf_counter()
    compiled = compile_bundle(settings, out / "bundle")  # its progress: the splitpack loggers
    seconds["compile"] = round(time.perf_counter() - started, 1)
    print_inspect(out / "bundle")

    phase_s = QUICK_PHASE_S if quick else PHASE_S
    phases = _schedule_file(out / "schedule.csv", phase_s)
    span_s = phase_s * len(SCHEDULE)
    interval = INTERVAL_S if not quick else 0.25
    _LOG.info("live session: edge server on loopback, device %gx slower than this host, uplink "
              "%s Mbit/s for %g s each (a synthetic schedule)", device_slowdown,
              " -> ".join(f"{mbps:g}" for mbps in SCHEDULE), phase_s)
    started = time.perf_counter()
    session = run_runtime_benchmark(out / "bundle", out / "schedule.csv",
                                    requests=int(round(span_s / interval)), interval_s=interval,
                                    device_slowdown=device_slowdown, port=port)
    seconds["session"] = round(time.perf_counter() - started, 1)
    _write_atomic(out / "session.json", lambda p: p.write_text(json.dumps(session, indent=1) + "\n"))

    from splitpack.bench.plots import plot_runtime

    _write_atomic(out / "session.png", lambda p: plot_runtime(session, p, window_s=0.5))
    work = Path(compiled["work"])
    _write_atomic(out / "accuracy_vs_bytes.png", lambda p: _plot_accuracy_bytes(work, out / "bundle", p))
    _write_atomic(out / "latency_vs_bandwidth.png", lambda p: _plot_latency(out / "bundle", p))
    summary = demo_summary(session, phases, data=data, model=case.model, quick=quick,
                           torch_accuracy=torch_accuracy, seconds=seconds)
    _write_atomic(out / "demo.json", lambda p: p.write_text(json.dumps(summary, indent=1) + "\n"))
    print(format_summary(summary))
    _LOG.info("wrote %s: demo.json, session.json, session.png, accuracy_vs_bytes.png, "
              "latency_vs_bandwidth.png, bundle/ (step seconds: %s)", out, seconds)
    return summary


# -- the figures ----------------------------------------------------------------------------------

def _phase_of(t_s: float, phases: list[dict]) -> int | None:
    period = phases[-1]["end_s"]
    t = t_s % period
    return next((i for i, p in enumerate(phases) if p["start_s"] <= t < p["end_s"]), None)


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def phase_summary(session: dict, phases: list[dict]) -> list[dict]:
    """Per phase of the schedule: each method's median latency, the best fixed method, and which
    variants the adaptive runtime answered with.

    Args:
        session: A ``bench runtime`` result (``log``, ``fixed_log``, ``oracle_log``, ``bundle``).
        phases: ``{mbps, start_s, end_s}`` per phase, on the session's clock (seconds since
            its rounds started; a schedule longer than the session repeats).

    Returns:
        Per phase: ``mbps``, ``rounds`` (adaptive requests answered in it),
        ``median_latency_ms`` (``adaptive``, ``oracle`` and every fixed method),
        ``best_fixed`` (the fixed method with the lowest median), ``adaptive_variants``
        (variant -> requests) and ``split_beats_local_and_edge`` (split variants whose median
        is below both ``local``'s and ``edge``'s).
    """
    kinds = {vid: info["kind"] for vid, info in session["bundle"]["variants"].items()}
    latencies = [{"adaptive": [], "oracle": [], **{vid: [] for vid in session["fixed_log"]}}
                 for _ in phases]
    used = [Counter() for _ in phases]
    for record in session["log"]:
        index = _phase_of(record["t_s"], phases)
        if index is not None and "latency_ms" in record:
            latencies[index]["adaptive"].append(record["latency_ms"])
            used[index][record["variant"]] += 1
    timed = [(vid, t, ms) for vid, records in session["fixed_log"].items() for t, ms in records]
    timed += [("oracle", t, ms) for t, ms, _ in session["oracle_log"]]
    for name, t, ms in timed:
        index = _phase_of(t, phases)
        if index is not None and ms is not None:
            latencies[index][name].append(ms)
    local = next(v for v, k in kinds.items() if k == "local")
    edge = next(v for v, k in kinds.items() if k == "edge")
    rows = []
    for phase, values, counts in zip(phases, latencies, used):
        medians = {name: _median(ms) for name, ms in values.items()}
        fixed = {vid: ms for vid, ms in medians.items() if vid in kinds and ms is not None}
        winners = [vid for vid, ms in fixed.items() if kinds[vid] == "split"
                   and None not in (medians[local], medians[edge])
                   and ms < medians[local] and ms < medians[edge]]
        rows.append({"mbps": phase["mbps"], "rounds": len(values["adaptive"]),
                     "median_latency_ms": medians,
                     "best_fixed": min(fixed, key=fixed.get) if fixed else None,
                     "adaptive_variants": dict(counts.most_common()),
                     "split_beats_local_and_edge": winners})
    return rows


def demo_summary(session: dict, phases: list[dict], **context) -> dict:
    """``demo.json``: the session's figures per method and per phase, and the demo's checks.

    Args:
        session: A ``bench runtime`` result.
        phases: As in :func:`phase_summary`.
        context: Recorded as given (data set, model, step seconds, ...).

    Returns:
        ``median_latency_ms``, ``p90_latency_ms`` and ``accuracy`` (each with ``adaptive``,
        ``oracle``, ``local``, ``edge`` and one key per split variant), ``payload_bytes``,
        ``variants_used`` (overall and per phase), ``phases`` (:func:`phase_summary`),
        ``checks`` and ``session`` (errors, lost requests, switches).
    """
    variants = session["bundle"]["variants"]
    runs = session["runs"]
    names = {v: v for v, info in variants.items() if info["kind"] == "split"}  # id -> demo.json key
    names.update({v: info["kind"] for v, info in variants.items() if info["kind"] in ("local", "edge")})

    def per_method(key: str) -> dict:
        return {"adaptive": runs["adaptive"][key], "oracle": session["oracle"][key],
                **{name: runs[v][key] for v, name in names.items()}}

    def mean_accuracy(counts: Counter | dict) -> float | None:  # over the requests answered
        total = sum(counts.values())
        return sum(variants[v]["accuracy"] * n for v, n in counts.items()) / total if total else None

    used = runs["adaptive"]["variants"]
    accuracy = {"adaptive": mean_accuracy(used),
                "oracle": mean_accuracy(Counter(m for _, _, m in session["oracle_log"] if m is not None)),
                **{name: variants[v]["accuracy"] for v, name in names.items()}}
    median = per_method("median_latency_ms")
    fixed = [median[name] for name in names.values() if median[name]]
    per_phase = phase_summary(session, phases)
    winning = [{"mbps": row["mbps"], "variants": sorted(set(row["split_beats_local_and_edge"])
                                                        & set(row["adaptive_variants"]))}
               for row in per_phase]  # used by the adaptive runtime in the phase it wins
    adaptive = median["adaptive"]
    checks = {
        "adaptive_to_best_fixed_median": adaptive / min(fixed) if fixed and adaptive else None,
        # the benchmark's own ratio, over the rounds its oracle counts
        "adaptive_to_oracle_median": session["adaptive_to_oracle"]["median"],
        "split_used_and_beats_local_and_edge": [w for w in winning if w["variants"]],
    }
    checks["adaptive_le_every_fixed_x1_02"] = (checks["adaptive_to_best_fixed_median"] or 9e9) <= 1.02
    checks["adaptive_le_oracle_x1_10"] = (checks["adaptive_to_oracle_median"] or 9e9) <= 1.10
    return {
        "format": DEMO_FORMAT, **context, "device_slowdown": session["device_slowdown"],
        "schedule": {"phases": phases, "note": "synthetic: made up to cross the regimes where "
                     "local, a split and the edge each win; not a measured trace"},
        "median_latency_ms": median, "p90_latency_ms": per_method("p90_latency_ms"),
        "mean_latency_ms": per_method("mean_latency_ms"), "accuracy": accuracy,
        "payload_bytes": {name: variants[v]["payload_bytes"] for v, name in names.items()},
        "variants_used": {"all": used, "phases": [{"mbps": row["mbps"], "variants": row["adaptive_variants"]}
                                                  for row in per_phase]},
        "phases": per_phase, "checks": checks,
        "session": {key: session[key] for key in ("requests", "errors", "lost", "skipped", "switches",
                                                  "switch_ms_p99", "rtt_ms")},
    }


def _number(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def format_summary(summary: dict) -> str:
    """The demo's two tables (per method; per phase) and its checks, as text."""

    median, p90 = summary["median_latency_ms"], summary["p90_latency_ms"]
    names = ["adaptive", "oracle", *[n for n in median if n not in ("adaptive", "oracle")]]
    rows = [[name, _number(median[name], 2), _number(p90[name], 2),
             _number(summary["accuracy"].get(name), 1),
             _number(summary["payload_bytes"].get(name), 0) if name in summary["payload_bytes"] else "-"]
            for name in names]
    lines = [f"live session: device {summary['device_slowdown']:g}x slower than this host, "
             f"{summary['session']['requests']} rounds, {summary['session']['errors']} errors, "
             f"{summary['session']['lost']} lost",
             format_table(["method", "median ms", "p90 ms", "accuracy %", "payload B"], rows), ""]
    phase_rows = []
    for row in summary["phases"]:
        used = ", ".join(f"{v} {n}" for v, n in row["adaptive_variants"].items())
        phase_rows.append([f"{row['mbps']:g}", _number(row["median_latency_ms"]["adaptive"], 2),
                           _number(row["median_latency_ms"]["oracle"], 2), row["best_fixed"] or "-",
                           _number(row["median_latency_ms"].get(row["best_fixed"]), 2), used])
    lines.append(format_table(["Mbit/s", "adaptive ms", "oracle ms", "best fixed", "its ms",
                               "adaptive answered with"], phase_rows))
    checks = summary["checks"]
    lines.append(f"adaptive median / best fixed median: {_number(checks['adaptive_to_best_fixed_median'], 3)}"
                 f"; / oracle median: {_number(checks['adaptive_to_oracle_median'], 3)}")
    wins = "; ".join(f"{w['mbps']:g} Mbit/s: {', '.join(w['variants'])}"
                     for w in checks["split_used_and_beats_local_and_edge"]) or "none"
    lines.append(f"split variants the runtime used in a phase where they beat both local and edge: {wins}")
    return "\n".join(lines)


def _plot_accuracy_bytes(work: Path, bundle_path: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from splitpack.formats.bundle import read_bundle

    manifest = read_bundle(bundle_path).manifest
    figure, axes = plt.subplots(figsize=(8, 5))
    cells = [json.loads(p.read_text()) for p in sorted((work / "cells").glob("*.json"))]
    if cells:
        axes.plot([c["payload_bytes"] for c in cells], [c["accuracy"] for c in cells], ".",
                  color="0.6", label="cells trained while sampling (bit-packed)")
    upload_file = work / "edge_upload.json"
    if upload_file.exists():
        upload = json.loads(upload_file.read_text())
        for name, style in (("jpeg", "-o"), ("webp", "-s")):
            points = [p for p in upload["curve"] if p["format"] == name]
            if points:
                axes.plot([p["payload_bytes"] for p in points], [p["accuracy"] for p in points],
                          style, ms=3, lw=1, label=f"{name.upper()} upload of the input, quality 5..95")
        lossless = upload["curve"][0]
        axes.plot(lossless["payload_bytes"], lossless["accuracy"], "k^",
                  label=f"{lossless['format']} upload (lossless)")
    for variant in manifest.variants:
        if variant.kind == "split":
            axes.plot(variant.payload_bytes, variant.accuracy, "*", ms=12,
                      label=f"{variant.id} (bundled, entropy-coded)")
    edge = next(v for v in manifest.variants if v.kind == "edge")
    axes.plot(edge.payload_bytes, edge.accuracy, "D", ms=8, color="tab:red",
              label=f"edge: the chosen upload ({edge.payload_bytes} B)")
    axes.axhline(manifest.baseline_accuracy, color="0.3", ls=":", lw=1,
                 label=f"baseline {manifest.baseline_accuracy:.1f}% (local sends nothing)")
    axes.set_xscale("log")
    axes.set_xlabel("bytes per image on the uplink (wire message, header included)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_ylim(max(0.0, manifest.baseline_accuracy - 30), min(100.0, manifest.baseline_accuracy + 5))
    axes.set_title(f"{manifest.model_id}: accuracy against bytes per image")
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110, format="png")
    plt.close(figure)


def _plot_latency(bundle_path: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from splitpack.formats.bundle import read_bundle
    from splitpack.planning.latency import Conditions, plan_latency_ms

    manifest = read_bundle(bundle_path).manifest
    slowdown = float(manifest.profiles.get("device_slowdown", 1.0))
    bandwidths = np.geomspace(0.1, 100, 60)
    figure, axes = plt.subplots(figsize=(8, 5))
    for variant in manifest.variants:
        profile = variant.profile()
        latencies = [plan_latency_ms(profile, Conditions(uplink_mbps=float(b), device_slowdown=slowdown))
                     for b in bandwidths]
        axes.plot(bandwidths, latencies, label=f"{variant.id} ({variant.accuracy:.1f}%)")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("uplink bandwidth (Mbit/s)")
    axes.set_ylabel("predicted end-to-end latency (ms), rtt 20 ms")
    axes.set_title(f"the selector's latency model per variant (device {slowdown:g}x slower than this host)")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110, format="png")
    plt.close(figure)
