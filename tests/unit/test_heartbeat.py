"""A long reconcile keeps systemd's watchdog (and, while starting, its start timeout) fed,
for a bounded time only."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from reconciler.daemon.heartbeat import Heartbeat
from reconciler.daemon.notify import Notifier


def _listen(tmp_path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "notify"))
    s.settimeout(10)
    return s


def test_pings_while_running_and_extends_the_start(tmp_path: Path) -> None:
    sock = _listen(tmp_path)
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "100000"})
    with Heartbeat(notifier, starting=True):
        first = sock.recv(100).decode()
        second = sock.recv(100).decode()
    assert "WATCHDOG=1" in first and "EXTEND_TIMEOUT_USEC=150000" in second
    sock.settimeout(0.3)
    try:  # stopped with the block: nothing more arrives (at most one already in flight)
        sock.recv(100)
        sock.recv(100)
        raise AssertionError("still pinging after the reconcile")
    except TimeoutError:
        pass


def test_a_hung_reconcile_stops_being_vouched_for(tmp_path: Path) -> None:
    sock = _listen(tmp_path)
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "100000"})
    beat = Heartbeat(notifier, starting=False, limit=0.3)
    with beat:
        sock.recv(100)
        deadline = time.monotonic() + 10
        while beat._thread is not None and beat._thread.is_alive():  # gave up by itself
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert 1 <= beat.sent <= 7


def test_outside_systemd_nothing_runs() -> None:
    with Heartbeat(Notifier({}), starting=True) as beat:
        assert beat._thread is None
