"""Tabulate ``splitpack bench runtime`` results against issue 15's marks.

    python benchmarks/runtime_report.py benchmarks/results/cifar_runtime_*.json

One row per JSON: the trace, the device slowdown, the adaptive runtime's median and mean
latency over the oracle's (the best fixed method of each round: the JSON's own
``adaptive_to_oracle``, over the rounds the oracle counts), its median over the best fixed
method's, errors, lost requests and the p99 switch time; then whether each mark holds
(median ≤ 1.10 × oracle, mean ≤ 1.25 × oracle, median ≤ 1.02 × best fixed, errors = lost = 0,
switch p99 ≤ 1 ms). Every figure is read from the files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

_FIXED_EXCLUDED = ("adaptive", "oracle")  # best_static is the best split variant


def summarize(path: Path) -> dict:
    """The row of one runtime JSON."""
    run = json.loads(path.read_text())
    medians, to_oracle = run["median_latency_ms"], run["adaptive_to_oracle"]
    fixed = {name: value for name, value in medians.items()
             if name not in _FIXED_EXCLUDED and value is not None}
    row = {
        "file": path.name, "trace": Path(run["trace"]["path"]).name, "device_slowdown": run["device_slowdown"],
        # the benchmark's own ratios, over the rounds the oracle counts
        "median_over_oracle": to_oracle["median"], "mean_over_oracle": to_oracle["mean"],
        "median_over_best_fixed": medians["adaptive"] / min(fixed.values()),
        "best_fixed": min(fixed, key=fixed.get), "errors": run["errors"], "lost": run["lost"],
        "switch_ms_p99": run["switch_ms_p99"],
    }
    row["marks_met"] = (row["median_over_oracle"] <= 1.10 and row["mean_over_oracle"] <= 1.25
                        and row["median_over_best_fixed"] <= 1.02 and not row["errors"] and not row["lost"]
                        and (row["switch_ms_p99"] or 0.0) <= 1.0)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="runtime JSON files from `splitpack bench runtime`")
    args = parser.parse_args(argv)
    rows = [summarize(Path(path)) for path in args.runs]
    print(f"{'trace':>26} {'x':>5} {'med/oracle':>10} {'mean/oracle':>11} {'med/best':>8} "
          f"{'best fixed':>16} {'err':>3} {'lost':>4} {'met':>3}")
    for row in rows:
        print(f"{row['trace']:>26} {row['device_slowdown']:>5g} {row['median_over_oracle']:>10.3f} "
              f"{row['mean_over_oracle']:>11.3f} {row['median_over_best_fixed']:>8.3f} {row['best_fixed']:>16} "
              f"{row['errors']:>3} "
              f"{row['lost']:>4} {'yes' if row['marks_met'] else 'no':>3}")
    print(f"{sum(row['marks_met'] for row in rows)} of {len(rows)} runs meet every mark")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
