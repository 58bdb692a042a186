"""A proxy's counters, and its status as one worker reports it (the connections themselves:
session.Session)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reconciler.datapath.balancer import Pool
from reconciler.steering.model import hostport

if TYPE_CHECKING:
    from reconciler.datapath.session import Session


@dataclass
class Counters:
    accepted: int = 0
    accept_errors: int = 0  # failed accepts other than for want of descriptors
    fd_exhausted: int = 0  # accepts and dials that waited for a free file descriptor
    proxied: int = 0  # connected to a backend
    no_backend: int = 0  # closed at once: every backend down
    original: int = 0  # sent to their original destination (intercepted, no backends)
    no_original: int = 0  # closed at once: SO_ORIGINAL_DST had no answer
    connect_failed: int = 0
    idle_closed: int = 0
    drained: int = 0
    reset: int = 0  # ended by an error on either side
    bytes_in: int = 0  # client -> backend
    bytes_out: int = 0
    preconnect_used: int = 0  # connections that got a backend connection opened ahead
    preconnect_dropped: int = 0  # ones opened ahead that failed or were closed while waiting


def report(slot: int, c: Counters, conns: Iterable[Session], pool: Pool,
           preconnected: int = 0) -> dict[str, Any]:
    """A proxy's status in one worker (datapath/reports.py reads every worker's as one)."""
    return {
        "slot": slot, "active": len(conns), "accepted": c.accepted,
        "acceptErrors": c.accept_errors, "fdExhausted": c.fd_exhausted,
        "proxied": c.proxied, "noBackend": c.no_backend, "connectFailed": c.connect_failed,
        "originalDestination": c.original, "noOriginalDestination": c.no_original,
        "idleClosed": c.idle_closed, "drained": c.drained, "reset": c.reset,
        "bytesIn": c.bytes_in + sum(x.up.bytes for x in conns),
        "bytesOut": c.bytes_out + sum(x.down.bytes for x in conns),
        "preconnected": preconnected, "preconnectUsed": c.preconnect_used,
        "preconnectDropped": c.preconnect_dropped,
        "backends": [{"backend": hostport(t.host, t.port), "address": t.address,
                      "healthy": t.healthy, "active": t.active} for t in pool.targets],
        "draining": [{"backend": hostport(t.host, t.port), "address": t.address,
                      "active": t.active} for t in pool.draining if t.active],
    }
