"""The port-steering data path's kind: a Proxy (sk_lookup steering to a listener of the
data path, which proxies to backends)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.core.state import DesiredState

from reconciler.core.model import Named, Origin, PortRange


@dataclass(frozen=True, slots=True)
class HealthCheck:
    enabled: bool = True
    interval_ms: int = 2000
    timeout_ms: int = 1000
    rise: int = 2
    fall: int = 3


@dataclass(frozen=True, slots=True)
class Proxy(Named):
    """A port-steering TCP proxy: sk_lookup steering plus a listener of the data path."""

    name: str
    id: int  # listener slot in ps_sockets
    netns: str | None
    ports: tuple[PortRange, ...]
    destinations: tuple[ipaddress.IPv4Network, ...]
    backends: tuple[str, ...]  # "host:port" as written
    balance: str = "round-robin"
    health: HealthCheck = HealthCheck()
    connect_timeout_ms: int = 5000
    idle_timeout_ms: int = 300_000
    drain_timeout_ms: int | None = None
    max_connections: int = 10000
    resolve_ms: int = 30_000
    origin: Origin | None = None

    kind = "Proxy"




def proxy_netns(state: DesiredState) -> str | None:
    """The namespace of the steering link (checks ensure all Proxies share one)."""
    proxies = state.of(Proxy)
    return next(iter(proxies.values())).netns if proxies else None
