"""Benchmarks that hold timing targets the functional tests do not assert run here in their
smoke mode (one round), so that a refactor cannot break them unnoticed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_proxy_reaction_benchmark_runs() -> None:
    r = subprocess.run([sys.executable, str(BENCH / "bench_proxy_reaction.py"), "--smoke"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "health: backend down" in r.stdout and "change: apply returned" in r.stdout


def test_hostile_error_path_benchmark_runs() -> None:
    r = subprocess.run([sys.executable, str(BENCH / "bench_hostile.py"), "--smoke"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "valid:" in r.stdout and "errors:" in r.stdout


def test_ping_verification_benchmark_runs() -> None:
    r = subprocess.run([sys.executable, str(BENCH / "bench_ping.py"), "--smoke"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "| ping (1 key) |" in r.stdout and "| forged (2 keys) |" in r.stdout


def test_versions_benchmark_runs() -> None:
    r = subprocess.run([sys.executable, str(BENCH / "bench_versions.py"), "--smoke"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "| 200 | (b) no-op diff |" in r.stdout


def test_daemon_benchmark_runs() -> None:
    r = subprocess.run([sys.executable, str(BENCH / "bench_daemon.py"), "--smoke"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "| 200 |" in r.stdout and "KiB |" in r.stdout
