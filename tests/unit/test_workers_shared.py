"""Workers share maxConnections and the round-robin turn (datapath/shared.py), and their
reports read as one (datapath/reports.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from reconciler.datapath import shared
from reconciler.datapath.balancer import Pool
from reconciler.datapath.reports import merge
from reconciler.steering.model import HealthCheck


def _views(tmp_path: Path, n: int) -> list[shared.Shared]:
    path = tmp_path / "shared"
    shared.create(path)
    return [shared.Shared(path, i, n) for i in range(n)]


def test_max_connections_hold_across_workers_and_a_dead_workers_share_is_freed(
        tmp_path: Path) -> None:
    a, b = _views(tmp_path, 2)
    assert a.admit(3, 3) and b.admit(3, 3) and b.admit(3, 3)
    assert not a.admit(3, 3) and not b.admit(3, 3)  # three in all, whoever holds them
    assert a.admit(4, 3)  # another Proxy counts apart
    a.release(3)
    assert b.admit(3, 3) and not a.admit(3, 3)
    assert a.total(3) == 3
    a.forget_worker(1)  # worker 1 died with its connections: its share is free again
    assert a.total(3) == 0 and a.admit(3, 3)
    b.release(3)  # a count never goes below zero
    assert b.total(3) == 1


def test_a_worker_killed_holding_the_lock_wedges_nobody(tmp_path: Path) -> None:
    a, _ = _views(tmp_path, 2)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(tmp_path / 'shared')!r}, os.O_RDWR)\n"
        f"fcntl.lockf(fd, fcntl.LOCK_EX, {shared.STRIDE}, {shared.STRIDE * 3})\n"
        "print('locked', flush=True); time.sleep(600)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    finally:
        holder.kill()
        holder.wait()
    assert a.admit(3, 1)  # the kernel dropped the dead holder's lock


def test_round_robin_is_exact_across_workers(tmp_path: Path) -> None:
    views = _views(tmp_path, 3)
    pools = [Pool(HealthCheck(enabled=False)) for _ in views]
    for p in pools:
        p.set_targets([("b", 80, f"192.0.2.{i}") for i in (1, 2, 3)], 0.0)
    picks = []
    for i in range(30):  # workers take turns in any order; the rotation is one
        view, pool = views[(i * 7) % 3], pools[(i * 7) % 3]
        with view.turn(1) as turn:
            target, turn[0] = pool.pick_at(turn[0])
        assert target is not None
        picks.append(target.address)
    assert {a: picks.count(a) for a in set(picks)} == dict.fromkeys(
        ("192.0.2.1", "192.0.2.2", "192.0.2.3"), 10)
    assert picks[:4] == ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.1"]


def test_a_lone_worker_shares_nothing() -> None:
    lone = shared.Shared(None)
    assert not lone.shared
    assert lone.admit(1, 1) and not lone.admit(1, 1)
    lone.release(1)
    assert lone.admit(1, 1)


def test_reports_are_summed_and_backends_healthy_only_where_every_worker_says_so() -> None:
    def report(worker: int, accepted: int, healthy: bool) -> dict:
        return {"pid": 100 + worker, "worker": worker, "generation": 0, "time": 10.0 + worker,
                "pingsSent": 5 if worker == 0 else 0, "pinging": [7] if worker == 0 else [],
                "descriptors": {"limit": 1024, "open": 10, "exhausted": 0, "episodes": 0,
                                "paused": worker == 1},
                "proxies": {"web": {"slot": 1, "active": 1, "accepted": accepted,
                                    "bytesIn": 100, "backends": [
                                        {"backend": "b:80", "address": "192.0.2.1",
                                         "healthy": healthy, "active": 1}], "draining": []}}}

    doc = merge([report(1, 3, False), report(0, 2, True)])
    web = doc["proxies"]["web"]
    assert (doc["pid"], doc["time"], doc["pingsSent"], doc["pinging"]) == (100, 10.0, 5, [7])
    assert (web["slot"], web["accepted"], web["active"], web["bytesIn"]) == (1, 5, 2, 200)
    assert web["backends"] == [{"backend": "b:80", "address": "192.0.2.1", "healthy": False,
                                "active": 2}]
    assert doc["descriptors"] == {"limit": 1024, "open": 20, "exhausted": 0, "episodes": 0,
                                  "paused": True}
    assert [w["pid"] for w in doc["workers"]] == [100, 101]


def test_a_batch_of_admissions_takes_the_lock_once_and_stays_within_the_limit(
        tmp_path: Path) -> None:
    """One wake-up's accepts share one lock (Cells): while it is held another process
    cannot take it; the total read on entry plus the batch's additions is what room()
    holds to; the turn advanced in the batch is every worker's on exit."""
    a, b = _views(tmp_path, 2)
    assert b.admit(5, 3)
    pool = Pool(HealthCheck(enabled=False))
    pool.set_targets([("b", 80, f"192.0.2.{i}") for i in (1, 2)], 0.0)
    probe = ("import fcntl, os, sys\n"
             f"fd = os.open({str(tmp_path / 'shared')!r}, os.O_RDWR)\n"
             "try:\n"
             f"    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, {shared.STRIDE}, "
             f"{shared.STRIDE * 5})\n"
             "except OSError:\n    print('held')\nelse:\n    print('free')\n")

    def lock_state() -> str:
        return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()

    with a.cells(5) as cells:
        assert lock_state() == "held"
        picks = []
        while cells.room(3):
            cells.add()
            target = cells.pick(pool)
            assert target is not None
            picks.append(target.address)
    assert lock_state() == "free"
    assert picks == ["192.0.2.1", "192.0.2.2"]  # b's one and a's two: three in all
    assert a.total(5) == 3 and not b.admit(5, 3)
    with b.turn(5) as turn:  # the rotation went on where a's batch left it
        assert pool.pick_at(turn[0])[0].address == "192.0.2.1"
    a.release(5)  # without the lock: a is the only writer of its own count
    assert b.total(5) == 2 and b.admit(5, 3)
