"""The README's commands, run in a smoke form: the Makefile targets it names, the quick demo,
and the bundle commands on what the demo wrote."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _splitpack(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "splitpack", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_readme_names_the_two_setup_commands_and_ci_runs_one():
    assert "make demo" in README and "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_targets_use_the_local_virtual_environment():
    plan = subprocess.run(["make", "-n", "-B", "install", "test", "demo"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout
    assert "python3 -m venv .venv" in plan
    assert re.search(r"pip install --quiet torch==2\.13\.0", plan)
    assert plan.index("torch==2.13.0") < plan.index("-e '.[")  # torch's CPU build first
    assert "-c constraints.txt" in plan
    assert ".venv/bin/python -m pytest" in plan
    assert ".venv/bin/splitpack demo" in plan


def test_every_command_the_readme_lists_exists():
    commands = set(re.findall(r"^\$ splitpack ([a-z-]+)", README, flags=re.M))
    assert {"cuts", "split", "compile", "inspect", "verify", "profile", "serve", "run", "bench", "export-triton"} <= commands
    for command in commands:
        assert _splitpack(command, "--help", cwd=ROOT).returncode == 0, command


@pytest.mark.slow
def test_quick_demo_then_inspect_and_verify(tmp_path):
    demo = _splitpack("demo", "--quick", "--out", str(tmp_path / "demo"), cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr[-3000:]
    output = demo.stdout + demo.stderr
    assert not re.search(r"warning|I0000|W0000", output, flags=re.I), output[-3000:]  # quiet output
    bundle = tmp_path / "demo" / "bundle"
    for name in ("session.png", "accuracy_vs_bytes.png", "latency_vs_bandwidth.png"):
        assert (tmp_path / "demo" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    splits = [v["id"] for v in json.loads((bundle / "manifest.json").read_text())["variants"] if v["kind"] == "split"]
    median = summary["median_latency_ms"]
    assert set(median) == {"adaptive", "oracle", "local", "edge", *splits} and len(splits) == 2
    assert all(ms > 0 for ms in median.values())
    assert median["oracle"] <= min(median[name] for name in ("local", "edge", *splits))  # per-round best
    assert summary["session"]["errors"] == summary["session"]["lost"] == 0
    assert sum(summary["variants_used"]["all"].values()) == sum(p["rounds"] for p in summary["phases"]) > 0
    assert [p["mbps"] for p in summary["phases"]] == [20.0, 2.0, 0.3, 5.0]
    assert "adaptive median / best fixed median" in demo.stdout
    inspect = _splitpack("inspect", str(bundle), "--json", cwd=tmp_path)
    assert inspect.returncode == 0, inspect.stderr
    variants = json.loads(inspect.stdout)["variants"]
    assert [v["kind"] for v in variants].count("split") == 2
    verify = _splitpack("verify", str(tmp_path / "demo" / "bundle.tar.gz"), cwd=tmp_path)
    assert verify.returncode == 0, verify.stderr
    assert "verified" in verify.stdout
    cuts = _splitpack("cuts", "splitpack.models:digits_cnn", "--input-shape", "1x1x16x16", "--json", cwd=tmp_path)
    assert cuts.returncode == 0 and len(json.loads(cuts.stdout)) >= 8


def test_the_python_examples_run_as_written(tmp_path):
    """The README's Python section, every ``python`` block in order, as one script run in an
    empty folder with the project's interpreter."""
    section = README.split("## Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) >= 2
    script = tmp_path / "readme_python.py"
    script.write_text("\n".join(blocks))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("[('local', ") and "('edge', " in lines[0]
    assert (tmp_path / "bars-bundle" / "manifest.json").is_file()
    assert lines[-1].split()[-1] == "2"  # two requests, the pinned one included
