"""An edge's request counters and their ``/metrics`` page (Prometheus text format 0.0.4).

:class:`EdgeMetrics` counts what :class:`~splitpack.serving.edge.EdgeServer` answered: requests
by variant and status, tail and request seconds (sum, count), and the recent tail times behind
the measured median of ``/metadata``. It counts under whatever label it is given; the edge
passes ``-`` for variant ids it does not serve, so that a client cannot grow the label set.
Imports the standard library only.
"""

from __future__ import annotations

import statistics
from collections import defaultdict, deque

__all__ = ["EdgeMetrics"]

_RECENT = 1000  # tail times kept per variant for the measured median


class EdgeMetrics:
    """Counters of one edge, per variant label."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.tail_seconds: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        self.request_seconds: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        self.recent_tail_ms: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=_RECENT))

    def record(self, label: str, status: int, seconds: float, tail_ms: float | None) -> None:
        """Count one answered request.

        Args:
            label: A served variant id, or ``-``.
            status: The HTTP status it was answered with.
            seconds: Time spent handling it.
            tail_ms: Tail compute time, or None when no tail ran.
        """
        self.requests[(label, status)] += 1
        self.request_seconds[label][0] += seconds
        self.request_seconds[label][1] += 1
        if tail_ms is not None:
            self.tail_seconds[label][0] += tail_ms / 1e3
            self.tail_seconds[label][1] += 1
            self.recent_tail_ms[label].append(tail_ms)

    def request_count(self, label: str) -> int:
        """Requests counted under ``label``, any status."""
        return sum(n for (v, _), n in self.requests.items() if v == label)

    def measured_tail_ms(self, label: str) -> float | None:
        """Median of the recent tail times under ``label``; None before the first."""
        recent = self.recent_tail_ms.get(label)
        return statistics.median(recent) if recent else None

    def prometheus_text(self, *, inflight: int, wire_bundle_id: str, provider: str) -> str:
        """The ``/metrics`` page in the Prometheus text exposition format (0.0.4).

        Args:
            inflight: Requests being handled now.
            wire_bundle_id, provider: The bundle the edge serves and where its tails run.

        Returns:
            The page, one sample a line, ending in a newline.
        """
        lines = ["# HELP splitpack_edge_requests_total Inference requests by variant and status.",
                 "# TYPE splitpack_edge_requests_total counter"]
        for (variant, status), count in sorted(self.requests.items()):
            lines.append(f'splitpack_edge_requests_total{{variant="{variant}",'
                         f'status="{status}"}} {count}')
        for name, table, what in (("tail", self.tail_seconds, "Tail compute"),
                                  ("request", self.request_seconds, "Request handling")):
            metric = f"splitpack_edge_{name}_seconds"
            lines += [f"# HELP {metric} {what} time per request.", f"# TYPE {metric} summary"]
            for variant, (total, count) in sorted(table.items()):
                lines += [f'{metric}_sum{{variant="{variant}"}} {total:.9g}',
                          f'{metric}_count{{variant="{variant}"}} {count}']
        lines += ["# HELP splitpack_edge_inflight Inference requests being handled now.",
                  "# TYPE splitpack_edge_inflight gauge", f"splitpack_edge_inflight {inflight}",
                  "# HELP splitpack_edge_info The bundle this edge serves.",
                  "# TYPE splitpack_edge_info gauge",
                  f'splitpack_edge_info{{wire_bundle_id="{wire_bundle_id}",'
                  f'provider="{provider}"}} 1']
        return "\n".join(lines) + "\n"
