"""The demo's figures from a hand-made session, and its bad input (the run itself is in
tests/test_readme.py)."""

from __future__ import annotations

import socket

import pytest

from splitpack.cli import main
from splitpack.cli.demo import demo_summary, phase_summary

PHASES = [{"mbps": 20.0, "start_s": 0.0, "end_s": 1.0}, {"mbps": 0.3, "start_s": 1.0, "end_s": 2.0}]


def _session() -> dict:
    # round i at t = 0.25 + 0.5 i: rounds 0, 1 in the fast phase, 2, 3 in the slow one, 4 wraps
    times = [0.25 + 0.5 * i for i in range(5)]
    fixed = {"cut03": [5, 6, 30, 31, 5], "local": [20, 20, 20, 20, 20], "edge": [8, 9, 60, 61, 8]}
    used = ["cut03", "cut03", "local", "local", "cut03"]
    latency = [5.5, 6.5, 21, 22, 5.5]
    oracle = [min((ms[i], name) for name, ms in fixed.items()) for i in range(5)]
    return {
        "device_slowdown": 30.0,
        "bundle": {"variants": {"local": {"kind": "local", "accuracy": 90.0, "payload_bytes": 0},
                                "edge": {"kind": "edge", "accuracy": 89.0, "payload_bytes": 500},
                                "cut03": {"kind": "split", "accuracy": 88.0, "payload_bytes": 300}}},
        "log": [{"t_s": t, "latency_ms": ms, "variant": v} for t, ms, v in zip(times, latency, used)],
        "fixed_log": {name: [[t + 0.01, ms] for t, ms in zip(times, values)] for name, values in fixed.items()},
        "oracle_log": [[t, ms, name] for t, (ms, name) in zip(times, oracle)],
        "runs": {"adaptive": {"median_latency_ms": 6.5, "p90_latency_ms": 21.6, "mean_latency_ms": 12.1,
                              "variants": {"cut03": 3, "local": 2}},
                 **{name: {"median_latency_ms": sorted(v)[2], "p90_latency_ms": max(v),
                           "mean_latency_ms": sum(v) / 5} for name, v in fixed.items()}},
        "oracle": {"median_latency_ms": 6.0, "p90_latency_ms": 20.0, "mean_latency_ms": 11.2},
        "adaptive_to_oracle": {"median": 6.5 / 6.0, "mean": 1.08, "p90": 1.08},
        **{key: 0 for key in ("errors", "lost", "skipped", "switches", "switch_ms_p99", "rtt_ms")},
        "requests": 5,
    }


def test_phase_summary_splits_rounds_by_the_schedule_and_names_the_winners():
    rows = phase_summary(_session(), PHASES)
    fast, slow = rows
    assert fast["rounds"] == 3 and slow["rounds"] == 2  # round 4 (t = 2.25) wraps into the first
    assert fast["adaptive_variants"] == {"cut03": 3} and slow["adaptive_variants"] == {"local": 2}
    assert fast["median_latency_ms"]["cut03"] == 5 and fast["median_latency_ms"]["edge"] == 8
    assert fast["best_fixed"] == "cut03" and slow["best_fixed"] == "local"
    assert fast["split_beats_local_and_edge"] == ["cut03"] and slow["split_beats_local_and_edge"] == []
    assert fast["median_latency_ms"]["oracle"] == 5 and slow["median_latency_ms"]["oracle"] == 20.0


def test_demo_summary_has_every_method_and_the_checks():
    summary = demo_summary(_session(), PHASES, data="hand-made")
    assert set(summary["median_latency_ms"]) == {"adaptive", "oracle", "local", "edge", "cut03"}
    assert summary["median_latency_ms"]["local"] == 20 and summary["median_latency_ms"]["edge"] == 9
    assert summary["accuracy"]["adaptive"] == pytest.approx((3 * 88 + 2 * 90) / 5)
    assert summary["variants_used"]["all"] == {"cut03": 3, "local": 2}
    checks = summary["checks"]
    assert checks["adaptive_to_best_fixed_median"] == pytest.approx(6.5 / 6)  # cut03's median is 6
    assert checks["adaptive_to_oracle_median"] == pytest.approx(6.5 / 6.0)
    assert not checks["adaptive_le_every_fixed_x1_02"] and checks["adaptive_le_oracle_x1_10"]
    assert checks["split_used_and_beats_local_and_edge"] == [{"mbps": 20.0, "variants": ["cut03"]}]
    assert summary["data"] == "hand-made"


def test_demo_bad_input_is_a_typed_error_and_writes_nothing(tmp_path, capsys):
    assert main(["demo", "--data", "cifar100", "--out", str(tmp_path / "a")]) == 2
    assert "--data 'cifar100' is not a demo data set; allowed: scenes, digits" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    assert main(["demo", "--out", str(blocker / "sub")]) == 2
    assert "cannot write there" in capsys.readouterr().err and blocker.read_text() == "keep"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["demo", "--port", str(port), "--out", str(tmp_path / "b")]) == 2
    assert f"port {port} on 127.0.0.1 is not free" in capsys.readouterr().err
    assert main(["demo", "--device-slowdown", "0", "--out", str(tmp_path / "c")]) == 2
    assert "--device-slowdown: found 0.0; expected > 0" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_accuracy_is_averaged_over_requests_even_when_variants_tie():
    session = _session()
    session["bundle"]["variants"]["cut03"]["accuracy"] = 90.0  # as local's
    session["bundle"]["variants"]["edge"]["accuracy"] = 80.0
    session["runs"]["adaptive"]["variants"] = {"cut03": 3, "local": 1, "edge": 1}
    summary = demo_summary(session, PHASES)
    assert summary["accuracy"]["adaptive"] == pytest.approx((4 * 90 + 80) / 5)


def test_without_matplotlib_the_demo_is_refused_before_any_work(tmp_path, monkeypatch, capsys) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "matplotlib" else real(name, *args))
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 2
    assert "pip install 'splitpack[bench]'" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
