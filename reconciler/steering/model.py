"""The port-steering data path's kind: a Proxy (sk_lookup steering to a listener of the
data path, which proxies to backends)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.core.state import DesiredState

from reconciler.core.model import Named, Origin, PortRange, hostport  # noqa: F401 (re-exported)


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
    destinations: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]  # IPv4 first
    backends: tuple[str, ...]  # "host:port" or "[v6 address]:port" as written
    balance: str = "round-robin"
    health: HealthCheck = HealthCheck()
    connect_timeout_ms: int = 5000
    idle_timeout_ms: int = 300_000
    drain_timeout_ms: int | None = None
    max_connections: int = 10000
    resolve_ms: int = 30_000
    origin: Origin | None = None
    preconnect: int = 0  # idle connections per worker and healthy backend, opened ahead

    kind = "Proxy"


def split_backend(text: str) -> tuple[str, int]:
    """("host", port) of a backend written "host:port" or "[2001:db8::10]:port" (brackets
    gone); the schema has checked the form."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    return host, int(port)


def backend_address_problem(host: str) -> str | None:
    """Why a literal backend address cannot be connected to, or None (also for hostnames)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if ":" in host:
            return f"{host[:46]!r} is not an IPv6 address"
        return f"{host!r} is not an IPv4 address" if host.replace(".", "").isdigit() else None
    if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        return f"{ip} is not a unicast address"
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return f"{ip} is IPv4-mapped: write {ip.ipv4_mapped}"
    return None


def proxy_netns(state: DesiredState) -> str | None:
    """The namespace of the steering link (checks ensure all Proxies share one)."""
    proxies = state.of(Proxy)
    return next(iter(proxies.values())).netns if proxies else None
