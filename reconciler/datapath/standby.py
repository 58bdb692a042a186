"""Standby workers: a worker after the first accepts new connections only while the
workers before it are busy and the host has a CPU to spare for it, or they are saturated.

Every worker that watches the listeners is woken for new connections whenever the workers
before it are not waiting in epoll_wait (datapath/selector.py), however briefly they are
busy. Each such wake-up of a Python process costs tens of µs, and where the workers share
their CPUs with clients or backends the spread costs more than it gives: on the 2-CPU test
machine, two workers accepting opened 0.75 to 0.93 times HAProxy's connections per second,
one worker 1.02 to 1.22 times (bench/RESULTS.md). So a worker k > 0 stands by (watches no
listener) until the workers 0..k-1 use, on average, at least `join` of a CPU each and the
host had at least SPARE CPUs idle meanwhile (a CPU for k to run on: where there is none, one
more process only adds wake-ups to full CPUs), or they use SATURATED of a CPU each (they
are the bottleneck: connections wait in the queue; one more worker gets the proxy a larger
share of busy CPUs). It stands by again once the workers before it would carry its load
below LEAVE of `join` each, for LEAVE_AFTER checks in a row.

A worker whose load report is older than STALE (stopped, killed, hung in a long turn) counts
as fully busy: the next worker joins at its next check, so a stopped or dead worker holds
new connections back for STALE + CHECK_EVERY at most. Each worker reports its own load (its
CPU time per second) in the shared table every CHECK_EVERY (shared.Shared.report_load);
nobody reads another's /proc.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

CHECK_EVERY = 0.1  # seconds between a worker's load reports and decisions
STALE = 0.5  # seconds: an older report is a worker that is not serving
JOIN = 0.8  # default: CPU per second of each worker before, on average, to join
LEAVE = 0.75  # leave when the workers before would carry this one below this much of join
LEAVE_AFTER = 10  # checks in a row (one second)
SPARE = 0.5  # CPUs idle on the host, at least, to join for load
SATURATED = 0.95  # CPU per second of each worker before, on average: join, idle CPUs or not
ENV = "BPFSYNC_WORKER_JOIN"


def join_load(text: str | None) -> float:
    """BPFSYNC_WORKER_JOIN: the load (CPU seconds per second, 0 to 1) of the workers before
    it at which a standby worker joins; 0: every worker accepts at all times. ValueError
    (its message names the variable) for anything else."""
    if text is None or text == "":
        return JOIN
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{ENV}={text[:20]!r}: expected a load from 0 to 1 (0: every worker "
                         f"accepts at all times)")
    return value


def host_idle() -> tuple[float, float]:
    """(idle CPU seconds of the host so far, now): /proc/stat's idle and iowait."""
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[4]) + int(fields[5])) / ticks, time.monotonic()


@dataclass
class Standby:
    """Worker `index`'s decision: accept (watch the listeners) or stand by. join: JOIN, or 0
    (always accept). check() takes every worker's (load, reported at) and the host's idle
    time, and returns whether to accept."""

    index: int
    join: float = JOIN
    accepting: bool = field(init=False)
    _quiet: int = field(default=0, init=False)
    _idle: tuple[float, float] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.accepting = self.fixed

    @property
    def fixed(self) -> bool:
        """Accepts at all times: the first worker, or join 0 (nothing to check)."""
        return self.index == 0 or self.join <= 0

    def check(self, reports: list[tuple[float, float]], now: float,
              idle: tuple[float, float] | None) -> bool:
        if self.fixed:
            return True
        loads = [1.0 if now - at > STALE else load for load, at in reports[:self.index + 1]]
        before = loads[:self.index]
        stale = any(now - at > STALE for _, at in reports[:self.index])
        spare = self._spare(idle)
        if not self.accepting:
            mean = sum(before) / len(before)
            if stale or (mean >= self.join and (spare or mean >= SATURATED)):
                self.accepting, self._quiet = True, 0
            return self.accepting
        carried = sum(loads) / len(before)  # each worker before, with our load too
        self._quiet = 0 if stale or carried >= self.join * LEAVE else self._quiet + 1
        if self._quiet >= LEAVE_AFTER:
            self.accepting = False
        return self.accepting

    def _spare(self, idle: tuple[float, float] | None) -> bool:
        """The host had SPARE CPUs idle since the last check (unknown: yes)."""
        last, self._idle = self._idle, idle
        if idle is None or last is None or idle[1] <= last[1]:
            return idle is None
        return (idle[0] - last[0]) / (idle[1] - last[1]) >= SPARE
