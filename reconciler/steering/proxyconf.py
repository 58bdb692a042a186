"""A Proxy's run-time configuration as the data path reads it from the ps_proxy table.

The control plane writes it (one entry per Proxy, keyed by its slot); `bpfsync datapath`
reads it every second, so backend changes reach running proxies without a restart and the
data path needs no file of its own. Canonical JSON (sorted keys, no spaces): the same Proxy
always encodes to the same bytes, so an unchanged Proxy costs no write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from reconciler.steering.model import HealthCheck, Proxy, split_backend

FORMAT = 1


def encode(proxy: Proxy, mark: int | None = None) -> bytes:
    """mark: SO_MARK of the proxy's own connections (only when an Intercept redirects to it,
    so that other Proxies' configurations keep their bytes)."""
    h = proxy.health
    doc: dict[str, Any] = {
        "v": FORMAT, "name": proxy.name, "backends": list(proxy.backends),
        "balance": proxy.balance,
        "health": {"enabled": h.enabled, "intervalMs": h.interval_ms, "timeoutMs": h.timeout_ms,
                   "rise": h.rise, "fall": h.fall},
        "connectTimeoutMs": proxy.connect_timeout_ms, "idleTimeoutMs": proxy.idle_timeout_ms,
        "drainTimeoutMs": proxy.drain_timeout_ms, "maxConnections": proxy.max_connections,
        "resolveMs": proxy.resolve_ms,
    }
    if mark is not None:
        doc["mark"] = mark
    if proxy.preconnect:  # (absent when 0: an entry written before it keeps its bytes)
        doc["preconnect"] = proxy.preconnect
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """What one proxy of the data path needs; decoded from ps_proxy."""

    slot: int
    name: str
    backends: tuple[tuple[str, int], ...]  # (host, port); an IPv6 host without brackets
    balance: str
    health: HealthCheck
    connect_timeout: float
    idle_timeout: float
    drain_timeout: float | None
    max_connections: int
    resolve_interval: float
    mark: int | None = None  # SO_MARK of connections to backends / original destinations
    preconnect: int = 0  # connections kept open ahead, per healthy backend (preconnect.py)


def decode(slot: int, raw: bytes) -> RuntimeConfig:
    d = json.loads(raw)
    if d.get("v") != FORMAT:
        raise ValueError(f"proxy configuration format {d.get('v')!r} is not {FORMAT}")
    backends = [split_backend(b) for b in d["backends"]]
    h = d["health"]
    drain = d.get("drainTimeoutMs")
    return RuntimeConfig(
        slot, d["name"], tuple(backends), d["balance"],
        HealthCheck(h["enabled"], h["intervalMs"], h["timeoutMs"], h["rise"], h["fall"]),
        d["connectTimeoutMs"] / 1000, d["idleTimeoutMs"] / 1000,
        None if drain is None else drain / 1000, d["maxConnections"], d["resolveMs"] / 1000,
        d.get("mark"), d.get("preconnect", 0))
