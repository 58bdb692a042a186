"""The cgroup transparent-proxy data path's kind: connect() of a cgroup's processes sent to a
Proxy."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from reconciler.core.model import Named, Origin, PortRange


@dataclass(frozen=True, slots=True)
class TrafficMatch:
    """TCP connections to any of destinations on any of ports."""

    destinations: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]  # IPv4 first
    ports: tuple[PortRange, ...]


@dataclass(frozen=True, slots=True)
class TransparentProxy(Named):
    """Interception by cgroup: connect() of the cgroup's processes sent to a Proxy."""

    name: str
    id: int
    cgroup: str  # cgroup v2 path as /proc/PID/cgroup shows it ("/" is every process)
    proxy: str  # name of the Proxy that receives the connections
    intercept: tuple[TrafficMatch, ...]
    exclude: tuple[TrafficMatch, ...] = ()
    exclude_cgroups: tuple[str, ...] = ()
    fail_open: bool = False  # whenProxyDown: direct
    origin: Origin | None = None
    refuse_ipv6: bool = False  # ipv6: refuse (native IPv6 connects no rule intercepts: EPERM)

    kind = "TransparentProxy"


