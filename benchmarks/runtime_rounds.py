"""Where the adaptive runtime's rounds went, against the best fixed method of a ``bench runtime`` run.

    python benchmarks/runtime_rounds.py benchmarks/results/cifar_runtime_*_x*.json

One row per JSON, read from its ``log`` (the adaptive runtime's requests) and ``fixed_log``
(every fixed method's latency in the same rounds): the fixed method of least median latency
over the run; the adaptive median and mean beside that method's; how many rounds the runtime
answered locally and, in those rounds, the best fixed method's median beside ``local``'s and
in how many of them it beat ``local`` (left out when ``local`` is that method); what the
runtime's local answers took beyond the fixed ``local`` method's in the same rounds (median);
and the uplink probes the runtime sent (count, bytes). With ``--by-variant``, under each row:
per variant the runtime answered with, its rounds, the runtime's median there and that
variant's fixed method's in the same rounds. Every figure is read from the files.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def summarize(path: Path) -> str:
    """The row of one runtime JSON, as text."""
    run = json.loads(path.read_text())
    fixed = {name: [latency for _, latency in values] for name, values in run["fixed_log"].items()}
    best = min(fixed, key=lambda name: statistics.median(fixed[name]))
    adaptive = [entry["latency_ms"] for entry in run["log"]]
    local_rounds = [entry["round"] for entry in run["log"] if entry["mode"] == "local"]
    beyond = [entry["latency_ms"] - fixed["local"][entry["round"]] for entry in run["log"]
              if entry["mode"] == "local"]
    row = (f"{path.stem:32s} {best:14s} {statistics.median(adaptive):7.2f} "
           f"{statistics.median(fixed[best]):7.2f} {statistics.mean(adaptive):7.2f} "
           f"{statistics.mean(fixed[best]):7.2f} {len(local_rounds):5d}")
    if best != "local" and local_rounds:
        there = [fixed[best][r] for r in local_rounds]
        beat = sum(fixed[best][r] < fixed["local"][r] for r in local_rounds)
        row += (f" {statistics.median(there):8.1f} {statistics.median(fixed['local'][r] for r in local_rounds):8.1f}"
                f" {beat:4d}")
    else:
        row += f" {'-':>8s} {'-':>8s} {'-':>4s}"
    row += f" {statistics.median(beyond):+6.2f}" if beyond else f" {'-':>6s}"
    probes = run["runs"]["adaptive"]
    return row + f" {probes.get('uplink_probes', 0):4d} {probes.get('uplink_probe_bytes', 0):7d}"


def by_variant(path: Path) -> list[str]:
    """Per variant the adaptive runtime answered with: rounds, its median, the fixed one's."""
    run = json.loads(path.read_text())
    rounds: dict[str, list[dict]] = {}
    for entry in run["log"]:
        rounds.setdefault(entry["variant"], []).append(entry)
    lines = []
    for variant, entries in sorted(rounds.items(), key=lambda item: -len(item[1])):
        fixed = statistics.median(run["fixed_log"][variant][e["round"]][1] for e in entries)
        lines.append(f"    {variant:14s} {len(entries):4d} rounds: adaptive "
                     f"{statistics.median(e['latency_ms'] for e in entries):7.2f}, fixed {fixed:7.2f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="bench runtime JSON files")
    parser.add_argument("--by-variant", action="store_true",
                        help="also each variant's rounds, under its run's row")
    args = parser.parse_args(argv)
    print(f"{'run':32s} {'best fixed':14s} {'med a':>7s} {'med b':>7s} {'mean a':>7s} {'mean b':>7s} "
          f"{'local':>5s} {'b there':>8s} {'l there':>8s} {'b<l':>4s} {'l-ov':>6s} {'prb':>4s} {'prb B':>7s}")
    for path in args.runs:
        print(summarize(Path(path)))
        if args.by_variant:
            print("\n".join(by_variant(Path(path))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
