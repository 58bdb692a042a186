"""Benchmarks that hold timing targets the functional tests do not assert run here in their
smoke mode (one round), so that a refactor cannot break them unnoticed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.parametrize(("bench", "expect"), [
    ("bench_proxy.py", "bpfsync6 / haproxy6: single stream"),  # run with --ipv6
    ("bench_transparent.py", "intercepted6/direct6: setup p50"),  # run with --ipv6
    ("bench_apply.py", "| 200 | 2,048 |"),  # tables sized by --capacity
    ("bench_gue.py", "| IPv6 | tunnel (IPv6 underlay) / no program |"),  # run with --ipv6
    ("bench_intercept.py", "IPv6/IPv4 at 10k: last rule"),  # run with --ipv6
    ("bench_fleet.py", "(b) one changed service to applied"),
    ("bench_sockmap.py", "queued to a receiver that does not read, msg:"),
    ("bench_memory.py", "| no-op diff | **peak of the process** |"),
])
def test_every_benchmark_runs_in_its_smoke_mode(bench: str, expect: str) -> None:
    """Every benchmark, in one short round: a refactor that breaks one fails here. (HAProxy
    and iperf3 come from Debian's packages unpacked into .venv/bench-tools, nothing
    installed on the host: bench/tools.py.)"""
    # both families in one run
    extra = ["--ipv6"] if bench in ("bench_proxy.py", "bench_transparent.py",
                                    "bench_intercept.py", "bench_gue.py") else []
    r = subprocess.run([sys.executable, str(BENCH / bench), "--smoke", *extra],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert expect in r.stdout, r.stdout[-3000:]


def test_no_benchmark_is_left_out() -> None:
    """A new bench/bench_*.py gets its smoke run here, or this fails."""
    here = Path(__file__).read_text()
    missing = [p.name for p in sorted(BENCH.glob("bench_*.py")) if f'"{p.name}"' not in here]
    assert not missing, missing
